//! One error type for the whole pipeline. Every variant renders as a single line that says what
//! failed and, where there is one, how to fix it; `exit_code` maps it to the documented status.

use std::fmt;
use std::path::PathBuf;

use crate::capabilities;
use crate::fence::apply::Lockdown;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit statuses of cordon itself (the agent's own status is passed through unchanged).
pub mod exit {
    pub const OK: i32 = 0;
    /// `cordon check`: the sandbox does not hold.
    pub const CHECK_FAILED: i32 = 1;
    pub const USAGE: i32 = 64;
    /// A malformed allowlist entry, resolv.conf, passwd/group line or profile name.
    pub const BAD_INPUT: i32 = 65;
    /// A configuration file the agent's user could change.
    pub const UNSAFE_CONFIG: i32 = 66;
    /// Unknown user, or a user that resolves to root.
    pub const BAD_USER: i32 = 67;
    /// An internal or operating-system failure before the agent started.
    pub const INTERNAL: i32 = 70;
    /// A required binary or kernel feature is missing, or iptables-legacy's lock file cannot be
    /// written.
    pub const UNAVAILABLE: i32 = 69;
    /// Name resolution failed (`--strict`, or no resolver answered).
    pub const RESOLVE: i32 = 75;
    /// Loading the ruleset failed; the fence was left denying everything but loopback.
    pub const APPLY: i32 = 76;
    /// Not root, no CAP_NET_ADMIN, or the host's network namespace.
    pub const PERMISSION: i32 = 77;
    /// The self-test found a wrong verdict, or the loaded fence differed from the plan or changed
    /// before the agent started; the fence was left denying everything but loopback.
    pub const VERIFY: i32 = 78;
    /// The fence failed and so did every fallback (the deny-all through either iptables variant,
    /// setting the interfaces down): the network namespace may be open.
    pub const UNFENCED: i32 = 79;
    /// The command was found but could not be executed.
    pub const CANNOT_EXECUTE: i32 = 126;
    /// The command was not found.
    pub const NOT_FOUND: i32 = 127;
}

/// Where a piece of input came from, for `file:line:` prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub source: String,
    pub line: Option<usize>,
}

impl Location {
    pub fn new(source: impl Into<String>, line: Option<usize>) -> Self {
        Location {
            source: source.into(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}", self.source, line),
            None => write!(f, "{}", self.source),
        }
    }
}

#[derive(Debug)]
pub enum Error {
    Usage(String),
    /// Malformed input at a known place: an allowlist entry, a resolv.conf or passwd line.
    BadInput {
        at: Location,
        reason: String,
    },
    UnsafeConfig {
        path: PathBuf,
        why: String,
    },
    BadUser(String),
    NotRoot {
        action: &'static str,
    },
    /// Capabilities the start needs that the container does not grant.
    MissingCapabilities {
        missing: Vec<crate::capabilities::Need>,
    },
    HostNetwork {
        devices: Vec<String>,
    },
    /// The namespace has nothing but loopback (`--network none`).
    NoNetwork,
    /// Something the fence needs is missing before anything changed: a kernel feature (gVisor
    /// has no netfilter netlink), a writable lock file for iptables-legacy.
    CannotFence(String),
    MissingTool {
        tool: String,
        package: &'static str,
    },
    Resolve(String),
    /// A restore tool rejected its input.
    Apply {
        step: String,
        detail: String,
    },
    Verify {
        failures: Vec<String>,
    },
    /// The fence read back from the kernel is not what was loaded: it differs from the plan, or
    /// changed after the self-test.
    NotAsLoaded(String),
    /// SIGINT, SIGTERM, SIGHUP or SIGQUIT arrived while `cordon firewall` was setting up.
    Interrupted {
        signal: i32,
    },
    /// Building the fence failed after cordon could change the firewall; `state` says where
    /// egress was left.
    FailedClosed {
        cause: Box<Error>,
        state: Lockdown,
    },
    Io {
        context: String,
        source: std::io::Error,
    },
    Sys {
        context: String,
        errno: nix::Error,
    },
    Exec {
        command: String,
        errno: nix::Error,
    },
}

