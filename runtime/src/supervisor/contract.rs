//! The sidecars' process contracts, each written once: how a sidecar is started, how it
//! says where it listens, and how its health is asked. The supervisor reads nothing about
//! a sidecar from anywhere else, so following a new opencode (2.x moves health to
//! `/api/health`, say) is a change of this data and of its test.

use super::SidecarKind;

/// One piece of a sidecar's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// Literal text.
    Text(&'static str),
    /// The workspace directory.
    Workspace,
    /// `http://<addr>` of the running opencode.
    OpencodeUrl,
}

/// The value of one environment variable a sidecar gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvValue {
    /// Literal text.
    Text(&'static str),
    /// The user name of opencode's basic auth ([`super::OPENCODE_USERNAME`]).
    Username,
    /// opencode's password (fresh per opencode process; the router gets the current one).
    Password,
}

/// How a sidecar is run and asked whether it is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessContract {
    /// The arguments after the executable. Every port is 0: the sidecar binds what the
    /// kernel picks and announces it on the stdout pipe only the server holds (a port
    /// chosen here would be on a command line every user can read, and could be bound
    /// first by another user's process).
    pub args: &'static [Arg],
    /// Environment variables set for it.
    pub env: &'static [(&'static str, EnvValue)],
    /// What precedes `http://<loopback addr>` in the stdout line that announces where it
    /// listens.
    pub announcement: &'static str,
    /// The health route on the announced address.
    pub health_path: &'static str,
    /// Whether the health route is asked with opencode's credentials (the router's health
    /// server never gets them).
    pub health_with_credentials: bool,
    /// Whether a JSON body saying `"healthy": false` means unhealthy despite a 2xx.
    pub health_body_has_flag: bool,
}

/// `opencode serve`, as opencode 1.x runs it (checked on 1.2.27 and 1.18.32): basic auth
/// from `OPENCODE_SERVER_USERNAME`/`PASSWORD`, `opencode server listening on http://…` on
/// stdout, `GET /global/health` → `{"healthy":true,"version":…}` behind the password. With
/// `--port 0` opencode 1.18 tries 4096 first and takes a free port if that is taken; only
/// the announcement says which.
pub const OPENCODE: ProcessContract = ProcessContract {
    args: &[
        Arg::Text("serve"),
        Arg::Text("--hostname"),
        Arg::Text("127.0.0.1"),
        Arg::Text("--port"),
        Arg::Text("0"),
    ],
    env: &[
        ("OPENCODE_SERVER_USERNAME", EnvValue::Username),
        ("OPENCODE_SERVER_PASSWORD", EnvValue::Password),
    ],
    announcement: "listening on http://",
    health_path: "/global/health",
    health_with_credentials: true,
    health_body_has_flag: true,
};

/// `opencode-router serve <workspace> --opencode-url <url>`: opencode's credentials in its
/// environment for its calls to opencode, its own health server on
/// `OPENCODE_ROUTER_HEALTH_PORT`, announced as `… health on http://…/health`.
pub const ROUTER: ProcessContract = ProcessContract {
    args: &[
        Arg::Text("serve"),
        Arg::Workspace,
        Arg::Text("--opencode-url"),
        Arg::OpencodeUrl,
    ],
    env: &[
        ("OPENCODE_SERVER_USERNAME", EnvValue::Username),
        ("OPENCODE_SERVER_PASSWORD", EnvValue::Password),
        ("OPENCODE_ROUTER_HEALTH_PORT", EnvValue::Text("0")),
    ],
    announcement: "health on http://",
    health_path: "/health",
    health_with_credentials: false,
    health_body_has_flag: false,
};

impl SidecarKind {
    /// This sidecar's process contract.
    pub fn contract(self) -> &'static ProcessContract {
        match self {
            SidecarKind::Opencode => &OPENCODE,
            SidecarKind::Router => &ROUTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contracts as the supervisor relies on them: every port is 0 and none is passed
    /// on a command line; only opencode's health gets the password.
    #[test]
    fn every_port_is_zero_and_only_opencode_health_gets_the_password() {
        for kind in [SidecarKind::Opencode, SidecarKind::Router] {
            let contract = kind.contract();
            let texts: Vec<&str> = contract
                .args
                .iter()
                .filter_map(|a| match a {
                    Arg::Text(t) => Some(*t),
                    _ => None,
                })
                .collect();
            if let Some(i) = texts.iter().position(|t| *t == "--port") {
                assert_eq!(texts[i + 1], "0", "{kind:?}");
            }
            for (name, value) in contract.env {
                if name.ends_with("_PORT") {
                    assert_eq!(*value, EnvValue::Text("0"), "{kind:?} {name}");
                }
            }
            assert!(contract.health_path.starts_with('/'));
            assert!(contract.announcement.ends_with("http://"));
        }
        const { assert!(OPENCODE.health_with_credentials) };
        const { assert!(!ROUTER.health_with_credentials) };
    }
}
