//! Apple notarization, behind the [`Notarizer`] trait.
//!
//! The notary service cannot be reached from tests, and apple-codesign's client has its URLs
//! built in, so nothing in between can be mocked. The trait has two implementations:
//! [`NotaryTool`], which runs Xcode's `xcrun notarytool` on macOS runners, and
//! [`FakeNotarizer`], which applies Apple's checks for a Developer ID submission (a
//! certificate signature, the hardened runtime, a secure timestamp) with our own verifier,
//! so that tests catch what Apple would reject.
//!
//! What is submitted ([`Submission::from_file`]): a bare Mach-O executable is zipped (the
//! service takes zip, dmg and pkg), and reported as not stapleable: a ticket can be stapled
//! to a dmg, a pkg or an app bundle, not to a bare executable (or a zip), so Gatekeeper
//! looks the ticket up online the first time the executable runs. A `.zip`, `.dmg` or
//! `.pkg` is submitted as it is.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde::Deserialize;
use x509_certificate::CapturedX509Certificate;
use zip::write::SimpleFileOptions;

use crate::error::{
    Error, NetworkError, Result, ServiceError, UnsupportedError, VerificationError,
};
use crate::macho::{MachOPolicy, verify_macho};
use crate::secret::{Redactor, Secret};
use crate::secret_file::SecretFile;
use zeroize::Zeroizing;

/// Submits files to a notary and waits for its verdict.
pub trait Notarizer {
    /// Submits `submission` and waits. `Ok` only when the notary accepted it; a rejection
    /// is an error carrying the notary's reasons.
    fn submit(&self, submission: &Submission) -> Result<NotarizationOutcome>;
}

/// What kind of file is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmissionKind {
    /// A bare Mach-O executable, zipped for submission.
    ZippedExecutable,
    /// A zip archive given as is.
    Zip,
    /// A disk image.
    Dmg,
    /// An installer package.
    Pkg,
}

/// A file ready to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The file given.
    pub original: PathBuf,
    /// The file uploaded: the original, or the zip made from it.
    pub upload: PathBuf,
    /// What the original is.
    pub kind: SubmissionKind,
    /// Whether a ticket can be stapled to the original once accepted.
    pub stapleable: bool,
}

impl Submission {
    /// Prepares `path` for submission. A bare Mach-O is zipped into `work_dir` as
    /// `<file name>.zip` (deterministically: fixed time stamp, the file's permissions);
    /// zip, dmg and pkg files (recognised by extension and checked by their magic bytes) are
    /// submitted as they are.
    pub fn from_file(path: &Path, work_dir: &Path) -> Result<Self> {
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            UnsupportedError::NoFileName {
                path: path.to_owned(),
            }
        })?;
        let mut head = [0u8; 4];
        let read = fs_err::File::open(path)?.read(&mut head)?;
        let head = &head[..read];
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let kind = if is_macho(head) {
            SubmissionKind::ZippedExecutable
        } else {
            match extension.as_deref() {
                Some("zip") if head == b"PK\x03\x04" => SubmissionKind::Zip,
                Some("pkg") if head == b"xar!" => SubmissionKind::Pkg,
                Some("dmg") if has_dmg_trailer(path)? => SubmissionKind::Dmg,
                _ => {
                    return Err(UnsupportedError::NotNotarizable {
                        path: path.to_owned(),
                    }
                    .into());
                }
            }
        };
        let upload = if kind == SubmissionKind::ZippedExecutable {
            let upload = work_dir.join(format!("{name}.zip"));
            fs_err::write(&upload, zip_executable(path)?)?;
            upload
        } else {
            path.to_path_buf()
        };
        Ok(Self {
            original: path.to_path_buf(),
            upload,
            kind,
            stapleable: matches!(kind, SubmissionKind::Dmg | SubmissionKind::Pkg),
        })
    }
}

