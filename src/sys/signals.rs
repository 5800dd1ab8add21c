//! The process's signal state by raw system calls: every catchable signal blocked from the first
//! line of `main`, the original mask and dispositions kept for the agent, pending stops, and the
//! wait PID 1's loop sleeps in.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;

use crate::error::{Error, Result};

/// A set of signals as the kernel sees it: bit n-1 stands for signal n. Masks and dispositions
/// go through the system calls directly because musl refuses signals 32-34, which it reserves:
/// its `sigfillset` leaves them out, its `sigaction` rejects them, and its posix_spawn restores
/// a mask without them (cordon's tools are therefore started by fork and exec, see
/// `sys::tool`). Their default action ends the process (the kernel spares PID 1, not
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

/// The first of SIGINT, SIGTERM, SIGHUP and SIGQUIT in `stops` that is pending for this process
/// (every thread blocks them, so one sent stays pending), if any; it stays pending.
fn pending_stop(stops: Mask) -> Option<c_int> {
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
    STOPS
        .into_iter()
        .find(|&signal| pending & stops & bit(signal) != 0)
}

/// The signals that stop cordon's set-up.
const STOPS: [c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn every_stop() -> Mask {
    STOPS.iter().fold(0, |mask, &signal| mask | bit(signal))
}

/// The stop signals that now end set-up (`Signals::end_set_up_on_stop`); 0 for none.
static SET_UP_STOPS: AtomicU64 = AtomicU64::new(0);

/// Set-up is over (or failing, and its lockdown must run to the end): from here a stop is the
/// agent's, or ends the process after the lockdown.
pub fn set_up_over() {
    SET_UP_STOPS.store(0, Ordering::Relaxed);
}

/// Runs `work` (a lockdown inside set-up) to its end whatever stop is pending, then lets stops
/// end set-up again.
pub fn to_the_end<T>(work: impl FnOnce() -> T) -> T {
    let stops = SET_UP_STOPS.swap(0, Ordering::Relaxed);
    let result = work();
    SET_UP_STOPS.store(stops, Ordering::Relaxed);
    result
}

/// The stop signal pending while set-up ends on one, if any.
pub fn stop_during_set_up() -> Option<c_int> {
    let stops = SET_UP_STOPS.load(Ordering::Relaxed);
    if stops == 0 {
        return None;
    }
    pending_stop(stops)
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

    /// From now until `set_up_over`, the waits of set-up that can last (name resolution, a
    /// firewall tool held up by a lock) end early when a stop signal is pending
    /// (`stop_during_set_up`): the caller then locks egress down and exits 128+n. A stop that
    /// was ignored when cordon started (SIGHUP under nohup) does not count.
    pub fn end_set_up_on_stop(&self) {
        SET_UP_STOPS.store(every_stop() & !self.ignored_at_start, Ordering::Relaxed);
    }

    /// The first of SIGINT, SIGTERM, SIGHUP and SIGQUIT that is pending (sent, still blocked),
    /// if any; it stays pending.
    pub fn pending_stop(&self) -> Option<c_int> {
        pending_stop(every_stop())
    }

    /// Blocks every catchable signal again. musl unblocked 33 and 34 in this thread when cordon
    /// first started a thread (see `Mask`); ignored and unblocked, they would be dropped instead
    /// of waited for.
    pub fn block_again(&self) -> nix::Result<()> {
        set_mask(self.blocked).map(drop)
    }

    /// Waits up to `timeout` for one of the blocked signals.
    pub fn wait(&self, timeout: Duration) -> Option<c_int> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
