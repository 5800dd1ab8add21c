//! `cordon check`: does the sandbox hold, as seen from inside?
//!
//! Runnable by any user and as a Docker HEALTHCHECK; exit 0 only if the sandbox holds. It holds
//! when nothing found is a failure:
//! - the fence holds (`FenceStatus`, from the fence stage);
//! - no setuid/setgid file and no file with capabilities is left on the root filesystem, and no
//!   setuid sudo (or su, doas, pkexec) exists: otherwise any session without no_new_privs can
//!   become root (or another user) and open the fence;
//! - a non-root caller holds no capability in its permitted, effective or ambient set.
//!
//! Not failures, but reported: a root caller's own capabilities (`docker exec -u root` and a
//! HEALTHCHECK in an image without USER are the trusted operator); a non-root caller with a
//! non-empty bounding or inheritable set or without no_new_privs (a `docker exec -u node`
//! session rather than the agent): with no privileged file left it has nothing to gain them
//! from, and the scan is what decides; sudoers rules left behind a sudo without its setuid bit.
//! A non-root caller cannot read every directory: what it could not scan is reported, and a
//! full scan needs root.

mod inspect;

use std::fmt;
use std::path::Path;

use crate::error::{exit, Error, Result};
use crate::fence::Backend;
use crate::harden::{self, background, sudoers, Privileged, Scan};
use crate::logging::name_a_few;
use inspect::FenceStatus;

/// What `cordon check` was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Print only what did not hold (the HEALTHCHECK).
    pub quiet: bool,
    /// Which iptables variant to read (as root).
    pub backend: Backend,
}

pub fn run(args: &Options) -> Result<i32> {
    let status_text = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("cannot read /proc/self/status", e))?;
    let caller = Status::parse(&status_text).map_err(|reason| {
        Error::io(
            "cannot read /proc/self/status",
            std::io::Error::other(reason),
        )
    })?;
    // First: the scans below take a while, and the pass may end meanwhile.
    let background = background::read_status();
    let scan = harden::scan(Path::new("/"))?;
    let sudoers = Sudoers::read(Path::new("/"));
    let facts = Facts {
        caller,
        scan,
        sudoers,
        fence: inspect::fence(args.backend),
        credentials_in_env: crate::agent::env::credential_names(std::env::vars_os()),
        sessions_without_nnp: sessions_without_no_new_privs(Path::new("/proc")),
        other_mounts: harden::scan_other_mounts(),
        background,
        credential_gateway: crate::credential::service::check_status(Path::new("/proc")),
    };
    let findings = assess(&facts);
    // --quiet (the HEALTHCHECK): only what did not hold, and the verdict.
    for finding in findings
        .iter()
        .filter(|f| !args.quiet || f.verdict == Verdict::Fail)
    {
        println!("{finding}");
    }
    let failures = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    if failures == 0 {
        println!("the sandbox holds");
        Ok(exit::OK)
    } else {
        println!("the sandbox does NOT hold ({failures} failed)");
        Ok(exit::CHECK_FAILED)
    }
}

/// The capability sets of a process, as bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

/// What /proc/self/status says about the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub caps: CapSets,
    pub no_new_privs: bool,
}

impl Status {
    pub fn parse(text: &str) -> std::result::Result<Status, String> {
        let mut status = Status::default();
        let mut seen = 0;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let caps = &mut status.caps;
            let slot = match key {
                "Uid" => {
                    let ids = ids(value)?;
                    status.uid = *ids.first().ok_or("empty Uid line")?;
                    status.euid = *ids.get(1).ok_or("short Uid line")?;
                    seen += 1;
                    continue;
                }
                "Gid" => {
                    status.gid = *ids(value)?.first().ok_or("empty Gid line")?;
                    continue;
                }
                "Groups" => {
                    status.groups = ids(value)?;
                    continue;
                }
                "NoNewPrivs" => {
                    status.no_new_privs = value == "1";
                    continue;
                }
                "CapInh" => &mut caps.inheritable,
                "CapPrm" => &mut caps.permitted,
                "CapEff" => &mut caps.effective,
                "CapBnd" => &mut caps.bounding,
                "CapAmb" => &mut caps.ambient,
                _ => continue,
            };
            *slot = u64::from_str_radix(value, 16).map_err(|_| format!("bad {key} `{value}`"))?;
            seen += 1;
        }
        if seen < 5 {
            return Err("no Uid or capability lines".to_string());
        }
        Ok(status)
    }
}