/// What an accepted submission yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotarizationOutcome {
    /// The notary's submission ID (for `notarytool log` and Apple's records).
    pub id: String,
    /// Whether a ticket can be stapled to the file; when not, Gatekeeper checks online.
    pub stapleable: bool,
}

/// A deterministic zip holding the one file at `path`, under its file name, with its
/// permissions (the executable bit above all: a notarized executable that unzips without
/// it does not run).
pub fn zip_executable(path: &Path) -> Result<Vec<u8>> {
    let name =
        path.file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| UnsupportedError::NoFileName {
                path: path.to_owned(),
            })?;
    let data = fs_err::read(path)?;
    let mode = file_mode(path)?;
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(mode)
        .last_modified_time(zip::DateTime::default())
        .large_file(data.len() as u64 >= u64::from(u32::MAX));
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let zip_error = |e: zip::result::ZipError| {
        Error::Io(std::io::Error::other(format!(
            "zipping {}: {e}",
            path.display()
        )))
    };
    writer.start_file(name, options).map_err(zip_error)?;
    writer.write_all(&data)?;
    Ok(writer.finish().map_err(zip_error)?.into_inner())
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs_err::metadata(path)?.permissions().mode() & 0o777)
}

/// Where files carry no Unix mode, a Mach-O to notarize is an executable.
#[cfg(not(unix))]
fn file_mode(_path: &Path) -> Result<u32> {
    Ok(0o755)
}

fn is_macho(head: &[u8]) -> bool {
    matches!(
        head,
        [0xcf, 0xfa, 0xed, 0xfe] | [0xfe, 0xed, 0xfa, 0xcf] | [0xca, 0xfe, 0xba, 0xbe]
    )
}

/// A UDIF disk image ends with a 512-byte trailer starting with `koly`.
fn has_dmg_trailer(path: &Path) -> Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut file = fs_err::File::open(path)?;
    if file.metadata()?.len() < 512 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-512))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)?;
    Ok(&magic == b"koly")
}

/// An App Store Connect API key, as `notarytool` takes it. The private key stays in its
/// `.p8` file; only the path is handled here. Key and issuer IDs are not secret on their
/// own but identify the account, so they are kept out of logs too.
#[derive(Clone, PartialEq, Eq)]
pub struct AppStoreConnectKey {
    /// The key ID (10 characters, from App Store Connect).
    pub key_id: String,
    /// The issuer ID (a UUID).
    pub issuer_id: String,
    /// The `.p8` private key file.
    pub private_key_p8_path: PathBuf,
}

impl std::fmt::Debug for AppStoreConnectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppStoreConnectKey")
            .field("key_id", &"<redacted>")
            .field("issuer_id", &"<redacted>")
            .field("private_key_p8_path", &self.private_key_p8_path)
            .finish()
    }
}

/// An App Store Connect API key held in memory: the `[notarize]` section's secrets, read.
/// The Linux notarizer signs its tokens with it directly; for `notarytool`, which reads
/// the key only from a file, [`NotaryCredentials::write_key_file`] writes a
/// [`SecretFile`] that does not outlive the run.
pub struct NotaryCredentials {
    /// The key ID.
    pub key_id: Zeroizing<String>,
    /// The issuer ID (a UUID).
    pub issuer_id: Zeroizing<String>,
    /// The `.p8` file's contents (PEM, PKCS#8 EC P-256).
    pub private_key: Secret,
}

impl NotaryCredentials {
    /// Writes the private key as `AuthKey.p8` into a private directory under `temp_dir`,
    /// removed when the returned guard is dropped or the process gets SIGINT/SIGTERM.
    pub fn write_key_file(&self, temp_dir: &Path) -> Result<(SecretFile, AppStoreConnectKey)> {
        let file = SecretFile::write(temp_dir, "AuthKey.p8", self.private_key.bytes())?;
        let key = AppStoreConnectKey {
            key_id: self.key_id.to_string(),
            issuer_id: self.issuer_id.to_string(),
            private_key_p8_path: file.path().to_owned(),
        };
        Ok((file, key))
    }

