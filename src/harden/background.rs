//! harden beside the agent. Where every process in the container has no_new_privs (`docker run
//! --security-opt no-new-privileges`: PID 1 starts with it, and Docker gives it to every exec
//! session), setuid bits and file capabilities are inert for everyone, so stripping them need
//! not delay the agent: a helper process does it while the agent runs. Elsewhere the helper only
//! scans the other mounts (volumes, the workspace) and reports what it finds there.
//!
//! The helper is forked by PID 1 before the supervisor drops to CAP_KILL. It keeps only the
//! capabilities stripping needs, runs at the lowest CPU and I/O priority, is not dumpable, and
//! stays uid 0, so the agent (another uid, no capabilities) can neither signal nor ptrace it. It
//! dies with PID 1. Its state is in a root-only file for `cordon check`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Pid};

use super::{scan_other_mounts, strip_other_mounts, Privileged, VISITED};
use crate::error::{Error, Result};
use crate::logging::count;
use crate::sys::caps::{self, Capability};
use crate::sys::run_dir;
use crate::sys::signals::Signals;

/// The helper's state, for `cordon check` as any user: beside the fence's record (which stays
/// root-only), in the root-owned directory nobody else can write.
pub const STATUS_FILE: &str = "/run/cordon/harden";

/// How often the helper rewrites its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What the helper does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Strip the root filesystem, then scan the other mounts (and strip them with
    /// `--strip-mounts`): every process has no_new_privs.
    Everything { strip_mounts: bool },
    /// Only scan the other mounts and report what would work there: the root filesystem was
    /// hardened before the agent started.
    ReportMounts,
}

/// Whether this process started with no_new_privs. For PID 1 before it sets it itself, that
/// means the container runs with `--security-opt no-new-privileges`, which Docker also applies to
/// every `docker exec` session.
pub fn started_with_no_new_privs() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| status.lines().any(|line| line == "NoNewPrivs:\t1"))
}

/// The capabilities the helper keeps: reading every directory and file, changing the mode of
/// files it does not own, and removing `security.capability`.
const KEPT: [Capability; 4] = [
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_SETFCAP,
];

/// Forks the helper. Call while cordon is single-threaded (checked: the child allocates) and
/// before the supervisor's own drop. Returns its pid.
pub fn start(work: Work, signals: &Signals) -> Result<Pid> {
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
        });
    if threads != Some(1) {
        return Err(Error::sys(
            "starting the background harden pass (cordon is not single-threaded)",
            Errno::EAGAIN,
        ));
    }
    let status = StatusWriter {
        container_no_new_privs: matches!(work, Work::Everything { .. }),
    };
    status.write("running 0");
    // SAFETY: cordon is single-threaded (checked above), so the child may allocate; it never
    // returns into the caller's code: it exits when the work is done.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork", e))? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            crate::credential::forget_in_this_process();
            let code = match confine(signals) {
                Ok(()) => run(work, &status),
                Err(error) => {
                    log::warn!("{error}");
                    status.write(&format!("failed {error}"));
                    1
                }
            };
            // SAFETY: ending the helper without unwinding into the caller's stack.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The helper's own confinement, before it reads anything.
fn confine(signals: &Signals) -> Result<()> {
    let fail = |what: &'static str| move |errno| Error::sys(what, errno);
    // SAFETY: plain system calls with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        // IOPRIO_WHO_PROCESS, this process, IOPRIO_CLASS_IDLE: I/O only when no one else wants
        // the disk. Best effort: not every scheduler has classes.
        libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
    }
    // A `docker stop` of the agent's last moments ends the helper at once, without the grace.
    signals
        .restore()
        .map_err(fail("background harden: restoring signals"))?;
    caps::keep_only(&KEPT).map_err(fail("background harden: dropping capabilities"))?;
    nix::sys::prctl::set_dumpable(false).map_err(fail("background harden: clearing dumpable"))
}

/// The work, reported as it goes; the exit status of the helper.
fn run(work: Work, status: &StatusWriter) -> i32 {
    let started = Instant::now();
    let (finished, wait) = std::sync::mpsc::channel::<()>();
    let outcome = std::thread::scope(|scope| {
        scope.spawn(move || {
            // Until the work ends (the sender is dropped), rewrite the progress now and then.
            while let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(PROGRESS_EVERY) {
                status.write(&format!("running {}", VISITED.load(Ordering::Relaxed)));
            }
        });
        let outcome = work_once(work);
        drop(finished);
        outcome
    });
    let elapsed = started.elapsed().as_millis();
    match outcome {
        Ok(summary) => {
            log::info!("background harden done in {elapsed} ms: {summary}");
            status.write(&format!("done {elapsed} ms: {summary}"));
            0
        }
        Err(error) => {
            // Inert meanwhile (no_new_privs everywhere) or outside the root filesystem: a
            // warning, and `cordon check` names the files.
            log::warn!("background harden failed after {elapsed} ms: {error}");
            status.write(&format!("failed {error}"));
            1
        }
    }
}