fn ids(text: &str) -> std::result::Result<Vec<u32>, String> {
    text.split_whitespace()
        .map(|id| id.parse().map_err(|_| format!("bad id `{id}`")))
        .collect()
}

/// Capability names in a mask, e.g. "cap_net_admin, cap_net_raw".
pub fn cap_names(mask: u64) -> String {
    let mut known: Vec<caps::Capability> = caps::all()
        .into_iter()
        .filter(|cap| mask & cap.bitmask() != 0)
        .collect();
    known.sort_by_key(|cap| cap.index());
    let covered = known.iter().fold(0, |acc, cap| acc | cap.bitmask());
    let mut names: Vec<String> = known
        .iter()
        .map(|cap| cap.to_string().to_ascii_lowercase())
        .collect();
    names.extend(
        (0..64)
            .filter(|bit| (mask & !covered) & (1 << bit) != 0)
            .map(|bit| format!("capability {bit}")),
    );
    names.join(", ")
}

/// The state of sudo's rules as far as the caller can read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sudoers {
    /// Every file was readable; these still hold rules.
    Read { granting: Vec<String> },
    /// At least one file could not be read by the caller.
    Unreadable,
}

impl Sudoers {
    pub fn read(root: &Path) -> Sudoers {
        let mut granting = Vec::new();
        for path in sudoers::files(root) {
            match std::fs::read(&path) {
                Ok(text) if sudoers::grants(&String::from_utf8_lossy(&text)) => {
                    granting.push(path.display().to_string())
                }
                Ok(_) => {}
                Err(_) => return Sudoers::Unreadable,
            }
        }
        Sudoers::Read { granting }
    }
}

pub struct Facts {
    pub caller: Status,
    pub scan: Scan,
    pub sudoers: Sudoers,
    pub fence: FenceStatus,
    /// Credential variables in check's own environment: the container's configured one, which
    /// every `docker exec` session and the HEALTHCHECK get.
    pub credentials_in_env: Vec<String>,
    /// Non-root processes without no_new_privs (docker exec sessions, unless the container runs
    /// with `--security-opt no-new-privileges`).
    pub sessions_without_nnp: Vec<Session>,
    /// The other mounts where a setuid bit would work (volumes, the workspace), scanned.
    pub other_mounts: Vec<Scan>,
    /// The background harden pass, where there is one.
    pub background: Option<background::Report>,
    /// The credential gateway, where one was started here: running (what it serves) or not.
    pub credential_gateway: Option<std::result::Result<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub pid: u32,
    pub uid: u32,
    pub name: String,
}

/// Every non-root process in `proc` whose status says NoNewPrivs 0.
pub fn sessions_without_no_new_privs(proc: &Path) -> Vec<Session> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut sessions: Vec<Session> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let field = |key: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .map(|rest| rest.trim().to_string())
            };
            let uid: u32 = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
            let without = field("NoNewPrivs:")? == "0";
            (uid != 0 && without).then(|| Session {
                pid,
                uid,
                name: field("Name:").unwrap_or_default(),
            })
        })
        .collect();
    sessions.sort_by_key(|s| s.pid);
    sessions
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Note,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub topic: &'static str,
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Note => "note",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{verdict:<5} {}: {}", self.topic, self.text)
    }
}

fn finding(verdict: Verdict, topic: &'static str, text: impl Into<String>) -> Finding {
    Finding {
        verdict,
        topic,
        text: text.into(),
    }
}

/// The one line for a container with no fence at all (`FenceStatus::absent`).
pub const FENCE_ABSENT: &str = "absent — nothing is blocked in this container. Apply it as root: \
     `sudo /usr/local/bin/init-firewall.sh` in a drop-in devcontainer (its postStartCommand; a \
     plain `docker restart` does not run it), or start the container with cordon as its \
     entrypoint";

