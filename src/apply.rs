//! Apply: load the planned ruleset with one `ipset restore`, one `iptables-restore --noflush` and
//! one `ip6tables-restore --noflush`. Each call is atomic for what it loads; if any fails, egress
//! is locked down to loopback before the error is returned.
//!
//! The `iptables` crate is not used: it runs one process per rule and cannot batch, while the
//! restore tools load a whole table in one transaction.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;

use crate::cli::Backend;
use crate::error::{Error, Result};
use crate::netinfo::Ipv6;
use crate::plan::{self, Family, Ruleset};

const SEARCH_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
];

/// The firewall tools of the image, for one iptables variant.
#[derive(Debug, Clone)]
pub struct Tools {
    pub variant: &'static str,
    pub ipset: PathBuf,
    pub iptables_restore: PathBuf,
    pub ip6tables_restore: PathBuf,
}

impl Tools {
    pub fn locate(backend: Backend) -> Result<Tools> {
        let variant = match backend {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Auto => detect_variant()?,
        };
        let restore = |stem: &str| -> Result<PathBuf> {
            let name = format!("{stem}-{variant}-restore");
            find_tool(&name).ok_or(Error::MissingTool {
                tool: name,
                package: "iptables",
            })
        };
        Ok(Tools {
            variant,
            ipset: find_tool("ipset").ok_or(Error::MissingTool {
                tool: "ipset".into(),
                package: "ipset",
            })?,
            iptables_restore: restore("iptables")?,
            ip6tables_restore: restore("ip6tables")?,
        })
    }

    fn restore_tool(&self, family: Family) -> &Path {
        match family {
            Family::V4 => &self.iptables_restore,
            Family::V6 => &self.ip6tables_restore,
        }
    }
}

pub fn find_tool(name: &str) -> Option<PathBuf> {
    let from_env = std::env::var("PATH").unwrap_or_default();
    from_env
        .split(':')
        .filter(|dir| !dir.is_empty())
        .chain(SEARCH_PATH.iter().copied())
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// A command for one of the firewall tools, started by fork and exec: with a `pre_exec` hook std
/// does not use posix_spawn, whose musl version restores the caller's signal mask without the
/// reserved signals 32-34 (see `supervise::Signals`). The hook gives the tool an empty signal
/// mask (the fork path would leave it cordon's, everything blocked).
fn tool_command(tool: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(tool);
    // SAFETY: one system call on a stack value, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let none: u64 = 0;
            let rc = libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &none as *const u64,
                std::ptr::null_mut::<u64>(),
                std::mem::size_of::<u64>(),
            );
            Errno::result(rc).map(drop).map_err(std::io::Error::from)
        })
    };
    command
}

/// Which variant the image's `iptables` command is: read from where its symlinks lead
/// (…/xtables-nft-multi), else from `iptables --version`. Neither creates tables.
fn detect_variant() -> Result<&'static str> {
    let iptables = find_tool("iptables").ok_or(Error::MissingTool {
        tool: "iptables".into(),
        package: "iptables",
    })?;
    let target = std::fs::canonicalize(&iptables).unwrap_or(iptables.clone());
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    if name.contains("nft") {
        return Ok("nft");
    }
    if name.contains("legacy") {
        return Ok("legacy");
    }
    let version = tool_command(&iptables)
        .arg("--version")
        .output()
        .map_err(|e| Error::io(format!("running {} --version", iptables.display()), e))?;
    let text = String::from_utf8_lossy(&version.stdout);
    Ok(if text.contains("legacy") {
        "legacy"
    } else {
        "nft"
    })
}

/// Fails before anything changes when the kernel cannot take a firewall at all: ipset and
/// iptables-nft talk to it over netfilter netlink, which gVisor (runsc) does not implement.
pub fn netfilter_netlink() -> Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    match socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    ) {
        Err(errno @ (Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT | Errno::EPFNOSUPPORT)) => {
            Err(Error::CannotFence(format!(
                "this kernel has no netfilter netlink ({}), which ipset and iptables need: \
                 cordon cannot fence this container. gVisor (runsc) is such a kernel; run it \
                 with runc, or a VM-isolated runtime such as Kata Containers",
                errno.desc()
            )))
        }
        // Anything else (e.g. a socket limit) is left for the tools themselves to report.
        _ => Ok(()),
    }
}

/// iptables-legacy serialises on a lock file, /run/xtables.lock (or $XTABLES_LOCKFILE): where it
/// cannot be opened (`docker run --read-only` without `--tmpfs /run`) every load fails, the
/// lockdown's included, so this is checked before anything changes.
pub fn legacy_lock_writable() -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::env::var_os("XTABLES_LOCKFILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/xtables.lock"));
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map(drop)
        .map_err(|e| {
            Error::CannotFence(format!(
                "iptables-legacy cannot open its lock file {}: {e}; /run must be writable (with \
                 docker run --read-only add --tmpfs /run), or use the nft backend",
                path.display()
            ))
        })
}

