//! PID 1 duties: forward signals, reap every zombie, sweep the rest when the agent exits, and exit
//! with the agent's status.
//!
//! The loop is tini's: every catchable signal is blocked from the first line of the entrypoint on
//! and collected with `sigtimedwait`; after each wake-up `waitpid(-1, WNOHANG)` runs until nothing
//! is left to reap, so merged SIGCHLDs and orphans that reparented to us are never missed.

use std::collections::{HashMap, VecDeque};
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::cli::SandboxOpts;
use crate::error::{Error, Result};

/// How long the loop sleeps when nothing happens (it wakes on any signal anyway).
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How long SIGKILLed processes get to disappear before cordon exits regardless.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// A set of signals as the kernel sees it: bit n-1 stands for signal n. Masks and dispositions
/// go through the system calls directly because musl refuses signals 32-34, which it reserves:
/// its `sigfillset` leaves them out, its `sigaction` rejects them, and its posix_spawn restores
/// a mask without them (cordon's tools are therefore started by fork and exec, see
/// `apply::tool_command`). Their default action ends the process (the kernel spares PID 1, not
/// cordon under `--init`), so they are also ignored until the agent runs. musl unblocks 33 and
/// 34 in every thread, the main one included once a second thread has been started: one that
/// arrives during start-up can be dropped, never fatal; `run` blocks them again.
type Mask = u64;

/// Size of a kernel signal set, as the rt_sig* calls expect it.
const MASK_BYTES: libc::c_long = std::mem::size_of::<Mask>() as libc::c_long;

/// The signals musl reserves for itself.
const RESERVED: [c_int; 3] = [32, 33, 34];

fn bit(signal: c_int) -> Mask {
    1 << (signal - 1)
}

/// The kernel's `struct sigaction` on x86_64 (cordon's only target).
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: Mask,
}

/// Sets `signal` to SIG_IGN or SIG_DFL. Only a system call: safe between fork and exec.
fn set_disposition(signal: c_int, ignore: bool) -> nix::Result<()> {
    let action = KernelSigaction {
        handler: if ignore { libc::SIG_IGN } else { libc::SIG_DFL },
        ..KernelSigaction::default()
    };
    // SAFETY: a valid kernel sigaction of the size the call is told; no old one is requested.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            &action as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            MASK_BYTES,
        )
    };
    Errno::result(rc).map(drop)
}

/// Whether `signal` is ignored, without changing it.
fn is_ignored(signal: c_int) -> bool {
    let mut old = KernelSigaction::default();
    // SAFETY: a null new action only reads the old one into a valid struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            std::ptr::null::<KernelSigaction>(),
            &mut old as *mut KernelSigaction,
            MASK_BYTES,
        )
    };
    rc == 0 && old.handler == libc::SIG_IGN
}

/// The signal state cordon started with, and the set it now blocks.
pub struct Signals {
    blocked: Mask,
    original_mask: Mask,
    ignored_at_start: Mask,
}

impl Signals {
    /// Blocks every catchable signal, remembering the original mask and dispositions so the
    /// child can get them back. Called first, so a `docker stop` during start-up stays pending
    /// until the supervisor forwards it to the agent. The reserved signals are also ignored
    /// meanwhile (a blocked signal is still queued, ignored or not; see `Mask`).
    pub fn block_all() -> Result<Self> {
        let blocked = every_catchable();
        let original_mask =
            set_mask(blocked).map_err(|errno| Error::sys("blocking signals", errno))?;
        let mut ignored_at_start = catchable()
            .filter(|&signal| is_ignored(signal))
            .fold(0, |mask, signal| mask | bit(signal));
        // Rust's runtime set SIGPIPE to SIG_IGN before `main`: use what it was before that.
        ignored_at_start &= !bit(libc::SIGPIPE);
        if SIGPIPE_IGNORED_BEFORE_MAIN.load(Ordering::Relaxed) {
            ignored_at_start |= bit(libc::SIGPIPE);
        }
        for signal in RESERVED {
            set_disposition(signal, true).map_err(|errno| Error::sys("ignoring signals", errno))?;
        }
        Ok(Signals {
            blocked,
            original_mask,
            ignored_at_start,
        })
    }