pub fn assess(facts: &Facts) -> Vec<Finding> {
    // The container runs with no_new_privs (PID 1 started with it, as every exec session does):
    // setuid bits and file capabilities are inert, now and for any later session.
    let inert = facts
        .background
        .as_ref()
        .is_some_and(|report| report.container_no_new_privs);
    let mut findings = vec![identity(&facts.caller), capabilities(&facts.caller)];
    findings.extend(privileged_files(&facts.scan, &facts.caller, inert));
    findings.push(sudo(&facts.scan.privileged, &facts.sudoers, inert));
    findings.extend(background_pass(
        facts.background.as_ref().map(|report| &report.status),
        inert,
    ));
    if facts.fence.absent {
        findings.push(finding(Verdict::Fail, "fence", FENCE_ABSENT));
    } else {
        findings.extend(facts.fence.facts.iter().map(|fact| {
            let verdict = if fact.ok { Verdict::Ok } else { Verdict::Fail };
            finding(verdict, "fence", &fact.text)
        }));
    }
    if facts.fence.facts.is_empty() {
        findings.push(finding(Verdict::Fail, "fence", "nothing could be checked"));
    }
    match &facts.credential_gateway {
        Some(Ok(text)) => findings.push(finding(Verdict::Ok, "credential gateway", text)),
        Some(Err(text)) => findings.push(finding(Verdict::Fail, "credential gateway", text)),
        None => {}
    }
    findings.push(environment(&facts.credentials_in_env));
    findings.push(sessions(&facts.sessions_without_nnp));
    findings.push(other_mounts(
        &facts.other_mounts,
        &facts.sessions_without_nnp,
    ));
    findings
}

/// harden strips only the root filesystem: a setuid or file-capability file on a volume or the
/// workspace stays. It matters only to a process without no_new_privs (a docker exec session,
/// which the agent, as the same uid, could drive through ptrace to run it).
fn other_mounts(scans: &[Scan], without_nnp: &[Session]) -> Finding {
    let found: Vec<String> = scans
        .iter()
        .flat_map(|scan| &scan.privileged)
        .map(|file| {
            format!(
                "{} ({}, uid {} mode {:o})",
                file.path.display(),
                file.describe(),
                file.uid,
                file.mode
            )
        })
        .collect();
    let mounts: Vec<String> = scans.iter().map(|s| s.root.display().to_string()).collect();
    if found.is_empty() {
        return finding(
            Verdict::Ok,
            "other mounts",
            format!(
                "no setuid/setgid file or file capabilities on {} other mounts without nosuid \
                 ({})",
                scans.len(),
                mounts.join(", ")
            ),
        );
    }
    let listed = name_a_few(found.iter(), 10, ", ");
    if without_nnp.is_empty() {
        return finding(
            Verdict::Note,
            "other mounts",
            format!(
                "{listed}: inert, every non-root process has no_new_privs (harden strips other \
                 mounts only with --strip-mounts)"
            ),
        );
    }
    finding(
        Verdict::Fail,
        "other mounts",
        format!(
            "{listed}: a process without no_new_privs (a docker exec session) could run one to \
             gain privileges; remove the bits on the host (chmod ug-s, setcap -r), mount it \
             nosuid, start cordon with --strip-mounts, or run the container with --security-opt \
             no-new-privileges"
        ),
    )
}

/// A warning, not a failure: in the base-image devcontainer the agent runs in such sessions.
fn environment(names: &[String]) -> Finding {
    if names.is_empty() {
        return finding(
            Verdict::Ok,
            "environment",
            "no credential variables in the container's configured environment",
        );
    }
    finding(
        Verdict::Note,
        "environment",
        format!(
            "the container's configured environment holds {}: cordon removed them from the \
             agent's, but every docker exec session (an editor's terminal or server) gets them, \
             and a process of the same uid can read them from /proc/PID/environ; pass them to \
             no container, or only where the agent cannot run",
            names.join(", ")
        ),
    )
}

