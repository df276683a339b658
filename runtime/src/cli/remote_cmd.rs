//! `openwork-server-v2 tls rotate | show`, `pair`, `discover` and `join`.

use std::io::Read;
use std::time::Duration;

use openwork_runtime::layout::{self, DataLayout};
use openwork_runtime::remote::pairing::PairingUrl;
use openwork_runtime::remote::{ServerFile, client, mdns, pair_client, tls};
use openwork_runtime::{Error, ExitCode, Result, env_vars, trust};
use serde_json::{Value, json};

use super::runtime_cmd::print_out;
use super::{JoinArgs, Settings, TlsCommand};

pub fn tls(command: TlsCommand, settings: &Settings) -> Result<ExitCode> {
    let layout = DataLayout::resolve(settings.data_dir.clone())?;
    let rotating = matches!(command, TlsCommand::Rotate(_));
    trust::secure_data_dir(&layout, rotating)?;
    let (cert_file, _) = tls::data_dir_files(&layout.data_dir);
    match command {
        TlsCommand::Rotate(args) => rotate(&layout, &cert_file, args.forget, args.json),
        TlsCommand::Show(flag) => {
            let fingerprint = tls::data_dir_fingerprint(&layout.data_dir)?;
            if flag.json {
                let out = json!({ "certificate": cert_file, "fingerprint": fingerprint });
                print_out(&format!("{out}\n"));
            } else {
                match &fingerprint {
                    Some(fingerprint) => {
                        print_out(&format!("{}\nSHA-256 {fingerprint}\n", cert_file.display()))
                    }
                    None => print_out(
                        "no certificate yet: the first start with remote access makes one\n",
                    ),
                }
            }
            Ok(ExitCode::Ok)
        }
    }
}

fn rotate(
    layout: &DataLayout,
    cert_file: &std::path::Path,
    forget: bool,
    json_out: bool,
) -> Result<ExitCode> {
    // The names of what the running server of this data dir is bound to; with none running,
    // what a server on every address (`::`) would be reached at.
    let bind = ServerFile::read(&layout.data_dir)
        .ok()
        .and_then(|server| server.url.split_once("://").map(|(_, a)| a.to_string()))
        .and_then(|authority| {
            authority
                .trim_end_matches('/')
                .parse::<std::net::SocketAddr>()
                .ok()
        })
        .map_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), |a| {
            a.ip()
        });
    let followers = if forget {
        tls::Followers::Forget
    } else {
        tls::Followers::Announce
    };
    let replaced = tls::rotate(&layout.data_dir, &tls::certificate_names(bind), followers)?;
    if json_out {
        let out = json!({
            "certificate": cert_file,
            "fingerprint": replaced.fingerprint,
            "previous": replaced.previous,
            "announced": replaced.announced,
        });
        print_out(&format!("{out}\n"));
    } else {
        print_out(&format!(
            "{}\nSHA-256 {}\n",
            cert_file.display(),
            replaced.fingerprint
        ));
    }
    if replaced.previous.is_some() {
        if replaced.announced {
            tracing::info!(
                "a running server of this data dir presents the new certificate within a minute; paired devices follow the statement signed by the old key"
            );
        } else {
            tracing::info!(
                "a running server of this data dir presents the new certificate within a minute; no statement was written: every paired device must pair again"
            );
        }
    }
    Ok(ExitCode::Ok)
}