    /// Gives the calling process back the signal state cordon started with: signals ignored at
    /// start are ignored again, all others take their default action, and the original mask is
    /// restored. Only system calls: safe between fork and exec.
    pub fn restore(&self) -> nix::Result<()> {
        for signal in catchable() {
            set_disposition(signal, self.ignored_at_start & bit(signal) != 0)?;
        }
        set_mask(self.original_mask).map(drop)
    }

    /// The first of SIGINT, SIGTERM, SIGHUP and SIGQUIT that is pending (sent, still blocked),
    /// if any; it stays pending.
    pub fn pending_stop(&self) -> Option<c_int> {
        let mut pending: Mask = 0;
        // SAFETY: the set is valid for MASK_BYTES bytes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigpending,
                &mut pending as *mut Mask,
                MASK_BYTES,
            )
        };
        if rc != 0 {
            return None;
        }
        [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]
            .into_iter()
            .find(|&signal| pending & bit(signal) != 0)
    }

    /// Waits up to `timeout` for one of the blocked signals.
    fn wait(&self, timeout: Duration) -> Option<c_int> {
        let timeout = libc::timespec {
            // At most a day: never overflows a 32- or 64-bit time_t.
            tv_sec: timeout.as_secs().min(86_400) as _,
            tv_nsec: timeout.subsec_nanos().into(),
        };
        // SAFETY: the mask and timespec are valid for the call; no siginfo is requested.
        let signal = unsafe {
            libc::syscall(
                libc::SYS_rt_sigtimedwait,
                &self.blocked as *const Mask,
                std::ptr::null_mut::<libc::siginfo_t>(),
                &timeout as *const libc::timespec,
                MASK_BYTES,
            )
        };
        (signal > 0).then_some(signal as c_int)
    }
}

fn every_catchable() -> Mask {
    catchable().fold(0, |mask, signal| mask | bit(signal))
}

/// Replaces the calling thread's signal mask; returns the previous one.
fn set_mask(mask: Mask) -> nix::Result<Mask> {
    let mut previous: Mask = 0;
    // SAFETY: both masks are valid for MASK_BYTES bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const Mask,
            &mut previous as *mut Mask,
            MASK_BYTES,
        )
    };
    Errno::result(rc).map(|_| previous)
}

/// Every signal a process can catch or block: 1..=64 without SIGKILL and SIGSTOP.
fn catchable() -> impl Iterator<Item = c_int> {
    (1..=64).filter(|&signal| signal != libc::SIGKILL && signal != libc::SIGSTOP)
}

/// Whether SIGPIPE was ignored when the process started. Rust's runtime replaces SIGPIPE's
/// disposition with SIG_IGN before `main`, so an ELF constructor (which runs earlier) records it.
static SIGPIPE_IGNORED_BEFORE_MAIN: AtomicBool = AtomicBool::new(false);

#[used]
#[link_section = ".init_array"]
static RECORD_SIGPIPE_BEFORE_MAIN: extern "C" fn() = record_sigpipe_before_main;

extern "C" fn record_sigpipe_before_main() {
    SIGPIPE_IGNORED_BEFORE_MAIN.store(is_ignored(libc::SIGPIPE), Ordering::Relaxed);
}

/// Supervises the agent until it exits, then sweeps the remaining processes and returns the
/// agent's status: its exit code, or 128+n when signal n ended it.
pub fn run(child: Pid, signals: &Signals, opts: &SandboxOpts) -> i32 {
    // musl unblocked 33 and 34 in this thread when cordon first started a thread (see `Mask`);
    // ignored and unblocked, they would be dropped instead of waited for.
    let _ = set_mask(signals.blocked);
    release_startup_code();
    let status = loop {
        let reaped = reap_all(child);
        if let Some(status) = reaped.main_status {
            break status;
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
            Ok(_) | Err(Errno::EINTR) => {}
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

    #[test]
    fn catchable_signals_exclude_kill_and_stop() {
        let all: Vec<_> = catchable().collect();
        assert!(!all.contains(&libc::SIGKILL) && !all.contains(&libc::SIGSTOP));
        assert!(all.contains(&libc::SIGTERM) && all.contains(&64));
        // Including the real-time signals the C library reserves.
        assert!([32, 33, 34].iter().all(|s| all.contains(s)));
        assert_eq!(all.len(), 62);
    }
}
