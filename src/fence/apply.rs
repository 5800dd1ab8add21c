//! Apply: load the planned ruleset with one `ipset restore`, one `iptables-restore --noflush` and
//! one `ip6tables-restore --noflush`. Each call is atomic for what it loads and bounded in time;
//! if any fails, egress is locked down before the error is returned, through a path that does not
//! fail the same way (see `lockdown`).
//!
//! The `iptables` crate is not used: it runs one process per rule and cannot batch, while the
//! restore tools load a whole table in one transaction.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::fence::netinfo::Ipv6;
use crate::fence::plan::{self, Family, NatHook, Ruleset};
use crate::sys::nftables;
use crate::sys::set_netlink;
use crate::sys::signals;
use crate::sys::tool::{self, Tool};

/// Which iptables variant to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The variant the image's `iptables` command points to.
    #[default]
    Auto,
    Nft,
    Legacy,
}

impl Backend {
    /// The variant asked for, if one was.
    pub fn variant(self) -> Option<&'static str> {
        match self {
            Backend::Nft => Some("nft"),
            Backend::Legacy => Some("legacy"),
            Backend::Auto => None,
        }
    }
}

/// The lockdown's input is a few lines: its tools get less time, so that a hung tool delays the
/// fallback only briefly.
const LOCKDOWN_BOUND: Duration = Duration::from_secs(3);
/// How long the restore tools wait for iptables-legacy's lock (`-w`) before giving up with their
/// own message; the nft variant accepts and ignores it. The deny-all waits less: if the lock is
/// held, the other variant loads it.
const LOCK_WAIT_SECONDS: &str = "5";
const LOCKDOWN_LOCK_WAIT_SECONDS: &str = "1";

/// The firewall tools of the image, for one iptables variant.
#[derive(Debug, Clone)]
pub struct Tools {
    pub variant: &'static str,
    pub ipset: Tool,
    pub iptables_restore: Tool,
    pub ip6tables_restore: Tool,
    pub iptables_save: Tool,
    pub ip6tables_save: Tool,
}

impl Tools {
    pub fn locate(backend: Backend) -> Result<Tools> {
        let variant = match backend.variant() {
            Some(variant) => variant,
            None => detect_variant()?,
        };
        let tool = |stem: &str, action: &str| -> Result<Tool> {
            let name = format!("{stem}-{variant}-{action}");
            Tool::find(&name).ok_or(Error::MissingTool {
                tool: name,
                package: "iptables",
            })
        };
        Ok(Tools {
            variant,
            ipset: Tool::find("ipset").ok_or(Error::MissingTool {
                tool: "ipset".into(),
                package: "ipset",
            })?,
            iptables_restore: tool(Family::V4.iptables(), "restore")?,
            ip6tables_restore: tool(Family::V6.iptables(), "restore")?,
            iptables_save: tool(Family::V4.iptables(), "save")?,
            ip6tables_save: tool(Family::V6.iptables(), "save")?,
        })
    }

    fn restore_tool(&self, family: Family) -> &Tool {
        match family {
            Family::V4 => &self.iptables_restore,
            Family::V6 => &self.ip6tables_restore,
        }
    }

    pub fn save_tool(&self, family: Family) -> &Tool {
        match family {
            Family::V4 => &self.iptables_save,
            Family::V6 => &self.ip6tables_save,
        }
    }
}

/// The restore tool of one family and iptables variant, e.g. `ip6tables-legacy-restore`.
fn restore_tool_name(family: Family, variant: &str) -> String {
    format!("{}-{variant}-restore", family.iptables())
}

