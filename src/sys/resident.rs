//! Processes PID 1 keeps beside the agent (the DNS gateway, the credential gateway): forked
//! with their own name, confined to their own uid before they read a byte the agent wrote,
//! and started again within a budget when they die.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::sys::caps::{self, Capability};
use crate::sys::signals::Signals;

/// Forks with this thread named `name`, so that the child has that name from its first
/// instruction; the parent gets its own name back.
pub fn fork_named(
    name: &str,
    fork: impl FnOnce() -> nix::Result<ForkResult>,
) -> nix::Result<ForkResult> {
    let mut own = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, own.as_mut_ptr(), 0, 0, 0) };
    let mut wanted = [0u8; 16];
    let len = name.len().min(15);
    wanted[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, wanted.as_ptr(), 0, 0, 0) };
    let forked = fork();
    if !matches!(forked, Ok(ForkResult::Child)) {
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_NAME, own.as_ptr(), 0, 0, 0) };
    }
    forked
}

/// Points stdin, stdout and stderr at /dev/null.
pub fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: duplicating an open descriptor onto the standard ones.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Who a resident becomes.
pub struct Confinement<'a> {
    pub uid: u32,
    /// The capabilities it keeps (permitted and effective); every other one goes.
    pub keep: &'a [Capability],
    /// Killed when PID 1 dies (not for a daemon, which outlives the command that started it).
    pub dies_with_parent: bool,
}