    /// A redactor that knows these secrets.
    pub fn redactor(&self) -> Redactor {
        let mut redactor = Redactor::new([&self.private_key]);
        for id in [&self.key_id, &self.issuer_id] {
            redactor.add(&Secret::from_text(id));
        }
        redactor
    }
}

impl std::fmt::Debug for NotaryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotaryCredentials(<redacted>)")
    }
}

/// Notarizes with `xcrun notarytool` (Xcode 13 or later, macOS only).
#[derive(Debug, Clone)]
pub struct NotaryTool {
    key: AppStoreConnectKey,
    xcrun: PathBuf,
    redactor: Redactor,
}

impl NotaryTool {
    /// A notarizer authenticating with `key`, running `xcrun` from `PATH`.
    pub fn new(key: AppStoreConnectKey) -> Self {
        let mut redactor = Redactor::default();
        for id in [&key.key_id, &key.issuer_id] {
            redactor.add(&Secret::from_text(id));
        }
        Self {
            key,
            xcrun: PathBuf::from("xcrun"),
            redactor,
        }
    }

    /// Also removes `redactor`'s secrets from what notarytool prints before it is shown.
    pub fn redacting(mut self, redactor: Redactor) -> Self {
        self.redactor.extend(&redactor);
        self
    }

    /// notarytool's stderr as an error shows it: redacted, its end only.
    fn shown(&self, stderr: &[u8]) -> String {
        crate::external::tail(&self.redactor.redact(&String::from_utf8_lossy(stderr)))
    }

    /// The arguments of `xcrun` to submit `file` and wait for the verdict as JSON.
    pub fn submit_args(&self, file: &Path) -> Vec<std::ffi::OsString> {
        let mut args = vec![
            "notarytool".into(),
            "submit".into(),
            file.as_os_str().to_owned(),
        ];
        args.extend(self.auth_args());
        args.extend(["--wait".into(), "--output-format".into(), "json".into()]);
        args
    }

    /// The arguments of `xcrun` to fetch the log of submission `id` as JSON.
    pub fn log_args(&self, id: &str) -> Vec<std::ffi::OsString> {
        let mut args = vec!["notarytool".into(), "log".into(), id.into()];
        args.extend(self.auth_args());
        args
    }

    /// The command for logs and error messages, with the key and issuer IDs redacted.
    pub fn describe(args: &[std::ffi::OsString]) -> String {
        let mut shown = vec!["xcrun".to_string()];
        let mut redact_next = false;
        for arg in args {
            let arg = arg.to_string_lossy();
            shown.push(if redact_next {
                "<redacted>".to_string()
            } else {
                arg.to_string()
            });
            redact_next = arg == "--key-id" || arg == "--issuer";
        }
        shown.join(" ")
    }

    fn auth_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--key".into(),
            self.key.private_key_p8_path.as_os_str().to_owned(),
            "--key-id".into(),
            self.key.key_id.as_str().into(),
            "--issuer".into(),
            self.key.issuer_id.as_str().into(),
        ]
    }

    fn run(&self, args: &[std::ffi::OsString]) -> Result<Output> {
        Command::new(&self.xcrun)
            .args(args)
            .output()
            .map_err(|source| {
                UnsupportedError::NoNotarytool {
                    command: Self::describe(args),
                    source,
                }
                .into()
            })
    }

    fn issues(&self, id: &str) -> String {
        let args = self.log_args(id);
        match self.run(&args) {
            Ok(output) if output.status.success() => {
                format_log_issues(&String::from_utf8_lossy(&output.stdout))
            }
            Ok(output) => format!(
                "the log could not be fetched ({}): {}",
                output.status,
                self.shown(&output.stderr)
            ),
            Err(e) => format!("the log could not be fetched: {e}"),
        }
    }
}