/// Which variant the image's `iptables` command is: read from where its symlinks lead
/// (…/xtables-nft-multi), else from `iptables --version`. Neither creates tables.
fn detect_variant() -> Result<&'static str> {
    let iptables = Tool::find("iptables").ok_or(Error::MissingTool {
        tool: "iptables".into(),
        package: "iptables",
    })?;
    let target = iptables.resolved();
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    if name.contains("nft") {
        return Ok("nft");
    }
    if name.contains("legacy") {
        return Ok("legacy");
    }
    let version = iptables
        .run(&["--version"], "", tool::BOUND)
        .map_err(|detail| {
            Error::CannotFence(format!(
                "cannot tell which iptables variant {iptables} is ({detail}): pass \
                 --iptables-backend nft or legacy"
            ))
        })?;
    Ok(if version.contains("legacy") {
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

/// iptables-legacy serialises on a lock file, /run/xtables.lock (the tools run without
/// $XTABLES_LOCKFILE): where it cannot be opened (`docker run --read-only` without `--tmpfs
/// /run`) every legacy load fails, so this is checked before anything changes.
pub fn legacy_lock_writable() -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = Path::new("/run/xtables.lock");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(drop)
        .map_err(|e| {
            Error::CannotFence(format!(
                "iptables-legacy cannot open its lock file {}: {e}; /run must be writable (with \
                 docker run --read-only add --tmpfs /run), or use the nft backend",
                path.display()
            ))
        })
}

/// Where cordon's chain stands in each family's nat OUTPUT chain, with the gateway: that decides
/// how the load hooks it in. Read with the save tool, unless nftables says at once that there is
/// no `CORDON_DNS` chain (a fresh container: nothing of cordon's can be hooked).
pub struct NatReads(Vec<NatRead>);

enum NatRead {
    Known(NatHook),
    Reading(Result<tool::Running, String>),
}

impl NatReads {
    pub fn start(tools: &Tools, ipv6: Ipv6, gateway: bool) -> NatReads {
        let read = |family: Family| {
            let nft_family = match family {
                Family::V4 => nftables::IPV4,
                Family::V6 => nftables::IPV6,
            };
            if !gateway
                || (tools.variant == "nft"
                    && nftables::chain_exists(nft_family, "nat", plan::CHAIN_DNS) == Ok(false))
            {
                return NatRead::Known(NatHook::Misplaced { count: 0 });
            }
            NatRead::Reading(tools.save_tool(family).start(&["-t", "nat"], String::new()))
        };
        NatReads(
            families(ipv6.in_kernel())
                .iter()
                .map(|f| read(*f))
                .collect(),
        )
    }
}

/// What the first `ipset restore` does besides creating the sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sets {
    /// Their members come later (`load_sets`), once the names are resolved.
    Later,
    /// Their members are known now (nothing to resolve): filled and swapped in at once.
    FillNow,
}

/// Loads the rules: creates the sets they refer to (an existing set keeps its contents; with
/// `Sets::FillNow` they are filled too), then both families' tables in parallel, each in one
/// transaction. Nothing here depends on resolved addresses, so this runs while names resolve.
/// Where IPv6 is off, its table is still loaded, but a failure there is only a warning: nothing
/// can be sent over IPv6 in this namespace anyway.
pub fn load_rules(
    tools: &Tools,
    ruleset: &Ruleset,
    ipv6: Ipv6,
    nat_reads: NatReads,
    sets: Sets,
) -> Result<()> {
    let deadline = Instant::now() + tool::BOUND;
    let mut ipset_input = ruleset.ipset_create();
    if sets == Sets::FillNow {
        ipset_input += &ruleset.ipset_restore();
    }
    tools
        .ipset
        .run(&["-exist", "restore"], &ipset_input, tool::BOUND)
        .map_err(|detail| failed("ipset restore", detail))?;
    let hooks: Vec<NatHook> = nat_reads
        .0
        .into_iter()
        .map(|read| match read {
            NatRead::Known(hook) => hook,
            NatRead::Reading(reading) => match reading.and_then(|r| r.finish(deadline)) {
                Ok(saved) => NatHook::read(&saved),
                // Unreadable (no nat table for the family yet): the load adds the hook, or fails.
                Err(_) => NatHook::Misplaced { count: 0 },
            },
        })
        .collect();
    let loads: Vec<(Family, Result<tool::Running, String>)> = families(ipv6.in_kernel())
        .iter()
        .zip(hooks)
        .map(|(family, hook)| {
            let input = ruleset.iptables_restore(*family) + &ruleset.nat_restore(*family, hook);
            let tool = tools.restore_tool(*family);
            (*family, tool.start(&restore_args(), input))
        })
        .collect();
    let results: Vec<(Family, Result<(), Failed>)> = loads
        .into_iter()
        .map(|(family, load)| {
            let loaded = load.and_then(|running| running.finish(deadline).map(drop));
            let step = format!("{} --noflush", tools.restore_tool(family));
            (family, loaded.map_err(|detail| Failed { step, detail }))
        })
        .collect();
    let judged = judge_loads(results, ipv6);
    for Failed { step, detail } in &judged.tolerated {
        // Deny IPv6 anyway, in case it is switched on later.
        let denied = signals::to_the_end(|| lockdown(Some(tools.variant), &[Family::V6], false));
        log::warn!(
            "{step} failed ({detail}); IPv6 is off in this namespace (no IPv6 address), so \
             nothing can leave over it{}",
            match denied {
                Lockdown::Denied { .. } => "; IPv6 egress is denied meanwhile",
                _ => ", and its deny-all could not be loaded either",
            }
        );
    }
    judged.failure.map_or(Ok(()), Err)
}