fn work_once(work: Work) -> Result<String> {
    let mut parts = Vec::new();
    let strip_mounts = match work {
        Work::Everything { strip_mounts } => {
            let report = super::harden(Path::new("/"))?;
            report.log();
            parts.push(report.summary());
            strip_mounts
        }
        Work::ReportMounts => false,
    };
    if strip_mounts {
        let report = strip_other_mounts()?;
        report.log();
        parts.push(report.summary());
    } else {
        parts.push(describe_other_mounts(&scan_other_mounts()));
    }
    Ok(parts.join("; "))
}

/// What would work on the other mounts: each file with owner and mode.
fn describe_other_mounts(scans: &[super::Scan]) -> String {
    let found: Vec<&Privileged> = scans.iter().flat_map(|scan| &scan.privileged).collect();
    let entries: u64 = scans.iter().map(|scan| scan.entries).sum();
    if found.is_empty() {
        return format!(
            "no setuid/setgid file or file capabilities on {} ({})",
            count(scans.len() as u64, "other mount"),
            count(entries, "entry")
        );
    }
    for file in &found {
        log::warn!(
            "privileged file on another mount: {} ({}, uid {} mode {:o}); start with \
             --strip-mounts to strip it, or remove the bits where the mount comes from",
            file.path.display(),
            file.describe(),
            file.uid,
            file.mode
        );
    }
    format!(
        "{} on other mounts ({}): {}",
        count(found.len() as u64, "privileged file"),
        count(entries, "entry"),
        crate::logging::name_a_few(found.iter().map(|f| f.path.display()), 5, ", ")
    )
}

/// Writes the status file: the state, then whether the container runs with no_new_privs.
struct StatusWriter {
    container_no_new_privs: bool,
}

impl StatusWriter {
    /// Replaces the status file in one step. Best effort: `cordon check` says when there is none.
    fn write(&self, state: &str) {
        let text = format!(
            "{state}\nno_new_privs {}\n",
            if self.container_no_new_privs {
                "yes"
            } else {
                "no"
            }
        );
        if let Err(e) = run_dir::replace(Path::new(STATUS_FILE), 0o644, &text) {
            log::debug!("writing {STATUS_FILE}: {e}");
        }
    }
}

/// The helper's state as `cordon check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running { entries: u64 },
    Done(String),
    Failed(String),
}

/// What the status file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub status: Status,
    /// The container runs with no_new_privs (every process, exec sessions included): setuid bits
    /// and file capabilities are inert.
    pub container_no_new_privs: bool,
}

/// Reads the status file; `None` when there is none (no background pass in this container).
/// Only a root-owned file counts.
pub fn read_status() -> Option<Report> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(STATUS_FILE).ok()?;
    if meta.uid() != 0 || !meta.is_file() {
        return None;
    }
    parse_report(&std::fs::read_to_string(STATUS_FILE).ok()?)
}

fn parse_report(text: &str) -> Option<Report> {
    let mut lines = text.lines();
    let status = parse_status(lines.next()?)?;
    let container_no_new_privs = lines.next() == Some("no_new_privs yes");
    Some(Report {
        status,
        container_no_new_privs,
    })
}

fn parse_status(line: &str) -> Option<Status> {
    let (state, rest) = line.split_once(' ')?;
    match state {
        "running" => rest.parse().ok().map(|entries| Status::Running { entries }),
        "done" => Some(Status::Done(rest.to_string())),
        "failed" => Some(Status::Failed(rest.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status("running 1234"),
            Some(Status::Running { entries: 1234 })
        );
        assert_eq!(
            parse_status("done 80 ms: hardened /: 7 entries"),
            Some(Status::Done("80 ms: hardened /: 7 entries".into()))
        );
        assert_eq!(
            parse_status("failed cannot strip /x"),
            Some(Status::Failed("cannot strip /x".into()))
        );
        assert_eq!(parse_status("running many"), None);
        assert_eq!(parse_status(""), None);
        let report = parse_report("running 7\nno_new_privs yes\n").unwrap();
        assert!(report.container_no_new_privs);
        assert!(
            !parse_report("running 7\nno_new_privs no\n")
                .unwrap()
                .container_no_new_privs
        );
    }
}