fn sessions(without: &[Session]) -> Finding {
    if without.is_empty() {
        return finding(
            Verdict::Ok,
            "sessions",
            "every non-root process has no_new_privs",
        );
    }
    let listed = name_a_few(
        without
            .iter()
            .map(|s| format!("{} {} (uid {})", s.pid, s.name, s.uid)),
        5,
        ", ",
    );
    finding(
        Verdict::Note,
        "sessions",
        format!(
            "non-root processes without no_new_privs: {listed}; a setuid or file-capability file \
             would work for them (docker exec sessions: run the container with --security-opt \
             no-new-privileges to give it to every process)"
        ),
    )
}

fn identity(caller: &Status) -> Finding {
    let groups: Vec<String> = caller.groups.iter().map(u32::to_string).collect();
    let text = format!(
        "uid {} (effective {}), gid {}, groups [{}]",
        caller.uid,
        caller.euid,
        caller.gid,
        groups.join(" ")
    );
    finding(Verdict::Ok, "caller", text)
}

fn capabilities(caller: &Status) -> Finding {
    let caps = caller.caps;
    let sets = format!(
        "CapInh {:016x} CapPrm {:016x} CapEff {:016x} CapBnd {:016x} CapAmb {:016x}, NoNewPrivs {}",
        caps.inheritable,
        caps.permitted,
        caps.effective,
        caps.bounding,
        caps.ambient,
        u8::from(caller.no_new_privs)
    );
    let held = caps.permitted | caps.effective | caps.ambient;
    let (verdict, text) = if caller.euid == 0 {
        (
            Verdict::Note,
            format!("caller is root (the trusted operator); its own sets are not judged: {sets}"),
        )
    } else if held != 0 {
        (
            Verdict::Fail,
            format!("a non-root process holds {}: {sets}", cap_names(held)),
        )
    } else if caps.bounding != 0 || caps.inheritable != 0 || !caller.no_new_privs {
        (
            Verdict::Note,
            format!(
                "none held, but this session was not started by cordon (e.g. docker exec): it \
                 could gain some only through a setuid or file-capability binary: {sets}"
            ),
        )
    } else {
        (
            Verdict::Ok,
            format!("none in any set, no_new_privs on: {sets}"),
        )
    };
    finding(verdict, "capabilities", text)
}

/// The background harden pass (`--security-opt no-new-privileges`): running is not a failure,
/// the bits are inert meanwhile.
fn background_pass(status: Option<&background::Status>, inert: bool) -> Option<Finding> {
    Some(match status? {
        background::Status::Running { entries } => finding(
            Verdict::Note,
            "harden",
            format!(
                "running beside the agent ({entries} entries so far); setuid bits and file \
                 capabilities are inert meanwhile: the container runs with no_new_privs"
            ),
        ),
        background::Status::Done(summary) => finding(
            Verdict::Ok,
            "harden",
            format!("done beside the agent in {summary}"),
        ),
        // A note: beside the agent it either strips what is inert (no_new_privs everywhere) or
        // only reports the other mounts (the root filesystem was hardened before the agent).
        background::Status::Failed(error) => finding(
            Verdict::Note,
            "harden",
            format!(
                "the pass beside the agent failed: {error}{}",
                if inert {
                    " (the bits are inert: no_new_privs everywhere)"
                } else {
                    ""
                }
            ),
        ),
    })
}

fn privileged_files(scan: &Scan, caller: &Status, inert: bool) -> Vec<Finding> {
    let where_ = format!(
        "{} ({} entries in {} ms)",
        scan.root.display(),
        scan.entries,
        scan.elapsed.as_millis()
    );
    let mut findings = vec![if scan.privileged.is_empty() {
        finding(
            Verdict::Ok,
            "privileged files",
            format!("no setuid/setgid file or file capabilities on {where_}"),
        )
    } else {
        let listed = name_a_few(
            scan.privileged
                .iter()
                .map(|file| format!("{} ({})", file.path.display(), file.describe())),
            10,
            ", ",
        );
        match inert {
            true => finding(
                Verdict::Note,
                "privileged files",
                format!(
                    "{} on {where_}: {listed}: inert, the container runs with no_new_privs",
                    scan.privileged.len()
                ),
            ),
            false => finding(
                Verdict::Fail,
                "privileged files",
                format!("{} on {where_}: {listed}", scan.privileged.len()),
            ),
        }
    }];
    if let Some((first, errno)) = scan.unreadable.first() {
        let who = if caller.euid == 0 {
            "root"
        } else {
            "this user"
        };
        findings.push(finding(
            Verdict::Note,
            "privileged files",
            format!(
                "{} directories not readable by {who} were not scanned, e.g. {} ({}); run as \
                 root (docker exec -u root) for a full scan",
                scan.unreadable.len(),
                first.display(),
                errno.desc()
            ),
        ));
    }
    findings
}