/// A tool call that failed: which, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failed {
    step: String,
    detail: String,
}

/// What the families' loads add up to.
#[derive(Debug)]
struct Judged {
    /// The first failure that fails the fence.
    failure: Option<Error>,
    /// IPv6 failures that only warn: IPv6 is off in this namespace.
    tolerated: Vec<Failed>,
}

/// Every family must load, except IPv6 where it is off (no IPv6 address: nothing can leave over
/// it).
fn judge_loads(results: Vec<(Family, Result<(), Failed>)>, ipv6: Ipv6) -> Judged {
    let mut judged = Judged {
        failure: None,
        tolerated: Vec::new(),
    };
    for (family, result) in results {
        let Err(failure) = result else { continue };
        if family == Family::V6 && ipv6 == Ipv6::Off {
            judged.tolerated.push(failure);
        } else if judged.failure.is_none() {
            judged.failure = Some(failed(&failure.step, failure.detail));
        }
    }
    judged
}

/// Fills every set under a staging name and swaps it in.
pub fn load_sets(tools: &Tools, ruleset: &Ruleset) -> Result<()> {
    tools
        .ipset
        .run(
            &["-exist", "restore"],
            &ruleset.ipset_restore(),
            tool::BOUND,
        )
        .map(drop)
        .map_err(|detail| failed("ipset restore", detail))
}

fn restore_args() -> [&'static str; 3] {
    ["--noflush", "-w", LOCK_WAIT_SECONDS]
}

fn failed(step: &str, detail: String) -> Error {
    Error::Apply {
        step: step.to_string(),
        detail: explain(&detail),
    }
}

pub fn families(ipv6: bool) -> &'static [Family] {
    if ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    }
}

/// Where egress stands after the lockdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lockdown {
    /// Every family denies egress but loopback (and root's DNS); `through` names the iptables
    /// variants that loaded the deny-all, `fell_back` whether the chosen one failed somewhere.
    Denied {
        through: Vec<&'static str>,
        fell_back: bool,
    },
    /// No firewall tool could load the deny-all for some family: every network interface but
    /// loopback was set down instead.
    LinksDown { links: Vec<String> },
    /// Nothing held: egress may be open.
    Open,
}

const VARIANTS: [&str; 2] = ["nft", "legacy"];

/// Leaves egress denied except loopback (and root's DNS), through the first path that works, so
/// that whatever made the fence fail cannot make this fail too:
/// 1. the deny-all rules with the iptables variant in use (`preferred`), for every family;
/// 2. for a family where that failed (a hung lock, a broken or missing tool, a kernel that lacks
///    what the variant needs), the other variant: the kernel applies both variants' rules, and a
///    packet must pass both;
/// 3. where some family still is not denied (no firewall tool works at all), every interface but
///    loopback is set down, if `may_cut_links` (not in the host's namespace).
pub fn lockdown(
    preferred: Option<&'static str>,
    families: &[Family],
    may_cut_links: bool,
) -> Lockdown {
    lockdown_with(&mut System, preferred, families, may_cut_links)
}