/// Confines the calling (forked) process: signals as they were, PID 1's descriptors but `keep`
/// closed, `confinement.uid` as uid and gid with no groups, no capabilities but
/// `confinement.keep`, empty ambient and bounding sets, no_new_privs, not dumpable (so neither
/// the agent nor anything of its uid can trace it or read its memory or environment).
pub fn confine(
    signals: &Signals,
    keep: &[i32],
    confinement: &Confinement,
) -> std::result::Result<(), String> {
    let fail = |what: &'static str| move |errno: Errno| format!("{what}: {}", errno.desc());
    let parent = nix::unistd::getppid();
    signals.restore().map_err(fail("restoring signals"))?;
    close_other_descriptors(keep);
    let kept = confinement
        .keep
        .iter()
        .fold(0u64, |bits, cap| bits | 1 << cap.index());
    let needed = [
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
        Capability::CAP_SETPCAP,
    ]
    .iter()
    .fold(kept, |bits, cap| bits | 1 << cap.index());
    raise_effective(needed).map_err(fail("raising capabilities"))?;
    caps::clear_ambient_set().map_err(fail("emptying the ambient set"))?;
    caps::clear_bounding_set().map_err(fail("emptying the bounding set"))?;
    let (uid, gid) = (
        Uid::from_raw(confinement.uid),
        Gid::from_raw(confinement.uid),
    );
    nix::unistd::setgroups(&[]).map_err(fail("clearing groups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(fail("setting the resident's gid"))?;
    // SAFETY: plain system call: the permitted set survives the change of uid.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
        .map_err(fail("keeping capabilities across setuid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(fail("setting the resident's uid"))?;
    let low = caps::CapData {
        effective: kept as u32,
        permitted: kept as u32,
        inheritable: 0,
    };
    let high = caps::CapData {
        effective: (kept >> 32) as u32,
        permitted: (kept >> 32) as u32,
        inheritable: 0,
    };
    caps::capset([low, high]).map_err(fail("dropping capabilities"))?;
    // SAFETY: plain system call.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })
        .map_err(fail("clearing keep-caps"))?;
    nix::sys::prctl::set_no_new_privs().map_err(fail("setting no_new_privs"))?;
    nix::sys::prctl::set_dumpable(false).map_err(fail("clearing dumpable"))?;
    if confinement.dies_with_parent {
        // After the change of uid, which clears the parent-death signal; a parent gone
        // meanwhile is seen in getppid.
        // SAFETY: plain system call with integer arguments.
        Errno::result(unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        })
        .map_err(fail("asking to die with PID 1"))?;
        if nix::unistd::getppid() != parent {
            return Err("PID 1 is gone".into());
        }
    }
    Ok(())
}

/// Makes every capability of `bits` that is permitted effective too.
fn raise_effective(bits: u64) -> nix::Result<()> {
    let [mut low, mut high] = caps::capget()?;
    low.effective |= low.permitted & bits as u32;
    high.effective |= high.permitted & (bits >> 32) as u32;
    caps::capset([low, high])
}

/// Closes every descriptor PID 1 had open but stdin, stdout, stderr and `keep`.
fn close_other_descriptors(keep: &[i32]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let open: Vec<i32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing a descriptor this process no longer uses (the directory's own
            // descriptor is already closed and fails harmlessly).
            unsafe { libc::close(fd) };
        }
    }
}

/// Starts within this window beyond which PID 1 waits before the next one.
const RESTART_BURST: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(10);

/// How often a resident may be started: `RESTART_BURST` times within `RESTART_WINDOW`, then
/// on a later round (the supervisor wakes at least once a second).
#[derive(Default)]
pub struct Restarts {
    starts: VecDeque<Instant>,
}

impl Restarts {
    /// Whether a start is allowed now; if so, it is counted.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        while self
            .starts
            .front()
            .is_some_and(|at| now.duration_since(*at) > RESTART_WINDOW)
        {
            self.starts.pop_front();
        }
        if self.starts.len() >= RESTART_BURST {
            return false;
        }
        self.starts.push_back(now);
        true
    }
}

/// Forks `run` as a child named `name` from its first instruction, which exits with what `run`
/// returns; the child's pid. Call while single-threaded (the child may allocate).
pub fn fork_child(name: &str, run: impl FnOnce() -> i32) -> nix::Result<Pid> {
    // SAFETY: the caller is single-threaded; the child never returns.
    match fork_named(name, || unsafe { nix::unistd::fork() })? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = run();
            // SAFETY: ending the child without unwinding into the caller's stack.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Forks `run` as a daemon of its own session, named `name` from its first instruction: a child
/// starts the session and forks it, then exits, leaving it to init. Returns its pid. Call while
/// single-threaded; `run` runs in the daemon and gives its exit status.
pub fn fork_daemon(name: &str, run: impl FnOnce() -> i32) -> nix::Result<Pid> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the caller is single-threaded; the child never returns.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => {
            drop(write);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut bytes = [0u8; 4];
            match nix::unistd::read(&read, &mut bytes)? {
                4 => Ok(Pid::from_raw(i32::from_ne_bytes(bytes))),
                _ => Err(Errno::EIO),
            }
        }
        ForkResult::Child => {
            drop(read);
            let _ = nix::unistd::setsid();
            // SAFETY: as above; the session leader only forks and reports.
            let code = match fork_named(name, || unsafe { nix::unistd::fork() }) {
                Ok(ForkResult::Parent { child }) => {
                    let _ = nix::unistd::write(&write, &child.as_raw().to_ne_bytes());
                    0
                }
                Ok(ForkResult::Child) => {
                    drop(write);
                    run()
                }
                Err(_) => 1,
            };
            // SAFETY: ending this process without unwinding into the caller's stack.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Notes a daemon's pid in `pid_file` (root-owned, 0644) for the next run and `cordon check`.
pub fn note_daemon(pid_file: &str, pid: Pid) -> std::io::Result<()> {
    crate::sys::run_dir::replace(std::path::Path::new(pid_file), 0o644, &format!("{pid}\n"))
}

/// The daemon `pid_file` names, if it still runs as `uid` (else the pid is stale or reused).
pub fn running_daemon(pid_file: &str, uid: u32) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .any(|line| line.starts_with(&format!("Uid:\t{uid}\t")))
        .then(|| Pid::from_raw(pid))
}

/// Stops the daemon an earlier run left (see `running_daemon`) and waits until it is gone, so
/// that this run's can take its port. Returns its pid.
pub fn replace_daemon(pid_file: &str, uid: u32) -> Option<Pid> {
    let pid = running_daemon(pid_file, uid)?;
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid, Duration::from_secs(2));
    Some(pid)
}

/// Waits until `pid` (not a child of ours) is gone, at most `bound`.
pub fn wait_gone(pid: Pid, bound: Duration) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline && std::path::Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie until its parent reaps it: gone enough once it is one.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `bind()` again while the address is in use, until `deadline`.
pub fn retry_in_use<T>(
    deadline: Instant,
    bind: impl Fn() -> std::io::Result<T>,
) -> std::io::Result<T> {
    loop {
        match bind() {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            outcome => return outcome,
        }
    }
}