fn sudo(privileged: &[Privileged], sudoers: &Sudoers, inert: bool) -> Finding {
    let tools: Vec<String> = privileged
        .iter()
        .filter(|file| file.setuid() && file.uid == 0 && sudoers::is_elevation_tool(&file.path))
        .map(|file| file.path.display().to_string())
        .collect();
    if !tools.is_empty() && inert {
        return finding(
            Verdict::Note,
            "sudo",
            format!(
                "cannot work: {} setuid root, but the container runs with no_new_privs",
                tools.join(" and ")
            ),
        );
    }
    if !tools.is_empty() {
        return finding(
            Verdict::Fail,
            "sudo",
            format!("could work: {} setuid root", tools.join(" and ")),
        );
    }
    match sudoers {
        Sudoers::Read { granting } if granting.is_empty() => finding(
            Verdict::Ok,
            "sudo",
            "cannot work: no setuid sudo, no sudoers rules",
        ),
        Sudoers::Read { granting } => finding(
            Verdict::Note,
            "sudo",
            format!(
                "cannot work (no setuid sudo), although {} still hold rules",
                granting.join(", ")
            ),
        ),
        Sudoers::Unreadable => finding(
            Verdict::Ok,
            "sudo",
            "cannot work: no setuid sudo (sudoers not readable by this user)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inspect::FenceFact;
    use std::path::PathBuf;
    use std::time::Duration;

    const AGENT: &str = "\
Name:\tclaude
Umask:\t0022
State:\tR (running)
Uid:\t1000\t1000\t1000\t1000
Gid:\t1000\t1000\t1000\t1000
Groups:\t27 1000 
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t0000000000000000
CapAmb:\t0000000000000000
NoNewPrivs:\t1
Seccomp:\t2
";

    fn agent() -> Status {
        Status::parse(AGENT).unwrap()
    }

    fn exec_session() -> Status {
        Status {
            caps: CapSets {
                bounding: 0x00000000a80425fb,
                ..CapSets::default()
            },
            no_new_privs: false,
            ..agent()
        }
    }

    fn root() -> Status {
        Status {
            uid: 0,
            euid: 0,
            gid: 0,
            groups: vec![],
            caps: CapSets {
                permitted: 0x00000000a80435fb,
                effective: 0x00000000a80435fb,
                bounding: 0x00000000a80435fb,
                ..CapSets::default()
            },
            no_new_privs: false,
        }
    }

    fn scan(privileged: Vec<Privileged>) -> Scan {
        Scan {
            root: PathBuf::from("/"),
            entries: 100,
            files: 80,
            privileged,
            skipped: vec![],
            unreadable: vec![],
            root_dev: 1,
            elapsed: Duration::from_millis(3),
        }
    }

    fn fence(holds: bool) -> FenceStatus {
        FenceStatus {
            facts: vec![FenceFact {
                ok: holds,
                text: "chains in place".to_string(),
            }],
            absent: false,
        }
    }

    #[test]
    fn an_absent_fence_is_one_line_that_says_how_to_apply_it() {
        let mut facts = facts(agent(), Vec::new(), false);
        facts.fence.facts = (0..6)
            .map(|n| FenceFact {
                ok: n == 0,
                text: format!("probe {n} open"),
            })
            .collect();
        facts.fence.absent = true;
        let fence: Vec<String> = assess(&facts)
            .iter()
            .filter(|finding| finding.topic == "fence")
            .map(|finding| finding.to_string())
            .collect();
        assert_eq!(fence.len(), 1, "{fence:?}");
        assert!(fence[0].starts_with("FAIL"), "{fence:?}");
        assert!(fence[0].contains("fence: absent"), "{fence:?}");
        assert!(
            fence[0].contains("sudo /usr/local/bin/init-firewall.sh"),
            "{fence:?}"
        );
    }

    fn facts(caller: Status, privileged: Vec<Privileged>, fence_holds: bool) -> Facts {
        Facts {
            caller,
            scan: scan(privileged),
            sudoers: Sudoers::Read { granting: vec![] },
            fence: fence(fence_holds),
            credentials_in_env: Vec::new(),
            sessions_without_nnp: Vec::new(),
            other_mounts: Vec::new(),
            background: None,
            credential_gateway: None,
        }
    }

    #[test]
    fn a_credential_gateway_that_is_down_fails() {
        let mut facts = facts(agent(), vec![], true);
        assert!(failures(&facts).is_empty());
        facts.credential_gateway = Some(Ok("running".into()));
        assert!(failures(&facts).is_empty());
        facts.credential_gateway = Some(Err("not running".into()));
        assert_eq!(failures(&facts), ["credential gateway"]);
    }

    fn failures(facts: &Facts) -> Vec<&'static str> {
        assess(facts)
            .into_iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .map(|f| f.topic)
            .collect()
    }

    fn sudo_binary() -> Privileged {
        let mut scan = harden::tests_support::privileged("/usr/bin/sudo", 0o4755, 0);
        scan.capability = false;
        scan
    }

    #[test]
    fn parses_proc_status() {
        let status = agent();
        assert_eq!((status.uid, status.euid, status.gid), (1000, 1000, 1000));
        assert_eq!(status.groups, [27, 1000]);
        assert_eq!(status.caps, CapSets::default());
        assert!(status.no_new_privs);
        assert!(Status::parse("Name: x\n").is_err());
        assert!(Status::parse(&AGENT.replace("CapEff:\t0000", "CapEff:\tzz00")).is_err());
    }

    #[test]
    fn names_capabilities() {
        assert_eq!(cap_names(1 << 12 | 1 << 13), "cap_net_admin, cap_net_raw");
        assert_eq!(cap_names(1 << 63), "capability 63");
        assert_eq!(cap_names(0), "");
    }

    #[test]
    fn setuid_files_are_inert_only_in_a_container_with_no_new_privs() {
        let mut found = facts(exec_session(), vec![sudo_binary()], true);
        assert_eq!(failures(&found), ["privileged files", "sudo"]);
        let report = |status, container_no_new_privs| background::Report {
            status,
            container_no_new_privs,
        };
        // The pass that only reports other mounts runs without no_new_privs: nothing is inert.
        found.background = Some(report(background::Status::Running { entries: 9 }, false));
        assert_eq!(failures(&found), ["privileged files", "sudo"]);
        found.background = Some(report(background::Status::Running { entries: 9 }, true));
        assert_eq!(failures(&found), Vec::<&str>::new());
        let text = |found: &Facts, topic: &str| {
            let all = assess(found);
            let f = all.iter().find(|f| f.topic == topic).unwrap().clone();
            (f.verdict, f.text)
        };
        let (verdict, said) = text(&found, "harden");
        assert_eq!(verdict, Verdict::Note);
        assert!(
            said.contains("running beside the agent (9 entries so far)"),
            "{said}"
        );
        assert_eq!(text(&found, "privileged files").0, Verdict::Note);
        found.background = Some(report(background::Status::Done("80 ms: x".into()), true));
        found.scan = scan(vec![]);
        assert_eq!(
            text(&found, "harden"),
            (Verdict::Ok, "done beside the agent in 80 ms: x".into())
        );
        found.background = Some(report(
            background::Status::Failed("read-only".into()),
            false,
        ));
        assert_eq!(text(&found, "harden").0, Verdict::Note);
    }

    #[test]
    fn the_agent_in_a_sandbox_that_holds_passes() {
        assert_eq!(failures(&facts(agent(), vec![], true)), Vec::<&str>::new());
    }

    #[test]
    fn a_fence_that_does_not_hold_fails() {
        assert_eq!(failures(&facts(agent(), vec![], false)), ["fence"]);
    }

    #[test]
    fn a_non_root_caller_with_capabilities_fails() {
        let mut caller = agent();
        caller.caps.ambient = 1 << 12;
        let found = assess(&facts(caller, vec![], true));
        assert_eq!(found[1].verdict, Verdict::Fail);
        assert!(found[1].text.contains("cap_net_admin"), "{}", found[1].text);
    }

    #[test]
    fn a_docker_exec_session_is_noted_not_failed() {
        let found = assess(&facts(exec_session(), vec![], true));
        assert_eq!(found[1].verdict, Verdict::Note);
        assert!(found.iter().all(|f| f.verdict != Verdict::Fail));
    }

    #[test]
    fn credentials_in_exec_sessions_and_sessions_without_no_new_privs_are_warnings() {
        let mut with_both = facts(exec_session(), vec![], true);
        with_both.credentials_in_env = vec!["DATABASE_URL".into(), "GITHUB_TOKEN".into()];
        with_both.sessions_without_nnp = vec![Session {
            pid: 42,
            uid: 1000,
            name: "bash".into(),
        }];
        let found = assess(&with_both);
        assert!(found.iter().all(|f| f.verdict != Verdict::Fail));
        let text = |topic: &str| {
            let f = found.iter().find(|f| f.topic == topic).unwrap();
            assert_eq!(f.verdict, Verdict::Note, "{f}");
            f.text.clone()
        };
        assert!(text("environment").contains("DATABASE_URL, GITHUB_TOKEN"));
        assert!(text("sessions").contains("42 bash (uid 1000)"));
        assert!(text("sessions").contains("--security-opt no-new-privileges"));
    }

    #[test]
    fn this_process_is_a_session_without_no_new_privs_unless_it_has_it() {
        let me = std::process::id();
        let found = sessions_without_no_new_privs(Path::new("/proc"));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let unprivileged = !status.lines().any(|l| l.starts_with("Uid:\t0\t"));
        let without = status.lines().any(|l| l == "NoNewPrivs:\t0");
        assert_eq!(
            found.iter().any(|s| s.pid == me),
            unprivileged && without,
            "{status}"
        );
    }

    #[test]
    fn a_setuid_file_on_another_mount_fails_unless_every_process_has_no_new_privs() {
        let file = harden::tests_support::privileged("/workspace/tool", 0o4755, 0);
        let mut facts = facts(agent(), vec![], true);
        facts.other_mounts = vec![scan(vec![file])];
        facts.sessions_without_nnp = vec![Session {
            pid: 7,
            uid: 1000,
            name: "bash".into(),
        }];
        assert_eq!(failures(&facts), ["other mounts"]);
        let text = assess(&facts).last().unwrap().text.clone();
        assert!(
            text.contains("/workspace/tool") && text.contains("no-new-privileges"),
            "{text}"
        );
        facts.sessions_without_nnp.clear();
        assert_eq!(failures(&facts), Vec::<&str>::new());
        assert_eq!(assess(&facts).last().unwrap().verdict, Verdict::Note);
    }

    #[test]
    fn root_callers_capabilities_are_not_judged() {
        assert_eq!(failures(&facts(root(), vec![], true)), Vec::<&str>::new());
    }

    #[test]
    fn any_privileged_file_fails_for_every_caller() {
        for caller in [agent(), exec_session(), root()] {
            let file = harden::tests_support::privileged("/usr/bin/ping", 0o755, 0);
            assert_eq!(
                failures(&facts(caller, vec![file], true)),
                ["privileged files"]
            );
        }
    }

    #[test]
    fn a_setuid_sudo_fails_twice() {
        assert_eq!(
            failures(&facts(agent(), vec![sudo_binary()], true)),
            ["privileged files", "sudo"]
        );
    }

    #[test]
    fn sudoers_rules_without_setuid_sudo_are_a_note() {
        let mut facts = facts(agent(), vec![], true);
        facts.sudoers = Sudoers::Read {
            granting: vec!["/etc/sudoers".to_string()],
        };
        let sudo = assess(&facts)
            .into_iter()
            .find(|f| f.topic == "sudo")
            .unwrap();
        assert_eq!(sudo.verdict, Verdict::Note);
    }

    #[test]
    fn findings_render_as_one_line_each() {
        let text = finding(Verdict::Fail, "fence", "no chains").to_string();
        assert_eq!(text, "FAIL  fence: no chains");
    }
}