/// The lockdown's steps, one call each: the seam its sequencing is tested through, as the drop's
/// `Syscalls` is. `System` makes the real calls.
pub trait Restore {
    /// Empties the resolvers' sets: a start that failed while names resolved left the
    /// resolvers there, where CORDON_INPUT accepts anything that claims to come from their port
    /// 53.
    fn empty_resolver_sets(&mut self) -> Result<(), String>;
    /// Loads the deny-all of `family` with `variant`'s restore tool (missing: an error).
    fn deny_all(&mut self, family: Family, variant: &'static str) -> Result<(), String>;
    /// Sets every interface but loopback down; returns their names.
    fn cut_links(&mut self) -> Result<Vec<String>, String>;
}

pub struct System;

impl Restore for System {
    fn empty_resolver_sets(&mut self) -> Result<(), String> {
        set_netlink::flush(&[Family::V4, Family::V6].map(Family::resolvers_set))
    }

    fn deny_all(&mut self, family: Family, variant: &'static str) -> Result<(), String> {
        let name = restore_tool_name(family, variant);
        let tool = Tool::find(&name).ok_or_else(|| format!("{name} is not installed"))?;
        let args = ["--noflush", "-w", LOCKDOWN_LOCK_WAIT_SECONDS];
        tool.run(&args, &plan::lockdown_restore(family), LOCKDOWN_BOUND)
            .map(drop)
            .map_err(|detail| format!("{tool}: {detail}"))
    }

    fn cut_links(&mut self) -> Result<Vec<String>, String> {
        cut_links()
    }
}

/// `lockdown` through `sys`. Every family is attempted, whatever happened to the others.
pub fn lockdown_with(
    sys: &mut impl Restore,
    preferred: Option<&'static str>,
    families: &[Family],
    may_cut_links: bool,
) -> Lockdown {
    if let Err(detail) = sys.empty_resolver_sets() {
        log::debug!("emptying the resolver sets failed: {detail}");
    }
    let mut order: Vec<&'static str> = preferred.into_iter().collect();
    order.extend(VARIANTS.iter().filter(|v| Some(**v) != preferred));
    let mut through = Vec::new();
    let mut all_denied = true;
    let mut fell_back = false;
    for family in families {
        let denied_by = order
            .iter()
            .find(|variant| match sys.deny_all(*family, variant) {
                Ok(()) => true,
                Err(detail) => {
                    log::debug!("lockdown of {} failed: {detail}", family.name());
                    false
                }
            });
        match denied_by {
            Some(variant) => {
                fell_back |= Some(*variant) != order.first().copied();
                if !through.contains(variant) {
                    through.push(*variant);
                }
            }
            None => all_denied = false,
        }
    }
    if all_denied {
        return Lockdown::Denied { through, fell_back };
    }
    if !may_cut_links {
        return Lockdown::Open;
    }
    match sys.cut_links() {
        Ok(links) => Lockdown::LinksDown { links },
        Err(detail) => {
            log::debug!("setting the interfaces down failed: {detail}");
            Lockdown::Open
        }
    }
}

/// Sets every network interface but loopback down: nothing but loopback traffic can leave, and
/// the addresses and routes the kernel removes with a link do not come back by themselves.
/// Needs only CAP_NET_ADMIN and a system call, no tool.
fn cut_links() -> Result<Vec<String>, String> {
    let entries =
        std::fs::read_dir("/sys/class/net").map_err(|e| format!("reading /sys/class/net: {e}"))?;
    let links: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "lo")
        .collect();
    // SAFETY: a plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", Errno::last().desc()));
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut failures = Vec::new();
    for link in &links {
        if let Err(errno) = set_link_down(&socket, link) {
            failures.push(format!("{link}: {}", errno.desc()));
        }
    }
    match failures.is_empty() {
        true => Ok(links),
        false => Err(failures.join(", ")),
    }
}

