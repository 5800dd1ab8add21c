//! PID 1 duties: forward signals, reap every zombie, sweep the rest when the agent exits, and exit
//! with the agent's status.
//!
//! The loop is tini's: every catchable signal is blocked from the first line of the entrypoint on
//! and collected with `sigtimedwait`; after each wake-up `waitpid(-1, WNOHANG)` runs until nothing
//! is left to reap, so merged SIGCHLDs and orphans that reparented to us are never missed.

use std::collections::{HashMap, VecDeque};
use std::ffi::c_int;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::sys::signals::Signals;

/// How the agent is supervised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Forward signals to the agent's whole process group instead of the agent alone.
    pub signal_group: bool,
    /// What the remaining processes get between SIGTERM and SIGKILL once the agent exits.
    pub grace: Duration,
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

impl Default for Options {
    fn default() -> Self {
        Options {
            signal_group: false,
            grace: DEFAULT_GRACE,
        }
    }
}

/// How long the loop sleeps when nothing happens (it wakes on any signal anyway).
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How long SIGKILLed processes get to disappear before cordon exits regardless.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// A process PID 1 keeps running beside the agent until the agent exits (the DNS gateway, the
/// credential gateway).
pub trait Resident {
    /// After each round of reaping, with every other child that ended and its status: start it
    /// again if it was among them (or is still down).
    fn tend(&mut self, exited: &[(Pid, i32)], signals: &Signals);
}

/// Supervises the agent until it exits, then sweeps the remaining processes and returns the
/// agent's status: its exit code, or 128+n when signal n ended it.
pub fn run(
    child: Pid,
    signals: &Signals,
    opts: &Options,
    residents: &mut [&mut dyn Resident],
) -> i32 {
    let _ = signals.block_again();
    release_startup_code();
    let status = loop {
        let reaped = reap_all(child);
        if let Some(status) = reaped.main_status {
            break status;
        }
        for resident in residents.iter_mut() {
            resident.tend(&reaped.others, signals);
        }
        if reaped.none_left {
            // Only possible if someone else reaped the agent: nothing is left to supervise.
            log::error!("the agent (pid {child}) vanished without an exit status");
            break crate::error::exit::INTERNAL;
        }
        match signals.wait(IDLE_WAKE) {
            None | Some(libc::SIGCHLD) => {}
            Some(signal) => forward(signal, child, opts.signal_group),
        }
    };
    log::debug!("the agent exited with status {status}");
    sweep(signals, opts.grace);
    status
}

/// Gives back the resident pages of cordon's own code and constants. By the time it supervises,
/// most of what it ran (command line, fence, resolver) never runs again, yet those pages would
/// stay counted in PID 1's RSS (1.5 MiB instead of 0.5). madvise(MADV_DONTNEED) drops them from
/// our page tables; the few pages the loop needs come back from the page cache on first use.
/// Only read-only file mappings without private (modified) pages qualify: for those, dropping
/// loses nothing.
fn release_startup_code() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, end) in unmodified_code(&smaps) {
        // SAFETY: the range is a whole mapping of unmodified, file-backed code; dropping its
        // pages only means they are read from the page cache again when next executed.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The `(start, end)` of each read-only, private, file-backed mapping in /proc/self/smaps (code
/// and constants) whose pages are all clean file pages: no anonymous copies, as relocations
/// applied at start-up would leave.
fn unmodified_code(smaps: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-') {
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            current = match (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                (Ok(start), Ok(end)) if read_only_private(perms) && path.starts_with('/') => {
                    Some((start, end))
                }
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if fields.next() == Some("0") {
                    found.push(range);
                }
            }
        }
    }
    found
}

fn read_only_private(perms: &str) -> bool {
    matches!(perms.as_bytes(), [b'r', b'-', _, b'p'])
}

/// Sends `signal` to the agent, or to its process group with `--signal-group` (falling back to
/// the agent alone if it left its group). A stopped process cannot act on SIGTERM or SIGINT until
/// it runs again, so those are followed by SIGCONT to the same target (as systemd does; a
/// running process takes no action on it by default).
fn forward(signal: c_int, child: Pid, group: bool) {
    // SAFETY: plain system call.
    let send = |pid: i32, signal: c_int| Errno::result(unsafe { libc::kill(pid, signal) });
    log::debug!("forwarding signal {signal} to the agent");
    let target = if group && send(-child.as_raw(), signal) != Err(Errno::ESRCH) {
        -child.as_raw()
    } else {
        let _ = send(child.as_raw(), signal);
        child.as_raw()
    };
    if matches!(signal, libc::SIGTERM | libc::SIGINT) {
        let _ = send(target, libc::SIGCONT);
    }
}

/// The result of one round of reaping.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reaped {
    /// The main child's status, if it was among those reaped.
    main_status: Option<i32>,
    /// `waitpid` reported ECHILD: no child (and, as PID 1 or subreaper, no descendant) is left.
    none_left: bool,
    /// Every other process reaped, with its status.
    others: Vec<(Pid, i32)>,
}

/// Reaps every child that has exited, without blocking.
fn reap_all(main: Pid) -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        let mut raw = 0;
        // SAFETY: `raw` is a valid output location.
        match Errno::result(unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) }) {
            Ok(0) => return reaped,
            Ok(pid) if pid == main.as_raw() => reaped.main_status = exit_status(raw),
            Ok(pid) => {
                if let Some(status) = exit_status(raw) {
                    reaped.others.push((Pid::from_raw(pid), status));
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                reaped.none_left = true;
                return reaped;
            }
            Err(errno) => {
                log::error!("waitpid: {}", errno.desc());
                return reaped;
            }
        }
    }
}