impl Notarizer for NotaryTool {
    fn submit(&self, submission: &Submission) -> Result<NotarizationOutcome> {
        if !self.key.private_key_p8_path.is_file() {
            return Err(ServiceError::KeyFileMissing {
                path: self.key.private_key_p8_path.clone(),
            }
            .into());
        }
        let args = self.submit_args(&submission.upload);
        let output = self.run(&args)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let answer = parse_submit_output(&stdout).map_err(|why| NetworkError::Notarytool {
            command: Self::describe(&args),
            status: output.status,
            why,
            stderr: self.shown(&output.stderr),
        })?;
        match answer.status.as_str() {
            "Accepted" => Ok(NotarizationOutcome {
                id: answer.id,
                stapleable: submission.stapleable,
            }),
            status => Err(VerificationError::Notarization {
                path: submission.original.clone(),
                status: status.to_owned(),
                issues: self.issues(&answer.id),
                id: answer.id,
            }
            .into()),
        }
    }
}

/// What Apple checks first, checked here before an upload that takes minutes: a Mach-O
/// signed with a Developer ID Application certificate, the hardened runtime and a secure
/// time stamp, intact. Archives (.zip, .dmg, .pkg) are Apple's to open.
pub fn preflight(path: &Path) -> Result<()> {
    let data = fs_err::read(path)?;
    if openwork_payload::container::identify(&data).is_err() {
        return Ok(());
    }
    let policy = MachOPolicy {
        require_hardened_runtime: true,
        require_timestamp: true,
        require_developer_id: true,
        ..MachOPolicy::default()
    };
    verify_macho(&data, &policy)
        .map(|_| ())
        .map_err(|e| match e {
            Error::Verification(why) => VerificationError::WouldBeRejected {
                path: path.to_owned(),
                source: Box::new(why),
            }
            .into(),
            other => other,
        })
}

/// `notarytool submit --output-format json`'s answer.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct SubmitAnswer {
    /// The submission ID.
    pub id: String,
    /// `Accepted`, `Invalid`, `Rejected` or `In Progress` (after a timeout).
    pub status: String,
}

/// Reads `notarytool submit --wait --output-format json`'s output.
pub fn parse_submit_output(stdout: &str) -> std::result::Result<SubmitAnswer, String> {
    serde_json::from_str(stdout.trim()).map_err(|e| format!("unexpected notarytool output ({e})"))
}

/// The issues of a `notarytool log` JSON document, one per line as "path (arch): message".
pub fn format_log_issues(log: &str) -> String {
    #[derive(Deserialize)]
    struct Log {
        #[serde(default)]
        issues: Option<Vec<Issue>>,
        #[serde(rename = "statusSummary", default)]
        status_summary: Option<String>,
    }
    #[derive(Deserialize)]
    struct Issue {
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        architecture: Option<String>,
        message: String,
    }
    match serde_json::from_str::<Log>(log) {
        Ok(log) => {
            let issues: Vec<String> = log
                .issues
                .unwrap_or_default()
                .into_iter()
                .map(|issue| {
                    format!(
                        "{}{}: {}",
                        issue.path.unwrap_or_else(|| "(archive)".into()),
                        issue
                            .architecture
                            .map(|a| format!(" ({a})"))
                            .unwrap_or_default(),
                        issue.message
                    )
                })
                .collect();
            if issues.is_empty() {
                log.status_summary
                    .unwrap_or_else(|| "the notary gave no reasons".into())
            } else {
                issues.join("; ")
            }
        }
        Err(e) => format!("the notary log is not readable ({e})"),
    }
}

/// A notary for tests: checks every Mach-O in a submitted zip as Apple does for Developer
/// ID software and records what it was given.
pub struct FakeNotarizer {
    roots: Vec<CapturedX509Certificate>,
    tsa_roots: Vec<CapturedX509Certificate>,
    reject_all: Option<String>,
    submissions: Mutex<Vec<Submission>>,
}