fn set_link_down(socket: &OwnedFd, link: &str) -> nix::Result<()> {
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if link.len() >= request.ifr_name.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(link.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq they are given.
    unsafe {
        Errno::result(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS as libc::Ioctl,
            &mut request,
        ))?;
        request.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
        Errno::result(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS as libc::Ioctl,
            &request,
        ))?;
    }
    Ok(())
}

/// Adds the likely fix to what the tools print for missing privileges or kernel support.
fn explain(detail: &str) -> String {
    let lower = detail.to_ascii_lowercase();
    let hint = if lower.contains("xtables.lock") || lower.contains("holding the xtables lock") {
        " (iptables-legacy locks /run/xtables.lock: /run must be writable, with docker run \
         --read-only add --tmpfs /run; if another process holds the lock, stop it or use the nft \
         backend)"
    } else if lower.contains("did not finish within") {
        " (is another process holding iptables' lock or the netfilter configuration?)"
    } else if lower.contains("set with the same name already exists") {
        " (a set of that name exists with another type or size, left by another tool or another \
         version of cordon: ipset destroy it, or recreate the container)"
    } else if lower.contains("chain_user_add failed (file exists)") {
        " (a chain of that name exists that iptables did not create, e.g. an nft base chain: \
         remove it with nft delete chain, or recreate the container)"
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

    /// Records the lockdown's calls; `working` lists the (family, variant) pairs whose deny-all
    /// loads.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        working: Vec<(Family, &'static str)>,
        links: Option<Vec<String>>,
    }

    impl Restore for Recorder {
        fn empty_resolver_sets(&mut self) -> Result<(), String> {
            self.calls.push("empty resolver sets".into());
            Err("no such set".into())
        }
        fn deny_all(&mut self, family: Family, variant: &'static str) -> Result<(), String> {
            self.calls.push(format!("{} {variant}", family.name()));
            match self.working.contains(&(family, variant)) {
                true => Ok(()),
                false => Err("failed".into()),
            }
        }
        fn cut_links(&mut self) -> Result<Vec<String>, String> {
            self.calls.push("cut links".into());
            self.links.clone().ok_or_else(|| "EPERM".into())
        }
    }

    const BOTH: [Family; 2] = [Family::V4, Family::V6];

    #[test]
    fn lockdown_uses_the_variant_in_use_for_every_family() {
        let mut sys = Recorder {
            working: vec![(Family::V4, "nft"), (Family::V6, "nft")],
            ..Recorder::default()
        };
        let state = lockdown_with(&mut sys, Some("nft"), &BOTH, true);
        assert_eq!(
            state,
            Lockdown::Denied {
                through: vec!["nft"],
                fell_back: false
            }
        );
        assert_eq!(sys.calls, ["empty resolver sets", "IPv4 nft", "IPv6 nft"]);
    }

    #[test]
    fn a_family_the_variant_in_use_cannot_deny_falls_back_to_the_other() {
        let mut sys = Recorder {
            working: vec![
                (Family::V4, "legacy"),
                (Family::V6, "nft"),
                (Family::V6, "legacy"),
            ],
            ..Recorder::default()
        };
        let state = lockdown_with(&mut sys, Some("legacy"), &BOTH, true);
        assert_eq!(
            state,
            Lockdown::Denied {
                through: vec!["legacy"],
                fell_back: false
            }
        );
        let mut sys = Recorder {
            working: vec![(Family::V4, "nft"), (Family::V6, "legacy")],
            ..Recorder::default()
        };
        let state = lockdown_with(&mut sys, Some("nft"), &BOTH, true);
        assert_eq!(
            state,
            Lockdown::Denied {
                through: vec!["nft", "legacy"],
                fell_back: true
            }
        );
        assert_eq!(
            sys.calls,
            ["empty resolver sets", "IPv4 nft", "IPv6 nft", "IPv6 legacy"]
        );
    }

    #[test]
    fn every_family_is_attempted_before_the_links_are_cut() {
        let mut sys = Recorder {
            working: vec![(Family::V6, "legacy")],
            links: Some(vec!["eth0".into()]),
            ..Recorder::default()
        };
        let state = lockdown_with(&mut sys, None, &BOTH, true);
        assert_eq!(
            state,
            Lockdown::LinksDown {
                links: vec!["eth0".into()]
            }
        );
        assert_eq!(
            sys.calls,
            [
                "empty resolver sets",
                "IPv4 nft",
                "IPv4 legacy",
                "IPv6 nft",
                "IPv6 legacy",
                "cut links"
            ]
        );
    }

    #[test]
    fn nothing_holds_is_open() {
        // In the host's namespace the links are never cut.
        let mut sys = Recorder {
            links: Some(vec!["eth0".into()]),
            ..Recorder::default()
        };
        assert_eq!(lockdown_with(&mut sys, None, &BOTH, false), Lockdown::Open);
        assert!(!sys.calls.contains(&"cut links".to_string()));
        // Cutting them failed too.
        let mut sys = Recorder::default();
        assert_eq!(lockdown_with(&mut sys, None, &BOTH, true), Lockdown::Open);
        assert_eq!(sys.calls.last().unwrap(), "cut links");
    }

    fn load_failed(family: Family) -> (Family, Result<(), Failed>) {
        let step = format!("{}-nft-restore --noflush", family.iptables());
        (
            family,
            Err(Failed {
                step,
                detail: "line 3 failed".into(),
            }),
        )
    }

    #[test]
    fn an_ipv6_load_failure_only_warns_where_ipv6_is_off() {
        let judged = judge_loads(
            vec![(Family::V4, Ok(())), load_failed(Family::V6)],
            Ipv6::Off,
        );
        assert!(judged.failure.is_none());
        assert_eq!(judged.tolerated.len(), 1);
        let judged = judge_loads(
            vec![(Family::V4, Ok(())), load_failed(Family::V6)],
            Ipv6::On,
        );
        assert!(judged.tolerated.is_empty());
        assert!(judged
            .failure
            .unwrap()
            .to_string()
            .contains("ip6tables-nft-restore --noflush"));
    }

    #[test]
    fn an_ipv4_load_failure_fails_the_fence_whatever_ipv6_does() {
        for ipv6 in [Ipv6::On, Ipv6::Off] {
            let judged = judge_loads(vec![load_failed(Family::V4), load_failed(Family::V6)], ipv6);
            let failure = judged.failure.expect("IPv4 must load").to_string();
            assert!(
                failure.contains("iptables-nft-restore --noflush"),
                "{failure}"
            );
        }
    }

    #[test]
    fn tool_errors_get_the_fix() {
        let lock = explain("Fatal: can't open lock file /run/xtables.lock: Read-only file system");
        assert!(lock.contains("--tmpfs /run"), "{lock}");
        let held =
            explain("Another app is currently holding the xtables lock. Stopped waiting after 5s.");
        assert!(held.contains("another process holds the lock"), "{held}");
        let set = explain("iptables-nft-restore v1.8.9 (nf_tables): Can't open socket to ipset.");
        assert!(set.contains("--cap-add NET_RAW"), "{set}");
        let raw = explain("iptables-restore: unable to initialize table 'filter'");
        assert!(raw.contains("--cap-add NET_RAW"), "{raw}");
        let perm = explain("ipset v7.17: Kernel error received: Operation not permitted");
        assert!(perm.contains("--cap-add NET_ADMIN"), "{perm}");
        let module = explain("line 42 failed: Couldn't load match 'set'");
        assert!(module.contains("modprobe"), "{module}");
        let chain = explain(
            "iptables-nft-restore v1.8.9 (nf_tables): / line 2: CHAIN_USER_ADD failed (File \
             exists): chain CORDON_OUTPUT / line 4: RULE_APPEND failed (Operation not supported)",
        );
        assert!(
            chain.contains("nft delete chain") && !chain.contains("modprobe"),
            "{chain}"
        );
        let set_type = explain(
            "ipset v7.17: Error in line 1: Set cannot be created: set with the same name already \
             exists",
        );
        assert!(set_type.contains("ipset destroy"), "{set_type}");
        assert_eq!(explain("something else"), "something else");
    }
}