/// Loads the rules: creates the sets they refer to (an existing set keeps its contents), then
/// both families' tables in parallel, each in one transaction. Nothing here depends on resolved
/// addresses, so this runs while names resolve. Where IPv6 is off, its table is still loaded, but
/// a failure there is only a warning: nothing can be sent over IPv6 in this namespace anyway.
pub fn load_rules(tools: &Tools, ruleset: &Ruleset, ipv6: Ipv6) -> Result<()> {
    run_restore(
        &tools.ipset,
        &["-exist", "restore"],
        &ruleset.ipset_create(),
    )
    .map_err(|detail| failed("ipset restore", detail))?;
    let loads: Vec<(Family, Result<Running, String>)> = families(ipv6.in_kernel())
        .iter()
        .map(|family| {
            let input = ruleset.iptables_restore(*family);
            let tool = tools.restore_tool(*family);
            (*family, Running::start(tool, &["--noflush"], &input))
        })
        .collect();
    let mut first_failure = None;
    for (family, load) in loads {
        if let Err(detail) = load.and_then(Running::finish) {
            let step = format!("{} --noflush", tools.restore_tool(family).display());
            if family == Family::V6 && ipv6 == Ipv6::Off {
                // Deny IPv6 anyway, in case it is switched on later.
                let denied = run_restore(
                    &tools.ip6tables_restore,
                    &["--noflush"],
                    &plan::lockdown_restore(Family::V6),
                );
                log::warn!(
                    "{step} failed ({detail}); IPv6 is off in this namespace (no IPv6 address), \
                     so nothing can leave over it{}",
                    match denied {
                        Ok(()) => "; IPv6 egress is denied meanwhile".to_string(),
                        Err(e) => format!(", but its table is left as it was ({e})"),
                    }
                );
                continue;
            }
            first_failure.get_or_insert(failed(&step, detail));
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// Fills every set under a staging name and swaps it in.
pub fn load_sets(tools: &Tools, ruleset: &Ruleset) -> Result<()> {
    run_restore(
        &tools.ipset,
        &["-exist", "restore"],
        &ruleset.ipset_restore(),
    )
    .map_err(|detail| failed("ipset restore", detail))
}

fn failed(step: &str, detail: String) -> Error {
    Error::Apply {
        step: step.to_string(),
        detail: explain(&detail),
    }
}

fn families(ipv6: bool) -> &'static [Family] {
    if ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    }
}

/// Leaves egress denied except loopback (and root's DNS). Returns whether that held for every
/// family. Every family is attempted, whatever happened to the ones before it.
pub fn lockdown(tools: &Tools, ipv6: bool) -> bool {
    let held: Vec<bool> = families(ipv6)
        .iter()
        .map(|family| {
            let tool = tools.restore_tool(*family);
            match run_restore(tool, &["--noflush"], &plan::lockdown_restore(*family)) {
                Ok(()) => true,
                Err(detail) => {
                    log::error!("lockdown with {} failed: {detail}", tool.display());
                    false
                }
            }
        })
        .collect();
    held.iter().all(|&held| held)
}

fn run_restore(tool: &Path, args: &[&str], input: &str) -> Result<(), String> {
    Running::start(tool, args, input)?.finish()
}

/// A restore tool that has been given its whole input and is working on it.
struct Running {
    tool: PathBuf,
    child: std::process::Child,
    written: std::io::Result<()>,
}

impl Running {
    fn start(tool: &Path, args: &[&str], input: &str) -> Result<Running, String> {
        let mut child = tool_command(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
        // Dropping stdin after writing closes it: the tool sees the end of its input.
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes());
        Ok(Running {
            tool: tool.to_path_buf(),
            child,
            written,
        })
    }

    fn finish(self) -> Result<(), String> {
        let tool = self.tool.display();
        let output = self
            .child
            .wait_with_output()
            .map_err(|e| format!("waiting for {tool}: {e}"))?;
        if output.status.success() {
            return self.written.map_err(|e| format!("writing to {tool}: {e}"));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first_lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        Err(match first_lines.is_empty() {
            true => format!("exited with {}", output.status),
            false => first_lines.join(" / "),
        })
    }
}

/// Adds the likely fix to what the tools print for missing privileges or kernel support.
fn explain(detail: &str) -> String {
    let lower = detail.to_ascii_lowercase();
    let hint = if lower.contains("xtables.lock") {
        " (iptables-legacy locks /run/xtables.lock: /run must be writable; with docker run \
         --read-only add --tmpfs /run)"
    } else if lower.contains("socket to ipset") {
        " (iptables' set match talks to ipset through a raw socket: run the container with \
         --cap-add NET_RAW)"
    } else if lower.contains("unable to initialize table") {
        " (iptables-legacy needs CAP_NET_ADMIN and CAP_NET_RAW: run the container with \
         --cap-add NET_ADMIN --cap-add NET_RAW)"
    } else if lower.contains("permission denied") || lower.contains("operation not permitted") {
        " (run the container with --cap-add NET_ADMIN --cap-add NET_RAW)"
    } else if lower.contains("kernel error")
        || lower.contains("cannot open session")
        || lower.contains("couldn't load")
        || lower.contains("not supported")
        || lower.contains("missing kernel module")
    {
        " (the kernel lacks ipset/xt_set or conntrack support: on the host, modprobe ip_set \
         ip_set_hash_netport ip_set_hash_net xt_set nf_conntrack, or try --iptables-backend legacy)"
    } else {
        ""
    };
    format!("{detail}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_errors_get_the_fix() {
        let lock = explain("Fatal: can't open lock file /run/xtables.lock: Read-only file system");
        assert!(lock.contains("--tmpfs /run"), "{lock}");
        let set = explain("iptables-nft-restore v1.8.9 (nf_tables): Can't open socket to ipset.");
        assert!(set.contains("--cap-add NET_RAW"), "{set}");
        let raw = explain("iptables-restore: unable to initialize table 'filter'");
        assert!(raw.contains("--cap-add NET_RAW"), "{raw}");
        let perm = explain("ipset v7.17: Kernel error received: Operation not permitted");
        assert!(perm.contains("--cap-add NET_ADMIN"), "{perm}");
        let module = explain("line 42 failed: Couldn't load match 'set'");
        assert!(module.contains("modprobe"), "{module}");
        assert_eq!(explain("something else"), "something else");
    }
}