impl FakeNotarizer {
    /// A notary trusting signatures chaining to `roots` (Apple's Developer ID CA, for the
    /// real one) and timestamps chaining to `tsa_roots` (Apple's TSA).
    pub fn new(
        roots: Vec<CapturedX509Certificate>,
        tsa_roots: Vec<CapturedX509Certificate>,
    ) -> Self {
        Self {
            roots,
            tsa_roots,
            reject_all: None,
            submissions: Mutex::new(Vec::new()),
        }
    }

    /// Rejects every submission with `reason`, as the service does for an account problem.
    pub fn rejecting_all(mut self, reason: &str) -> Self {
        self.reject_all = Some(reason.to_string());
        self
    }

    /// What was submitted, in order.
    pub fn submissions(&self) -> Vec<Submission> {
        self.submissions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Apple's complaints about one Mach-O, in its words.
    fn issues_of(&self, data: &[u8]) -> Vec<&'static str> {
        let Ok(any) = verify_macho(data, &MachOPolicy::any_signature()) else {
            return vec![if crate::macho::check_macho_layout(data).is_ok()
                && !has_code_signature(data)
            {
                "The binary is not signed."
            } else {
                "The signature of the binary is invalid."
            }];
        };
        let mut issues = Vec::new();
        let chained = MachOPolicy {
            roots: Some(self.roots.clone()),
            ..MachOPolicy::default()
        };
        if any.signer.is_none() || verify_macho(data, &chained).is_err() {
            issues.push("The binary is not signed with a valid Developer ID certificate.");
        }
        if !any.hardened_runtime() {
            issues.push("The executable does not have the hardened runtime enabled.");
        }
        let time_stamped = MachOPolicy {
            tsa_roots: Some(self.tsa_roots.clone()),
            require_timestamp: true,
            ..MachOPolicy::any_signature()
        };
        if any.signer.is_some() && verify_macho(data, &time_stamped).is_err() {
            issues.push("The signature does not include a secure timestamp.");
        }
        issues
    }
}

fn has_code_signature(data: &[u8]) -> bool {
    apple_codesign::MachOBinary::parse(data)
        .ok()
        .is_some_and(|binary| matches!(binary.code_signature(), Ok(Some(_))))
}

impl Notarizer for FakeNotarizer {
    fn submit(&self, submission: &Submission) -> Result<NotarizationOutcome> {
        let number = {
            let mut submissions = self.submissions.lock().unwrap_or_else(|e| e.into_inner());
            submissions.push(submission.clone());
            submissions.len()
        };
        let id = format!("00000000-0000-4000-8000-{number:012}");
        let rejected = |issues: Vec<String>| {
            Err(VerificationError::Notarization {
                path: submission.original.clone(),
                status: "Invalid".into(),
                id: id.clone(),
                issues: issues.join("; "),
            }
            .into())
        };
        if let Some(reason) = &self.reject_all {
            return rejected(vec![reason.clone()]);
        }
        if !matches!(
            submission.kind,
            SubmissionKind::ZippedExecutable | SubmissionKind::Zip
        ) {
            return rejected(vec!["the fake notary inspects zip archives only".into()]);
        }
        let bytes = fs_err::read(&submission.upload)?;
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
            VerificationError::Unreadable {
                what: "the submission (as a zip)".into(),
                source: e.into(),
            }
        })?;
        let mut issues = Vec::new();
        let mut binaries = 0;
        for index in 0..archive.len() {
            let mut entry = archive
                .by_index(index)
                .map_err(|e| VerificationError::Unreadable {
                    what: format!("zip entry {index}"),
                    source: e.into(),
                })?;
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            if !is_macho(data.get(..4).unwrap_or_default()) {
                continue;
            }
            binaries += 1;
            let path = entry.name().to_string();
            issues.extend(
                self.issues_of(&data)
                    .into_iter()
                    .map(|m| format!("{path}: {m}")),
            );
        }
        if binaries == 0 {
            issues.push("the archive holds no Mach-O binary to notarize".into());
        }
        if issues.is_empty() {
            Ok(NotarizationOutcome {
                id,
                stapleable: submission.stapleable,
            })
        } else {
            rejected(issues)
        }
    }
}
