//! Signing through an external command: signtool with a vendor's `/dlib`, jsign,
//! osslsigncode with a PKCS#11 engine, a cloud signer's CLI. The command is an argv
//! template, run without a shell; its environment is this process's, which is where
//! secrets (PINs, API tokens) come from, never from the template.
//!
//! Placeholders, replaced wherever they appear inside an argument:
//!
//! | placeholder | becomes |
//! |---|---|
//! | `{file}` | the absolute path of the file to sign (required) |
//! | `{out}` | a path that does not exist yet, in a fresh directory beside the file and with the file's name; the command writes the signed file there and it replaces `{file}` (for tools such as osslsigncode that cannot sign in place) |
//!
//! Without `{out}` the command signs `{file}` in place. Any other `{name}` in lowercase
//! letters is refused as a mistyped placeholder; `{{` and `}}` are literal braces, and other
//! braces (a shell's `${VAR}`) are kept as they are.
//!
//! When the command fails, its error shows the end of its output (the last
//! [`OUTPUT_LINES`] lines, at most [`OUTPUT_CHARS`] characters, where tools say what went
//! wrong), after a [`Redactor`] has removed every configured secret from it: signing tools
//! print PINs, passwords and tokens in their diagnostics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{ConfigError, Error, Result, SigningToolError};
use crate::secret::Redactor;

/// An external signing command.
#[derive(Debug, Clone)]
pub struct ExternalSigner {
    /// The argv template: program, then arguments with placeholders.
    pub command: Vec<String>,
    /// What its output is redacted of before it is shown.
    pub redactor: Redactor,
}

/// The most lines of each output stream an error shows: the end, where tools say what
/// failed. A short tail, not the whole stream: a tool's earlier chatter (configuration
/// dumps, verbose traces) is where credentials hide in forms no redactor knows.
pub const OUTPUT_LINES: usize = 12;
/// The most characters of each output stream an error shows.
pub const OUTPUT_CHARS: usize = 1200;

impl ExternalSigner {
    /// A command whose output is redacted of `redactor`'s secrets.
    pub fn new(command: Vec<String>, redactor: Redactor) -> Self {
        Self { command, redactor }
    }

    /// Signs `file` with the command: in place, or through `{out}` and a rename that keeps
    /// the file's permissions.
    pub fn sign_file(&self, file: &Path) -> Result<()> {
        let template = Template::parse(&self.command)?;
        fs_err::metadata(file)?;
        let file = std::path::absolute(file)?;
        let out_dir = if template.uses_out {
            let dir = file.parent().unwrap_or(Path::new("."));
            Some(
                tempfile::Builder::new()
                    .prefix(".openwork-signing-")
                    .tempdir_in(dir)
                    .map_err(|e| {
                        Error::Io(std::io::Error::new(
                            e.kind(),
                            format!("cannot make a directory beside {}: {e}", file.display()),
                        ))
                    })?,
            )
        } else {
            None
        };
        let out = out_dir
            .as_ref()
            .map(|dir| dir.path().join(file.file_name().unwrap_or_default()));
        let argv = template.render(&file, out.as_deref());
        let program = &argv[0];

        tracing::debug!(program, file = %file.display(), "running the signing command");
        let output = Command::new(program)
            .args(&argv[1..])
            .output()
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    ConfigError::CommandNotFound {
                        program: program.clone(),
                    }
                } else {
                    ConfigError::CommandStart {
                        program: program.clone(),
                        source,
                    }
                }
            })?;
        if !output.status.success() {
            return Err(SigningToolError::Failed {
                program: program.clone(),
                status: output.status,
                file: file.clone(),
                output: shown(&output, &self.redactor),
            }
            .into());
        }
        if let Some(out) = out {
            replace_with(&file, &out).map_err(|e| match e {
                Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    SigningToolError::NoOutput {
                        program: program.clone(),
                        output: shown(&output, &self.redactor),
                    }
                    .into()
                }
                other => other,
            })?;
        }
        Ok(())
    }
}

/// A checked template: every placeholder known, `{file}` present.
struct Template<'a> {
    args: Vec<Vec<Piece<'a>>>,
    uses_out: bool,
}