/// Maps a raw wait status to a shell-style exit status (tini's convention).
fn exit_status(raw: c_int) -> Option<i32> {
    if libc::WIFEXITED(raw) {
        Some(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        Some(128 + libc::WTERMSIG(raw))
    } else {
        None
    }
}

/// Which processes the sweep may signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// PID 1 of a pid namespace: `kill(-1, …)` reaches every other process in it.
    Namespace,
    /// Not PID 1: only our own descendants. `kill(-1, …)` would reach everything this user
    /// may signal outside the sandbox, so it is never used here.
    Descendants,
}

impl Scope {
    fn current() -> Self {
        if std::process::id() == 1 {
            Scope::Namespace
        } else {
            Scope::Descendants
        }
    }

    /// Sends `signal` to every process in scope. Returns whether there was any.
    fn signal(self, signal: c_int) -> bool {
        match self {
            // SAFETY: plain system call.
            Scope::Namespace => {
                // SAFETY: plain system call.
                let rc = unsafe { libc::kill(-1, signal) };
                rc == 0
            }
            Scope::Descendants => {
                let pids = descendants(std::process::id() as i32, &process_table());
                for &pid in &pids {
                    // SAFETY: plain system call; a process that is already gone is fine.
                    unsafe { libc::kill(pid, signal) };
                }
                !pids.is_empty()
            }
        }
    }
}

/// After the agent exited: SIGTERM everything left, give it `grace` to exit (reaping as it
/// goes), then SIGKILL what remains and reap it.
fn sweep(signals: &Signals, grace: Duration) {
    let scope = Scope::current();
    if reap_all(Pid::from_raw(0)).none_left || !scope.signal(libc::SIGTERM) {
        return;
    }
    // Stopped processes cannot act on SIGTERM until they are continued (as systemd does).
    scope.signal(libc::SIGCONT);
    if reap_until_none_left(signals, Instant::now() + grace) {
        return;
    }
    log::warn!(
        "processes still running {:.1}s after the agent exited: killing them",
        grace.as_secs_f64()
    );
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline && scope.signal(libc::SIGKILL) {
        let round = (Instant::now() + Duration::from_millis(100)).min(deadline);
        if reap_until_none_left(signals, round) {
            return;
        }
    }
}

/// Reaps as children exit until none is left (true) or `deadline` passes (false).
fn reap_until_none_left(signals: &Signals, deadline: Instant) -> bool {
    loop {
        if reap_all(Pid::from_raw(0)).none_left {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // Any signal wakes us; SIGCHLD is the one that matters, others are dropped here.
        signals.wait(deadline - now);
    }
}

/// `(pid, parent pid)` for every process in /proc.
fn process_table() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        log::error!("cannot read /proc: the remaining processes cannot be found for the sweep");
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_from_stat(&stat)?))
        })
        .collect()
}

/// The parent pid from a /proc/PID/stat line. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted from the last `)`.
fn parent_from_stat(stat: &str) -> Option<i32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Every process below `root` in the `(pid, parent)` table, nearest first.
fn descendants(root: i32, table: &[(i32, i32)]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for &(pid, parent) in table {
        children.entry(parent).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if child != root && !found.contains(&child) {
                found.push(child);
                queue.push_back(child);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_exited(code: i32) -> c_int {
        (code & 0xff) << 8
    }

    #[test]
    fn exit_codes_pass_through() {
        for code in 0..=255 {
            assert_eq!(exit_status(raw_exited(code)), Some(code));
        }
    }

    #[test]
    fn death_by_signal_is_128_plus_n() {
        assert_eq!(exit_status(libc::SIGTERM), Some(143));
        assert_eq!(exit_status(libc::SIGKILL), Some(137));
        // Core dumped (0x80) does not change the status.
        assert_eq!(exit_status(libc::SIGSEGV | 0x80), Some(139));
        assert_eq!(exit_status(libc::SIGRTMAX()), Some(128 + libc::SIGRTMAX()));
    }

    #[test]
    fn stopped_and_continued_are_not_exits() {
        assert_eq!(exit_status(0x7f | (libc::SIGTSTP << 8)), None);
        assert_eq!(exit_status(0xffff), None);
    }

    #[test]
    fn parent_is_read_after_the_command_name() {
        assert_eq!(parent_from_stat("42 (sleep) S 7 42 42 0"), Some(7));
        assert_eq!(parent_from_stat("42 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(parent_from_stat("42 (x y) Z 1 0"), Some(1));
        assert_eq!(parent_from_stat("garbage"), None);
    }

    #[test]
    fn descendants_include_grandchildren_and_nothing_else() {
        let table = [
            (1, 0),
            (10, 1),
            (11, 10),
            (12, 11),
            (13, 10),
            (20, 1),
            (21, 20),
        ];
        assert_eq!(descendants(10, &table), [11, 13, 12]);
        assert_eq!(descendants(21, &table), [] as [i32; 0]);
        assert!(!descendants(1, &table).contains(&1));
    }

    #[test]
    fn only_clean_file_backed_code_is_released() {
        let smaps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fe:00 42   /usr/bin/cordon
Rss:                   4 kB
Anonymous:             0 kB
55d0c0001000-55d0c0100000 r-xp 00001000 fe:00 42   /usr/bin/cordon
Rss:                1188 kB
Anonymous:             0 kB
55d0c0100000-55d0c0101000 r-xp 00100000 fe:00 43   /usr/lib/textrel.so
Anonymous:             4 kB
55d0c0200000-55d0c0201000 rw-p 00200000 fe:00 42   /usr/bin/cordon
Anonymous:             4 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0    [vdso]
Anonymous:             0 kB
";
        assert_eq!(
            unmodified_code(smaps),
            [
                (0x55d0c0000000, 0x55d0c0001000),
                (0x55d0c0001000, 0x55d0c0100000)
            ]
        );
    }
}