pub fn pair(json_out: bool, settings: &Settings) -> Result<ExitCode> {
    let layout = DataLayout::resolve(settings.data_dir.clone())?;
    trust::secure_data_dir(&layout, false)?;
    let server = ServerFile::read(&layout.data_dir)?;
    let host_token = host_token(&layout, settings.tokens.host.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime", e))?;
    let (status, body) = runtime.block_on(client::request(
        &server,
        http::Method::POST,
        "/system/pairing",
        &host_token,
    ))?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != http::StatusCode::CREATED {
        return Err(Error::BadInput(format!(
            "the server refused a pairing code ({status}: {}); is the host token the running server's?",
            answer["message"].as_str().unwrap_or("no message")
        )));
    }
    if json_out {
        print_out(&format!("{answer}\n"));
        return Ok(ExitCode::Ok);
    }
    let text = |key: &str| answer[key].as_str().unwrap_or_default().to_string();
    let url = text("url");
    let mut out = format!(
        "Pairing code:  {}   (single use, valid {} minutes)\nServer:        {}\n",
        text("code"),
        answer["expiresInSeconds"]
            .as_u64()
            .unwrap_or(0)
            .div_ceil(60),
        answer["addresses"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
    );
    if let Some(fingerprint) = answer["fingerprint"].as_str() {
        out.push_str(&format!("Certificate:   SHA-256 {fingerprint}\n"));
    }
    out.push_str(&format!("URL:           {url}\n\n{}\n", qr_text(&url)));
    print_out(&out);
    Ok(ExitCode::Ok)
}

pub fn discover(timeout: u64, json_out: bool) -> Result<ExitCode> {
    let found = mdns::discover(Duration::from_secs(timeout))
        .map_err(|e| Error::BadInput(format!("cannot listen for mDNS answers: {e}")))?;
    if json_out {
        print_out(&format!(
            "{}\n",
            serde_json::to_string(&found).unwrap_or_default()
        ));
        return Ok(ExitCode::Ok);
    }
    if found.is_empty() {
        print_out(&format!(
            "no openwork server answered within {timeout} s (servers advertise with --remote-access, unless --no-mdns)\n"
        ));
    }
    for server in found {
        let addresses: Vec<String> = server.addresses.iter().map(ToString::to_string).collect();
        print_out(&format!(
            "{}\n  {} port {}  version {}  {}\n",
            server.name,
            addresses.join(", "),
            server.port,
            server.version.as_deref().unwrap_or("?"),
            match &server.fingerprint_prefix {
                Some(prefix) if server.tls => format!("TLS, certificate SHA-256 {prefix}…"),
                _ => "plain HTTP".to_string(),
            }
        ));
    }
    Ok(ExitCode::Ok)
}

pub fn join(args: JoinArgs) -> Result<ExitCode> {
    // Destructured whole: a new flag nobody handles does not compile.
    let JoinArgs {
        target,
        code,
        name,
        fingerprint,
        json: json_out,
    } = args;
    let mut target: PairingUrl = target.parse().map_err(Error::Usage)?;
    if fingerprint.is_some() {
        target.fingerprint = fingerprint;
    }
    let code = match code.or_else(|| target.code.clone()) {
        Some(code) => code,
        None => read_code()?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime", e))?;
    let joined = runtime.block_on(pair_client::join(&target, &code, &name))?;
    if json_out {
        let out = json!({
            "address": joined.address,
            "deviceId": joined.device_id,
            "name": joined.name,
            "token": joined.token,
            "fingerprint": joined.fingerprint,
        });
        print_out(&format!("{out}\n"));
    } else {
        print_out(&format!(
            "Paired with:   {} as {:?} (device {})\nCertificate:   SHA-256 {} (proven by the code: pin it)\nToken:         {}\n\nSend it as `Authorization: Bearer <token>` to https://{}; it is shown only this once.\n",
            joined.address,
            joined.name,
            joined.device_id,
            joined.fingerprint,
            joined.token,
            joined.address,
        ));
    }
    Ok(ExitCode::Ok)
}

/// The code from standard input (a prompt on stderr when it is a terminal): off the command
/// line, where other users could read it.
fn read_code() -> Result<String> {
    let stdin = std::io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        eprint!("Pairing code: ");
    }
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .map_err(|e| Error::io("read the pairing code from standard input", e))?;
    let code = line.trim().to_string();
    if code.is_empty() {
        return Err(Error::Usage(
            "no pairing code: give the URL that `openwork-server-v2 pair` prints on the host, or --code, or type the code on standard input".into(),
        ));
    }
    Ok(code)
}

/// The host token: `OPENWORK_HOST_TOKEN`, else the data dir's `host-token` (never made
/// here: a server that generated none would not accept it).
fn host_token(layout: &DataLayout, given: Option<&str>) -> Result<String> {
    if let Some(value) = given {
        return Ok(value.trim().to_string());
    }
    let path = layout.data_dir.join(layout::HOST_TOKEN_FILE);
    let mut text = String::new();
    match trust::open_trusted(&path, "the token file")? {
        Some(mut file) => {
            file.read_to_string(&mut text)
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            Ok(text.trim().to_string())
        }
        None => Err(Error::BadInput(format!(
            "no host token: {} does not exist and {} is not set; run `pair` as the user who started the server, with its --data-dir",
            path.display(),
            env_vars::OPENWORK_HOST_TOKEN
        ))),
    }
}

/// The URL as a QR code of Unicode half blocks (two modules a character cell), with its
/// quiet zone, dark on light whatever the terminal's colours.
fn qr_text(url: &str) -> String {
    match qrcode::QrCode::new(url.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
        Err(e) => format!("(no QR code: {e})"),
    }
}