enum Piece<'a> {
    Text(&'a str),
    Brace(char),
    File,
    Out,
}

impl<'a> Template<'a> {
    fn parse(command: &'a [String]) -> Result<Self> {
        if command.first().is_none_or(|program| program.is_empty()) {
            return Err(ConfigError::EmptyCommand.into());
        }
        let mut args = Vec::with_capacity(command.len());
        for arg in command {
            args.push(parse_arg(arg)?);
        }
        let has = |wanted: fn(&Piece<'_>) -> bool| args.iter().flatten().any(wanted);
        if !has(|p| matches!(p, Piece::File)) {
            return Err(ConfigError::NoFilePlaceholder {
                command: command.to_vec(),
            }
            .into());
        }
        let uses_out = has(|p| matches!(p, Piece::Out));
        Ok(Template { args, uses_out })
    }

    fn render(&self, file: &Path, out: Option<&Path>) -> Vec<String> {
        self.args
            .iter()
            .map(|pieces| {
                let mut arg = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => arg.push_str(text),
                        Piece::Brace(c) => arg.push(*c),
                        Piece::File => arg.push_str(&file.to_string_lossy()),
                        Piece::Out => {
                            arg.push_str(&out.expect("{out} has a path").to_string_lossy())
                        }
                    }
                }
                arg
            })
            .collect()
    }
}

fn parse_arg(arg: &str) -> Result<Vec<Piece<'_>>> {
    let mut pieces = Vec::new();
    let mut rest = arg;
    while let Some(at) = rest.find(['{', '}']) {
        let tail = &rest[at..];
        let (piece, length) = if tail.starts_with("{{") {
            (Some(Piece::Brace('{')), 2)
        } else if tail.starts_with("}}") {
            (Some(Piece::Brace('}')), 2)
        } else if let Some(name) = placeholder_name(tail) {
            let piece = match name {
                "file" => Piece::File,
                "out" => Piece::Out,
                _ => {
                    return Err(ConfigError::UnknownPlaceholder {
                        arg: arg.to_owned(),
                        name: name.to_owned(),
                    }
                    .into());
                }
            };
            (Some(piece), name.len() + 2)
        } else {
            // Not a placeholder (e.g. a shell's ${VAR}): the brace is kept as it is.
            (None, 1)
        };
        let end = if piece.is_some() { at } else { at + length };
        if end > 0 {
            pieces.push(Piece::Text(&rest[..end]));
        }
        pieces.extend(piece);
        rest = &rest[at + length..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// `name` when `text` starts with `{name}` and the name is lowercase letters and `_`.
fn placeholder_name(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('{')?;
    let end = inner.find('}')?;
    let name = &inner[..end];
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(name)
}

/// Moves `signed` over `file`, keeping `file`'s permissions (a signed executable stays
/// executable). Same directory, so the rename is atomic.
fn replace_with(file: &Path, signed: &PathBuf) -> Result<()> {
    let permissions = fs_err::metadata(file)?.permissions();
    fs_err::set_permissions(signed, permissions)?;
    fs_err::rename(signed, file)?;
    Ok(())
}

fn shown(output: &Output, redactor: &Redactor) -> String {
    let mut text = String::new();
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let tail = tail(&redactor.redact(&String::from_utf8_lossy(bytes)));
        if !tail.is_empty() {
            text.push_str(&format!("\n--- the end of its {name} ---\n{tail}"));
        }
    }
    text
}

/// The last [`OUTPUT_LINES`] lines of `stream`, at most [`OUTPUT_CHARS`] characters, with
/// `…` where it was cut.
pub fn tail(stream: &str) -> String {
    let stream = stream.trim();
    let mut start = stream
        .rmatch_indices('\n')
        .nth(OUTPUT_LINES - 1)
        .map_or(0, |(at, _)| at + 1);
    if stream.len() - start > OUTPUT_CHARS {
        start = stream
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| stream.len() - i <= OUTPUT_CHARS)
            .unwrap_or(stream.len());
    }
    let cut = if start > 0 { "…" } else { "" };
    format!("{cut}{}", &stream[start..])
}