impl Error {
    pub fn bad_input(at: Location, reason: impl Into<String>) -> Self {
        Error::BadInput {
            at,
            reason: reason.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn sys(context: impl Into<String>, errno: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            errno,
        }
    }

    /// A failure of a tool or lookup that a stop signal ended during set-up.
    pub fn cut_short_by_stop(&self) -> bool {
        // A lookup cut short returns `Interrupted`; a tool's error reaches here inside `Apply`
        // (a load, or the read-back).
        match self {
            Error::Interrupted { .. } => true,
            Error::Apply { detail, .. } => detail.contains(crate::sys::tool::CUT_SHORT),
            _ => false,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::BadInput { .. } => exit::BAD_INPUT,
            Error::UnsafeConfig { .. } => exit::UNSAFE_CONFIG,
            Error::BadUser(_) => exit::BAD_USER,
            Error::NotRoot { .. }
            | Error::MissingCapabilities { .. }
            | Error::HostNetwork { .. }
            | Error::NoNetwork => exit::PERMISSION,
            Error::MissingTool { .. } | Error::CannotFence(_) => exit::UNAVAILABLE,
            Error::Resolve(_) => exit::RESOLVE,
            Error::Apply { .. } => exit::APPLY,
            Error::Verify { .. } | Error::NotAsLoaded(_) => exit::VERIFY,
            Error::Interrupted { signal } => 128 + signal,
            Error::FailedClosed {
                state: Lockdown::Open,
                ..
            } => exit::UNFENCED,
            Error::FailedClosed { cause, .. } => cause.exit_code(),
            Error::Io { .. } | Error::Sys { .. } => exit::INTERNAL,
            Error::Exec { errno, .. } => match errno {
                nix::Error::ENOENT => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::BadInput { at, reason } => write!(f, "{at}: {reason}"),
            Error::UnsafeConfig { path, why } => write!(
                f,
                "refusing {}: {why}; the agent could widen its own fence. Make it root-owned and \
                 not writable by others, or mount it read-only (docker run -v HOST_FILE:{}:ro)",
                path.display(),
                path.display()
            ),
            Error::BadUser(msg) => write!(f, "{msg}"),
            Error::NotRoot { action } => write!(
                f,
                "{action} needs root: run cordon as the container's ENTRYPOINT without USER, or \
                 with sudo"
            ),
            Error::MissingCapabilities { missing } => {
                let named: Vec<String> = missing
                    .iter()
                    .map(|need| {
                        format!("{} ({})", capabilities::short_name(need.cap), need.for_what)
                    })
                    .collect();
                let flags: Vec<String> = missing
                    .iter()
                    .map(|need| format!("--cap-add {}", capabilities::short_name(need.cap)))
                    .collect();
                write!(
                    f,
                    "missing capabilities: {}; run the container with {} (Kubernetes: add them \
                     to securityContext.capabilities.add)",
                    named.join(", "),
                    flags.join(" ")
                )
            }
            Error::NoNetwork => write!(
                f,
                "this container has no network but loopback (docker run --network none?): there \
                 is nothing to fence and the agent could reach nothing, not even its API; run it \
                 on a Docker network (the default bridge, or --network NAME)"
            ),
            Error::CannotFence(msg) => write!(f, "{msg}"),
            Error::HostNetwork { devices } => write!(
                f,
                "this looks like the host's network namespace (found {}); cordon would firewall \
                 the host. Run the container without --network host, or pass \
                 --allow-host-network if this is really what you want",
                devices.join(", ")
            ),
            Error::MissingTool { tool, package } => write!(
                f,
                "{tool} not found: install the {package} package in the image \
                 (apt-get install {package})"
            ),
            Error::Resolve(msg) => write!(f, "{msg}"),
            Error::Apply { step, detail } => write!(f, "{step} failed: {detail}"),
            Error::Verify { failures } => {
                write!(f, "fence self-test failed: {}", failures.join("; "))
            }
            Error::NotAsLoaded(msg) => write!(f, "{msg}"),
            Error::Interrupted { signal } => write!(
                f,
                "set-up interrupted by {}",
                nix::sys::signal::Signal::try_from(*signal).map_or("a signal", |s| s.as_str())
            ),
            Error::FailedClosed { cause, state } => {
                write!(f, "{cause}")?;
                match state {
                    Lockdown::Denied {
                        through,
                        fell_back: true,
                    } => write!(
                        f,
                        " [egress is now denied except loopback, through iptables-{}]",
                        through.join(" and iptables-")
                    ),
                    Lockdown::Denied { .. } => write!(f, " [egress is now denied except loopback]"),
                    Lockdown::LinksDown { links } => write!(
                        f,
                        " [no iptables could load the deny-all either: every interface but \
                         loopback ({}) was set down, nothing leaves this container; recreate it \
                         once the cause is fixed]",
                        links.join(", ")
                    ),
                    Lockdown::Open => write!(
                        f,
                        " [the deny-all fallback could not be loaded and the interfaces could not \
                         be set down: treat this network namespace as unfenced]"
                    ),
                }
            }
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Sys { context, errno } => write!(f, "{context}: {}", errno.desc()),
            Error::Exec { command, errno } => match errno {
                nix::Error::ENOENT => write!(f, "{command}: command not found"),
                _ => write!(f, "cannot execute {command}: {}", errno.desc()),
            },
        }
    }
}

impl std::error::Error for Error {}
