//! Start the agent: fork, and in the child drop every privilege in a fixed order, then exec.
//!
//! The order lives in one pure function, [`drop_and_exec`], written against the [`Syscalls`]
//! seam: [`Kernel`] makes the real calls, the tests' recorder checks the order without root.
//!
//! Order in the child, and why:
//! 1. `setpgid(0, 0)`, then `tcsetpgrp` on stdin if it is a terminal (tini's way, so job control
//!    and Ctrl-C reach the agent). SIGTTOU is still blocked here, so taking the terminal from
//!    the background cannot stop us. No terminal is not an error.
//! 2. Signal dispositions and mask as cordon found them (everything is blocked until now).
//! 3. Descriptors 3 and up marked close-on-exec (`close_range`, or /proc/self/fd): the agent
//!    starts with 0-2 only, while cordon's own report pipe keeps working until the exec.
//! 4. `setgroups`, then the bounding, inheritable and ambient capability sets emptied.
//! 5. Securebits set and locked (NOROOT, NO_CAP_AMBIENT_RAISE, KEEP_CAPS off, all locked;
//!    NO_SETUID_FIXUP is left off so the uid change below still clears the capability sets).
//!    This comes before the uid change, not after it as issue 3 lists: setting securebits
//!    needs CAP_SETPCAP, which `setresuid` takes away.
//! 6. `setresgid`, then `setresuid` (real, effective and saved ids all change: no way back).
//! 7. `no_new_privs` (fatal if refused), then a check that every capability set is empty.
//! 8. Wait until the supervisor has dropped its own privileges (so the agent never runs next to
//!    a privileged PID 1), then exec with a PATH search over the agent's PATH. Exec failures go
//!    to the parent through a close-on-exec pipe (tini's 126/127).
//!
//! Nothing in the child allocates or takes a lock: every string and pointer array is built
//! before `fork`.

use std::ffi::{c_char, c_int, CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::error::{exit, Error, Result};
use crate::supervise::Signals;
use crate::user::Account;

/// What runs when no command is given.
pub const DEFAULT_COMMAND: [&str; 2] = ["claude", "--dangerously-skip-permissions"];

/// The PATH searched when the agent's environment has none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Securebits for the agent: SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED
/// | SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED.
/// NO_SETUID_FIXUP and KEEP_CAPS themselves stay off, and locked off.
const AGENT_SECUREBITS: libc::c_ulong = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80;

/// Capability numbers are below 64 (the kernel's cap_last_cap is about 40 today).
const CAP_LIMIT: c_int = 64;
/// CAP_KILL, the one capability the supervisor keeps (to signal the agent's processes).
const CAP_KILL: u32 = 5;

/// Whether the drops run in a forked child (supervised) or in cordon itself (`--exec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Spawn,
    Exec,
}

/// The identity the agent gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// One step of the child's sequence, for failure reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    ProcessGroup,
    Terminal,
    Signals,
    Descriptors,
    Groups,
    BoundingSet,
    InheritableSet,
    AmbientSet,
    Securebits,
    Gid,
    Uid,
    NoNewPrivs,
    CapabilitiesLeft,
    Supervisor,
    Exec,
}

impl Stage {
    const ALL: [Stage; 15] = [
        Stage::ProcessGroup,
        Stage::Terminal,
        Stage::Signals,
        Stage::Descriptors,
        Stage::Groups,
        Stage::BoundingSet,
        Stage::InheritableSet,
        Stage::AmbientSet,
        Stage::Securebits,
        Stage::Gid,
        Stage::Uid,
        Stage::NoNewPrivs,
        Stage::CapabilitiesLeft,
        Stage::Supervisor,
        Stage::Exec,
    ];

    fn from_u8(value: u8) -> Option<Stage> {
        Stage::ALL.get(usize::from(value)).copied()
    }

    /// What failed, and the likely fix.
    fn describe(self) -> &'static str {
        match self {
            Stage::ProcessGroup => "putting the agent in its own process group",
            Stage::Terminal => "giving the agent the terminal (tcsetpgrp)",
            Stage::Signals => "restoring the agent's signal mask and dispositions",
            Stage::Descriptors => "closing inherited descriptors (close_range and /proc/self/fd)",
            Stage::Groups => "setting the agent's groups (cordon must start as root)",
            Stage::BoundingSet => {
                "emptying the capability bounding set (cordon needs CAP_SETPCAP: do not drop it)"
            }
            Stage::InheritableSet => "emptying the inheritable capability set",
            Stage::AmbientSet => "emptying the ambient capability set",
            Stage::Securebits => {
                "locking securebits (cordon needs CAP_SETPCAP: do not drop it with --cap-drop)"
            }
            Stage::Gid => "changing to the agent's gid (cordon must start as root)",
            Stage::Uid => "changing to the agent's uid (cordon must start as root)",
            Stage::NoNewPrivs => "setting no_new_privs (the kernel refused it)",
            Stage::CapabilitiesLeft => {
                "checking the agent's capabilities: a set was not empty after the drop"
            }
            Stage::Supervisor => "waiting for the supervisor (it exited during start-up)",
            Stage::Exec => "starting the agent",
        }
    }
}

/// Why the child stopped before (or at) exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub errno: Errno,
}

impl Failure {
    const WIRE_LEN: usize = 5;

    fn encode(self) -> [u8; Self::WIRE_LEN] {
        let [a, b, c, d] = (self.errno as i32).to_le_bytes();
        [self.stage as u8, a, b, c, d]
    }

    fn decode(bytes: [u8; Self::WIRE_LEN]) -> Option<Failure> {
        let [stage, a, b, c, d] = bytes;
        Some(Failure {
            stage: Stage::from_u8(stage)?,
            errno: Errno::from_raw(i32::from_le_bytes([a, b, c, d])),
        })
    }

    /// The status the child exits with (the parent reports the failure itself).
    fn exit_code(self) -> c_int {
        match (self.stage, self.errno) {
            (Stage::Exec, Errno::ENOENT) => exit::NOT_FOUND,
            (Stage::Exec, _) => exit::CANNOT_EXECUTE,
            _ => exit::INTERNAL,
        }
    }

    fn into_error(self, command: &str) -> Error {
        match self.stage {
            Stage::Exec => Error::Exec {
                command: command.to_string(),
                errno: self.errno,
            },
            stage => Error::sys(stage.describe(), self.errno),
        }
    }
}

/// The privileged operations of the agent's process, called by [`drop_and_exec`] in order.
pub trait Syscalls {
    fn set_process_group(&mut self) -> nix::Result<()>;
    fn take_terminal(&mut self) -> nix::Result<()>;
    fn restore_signals(&mut self) -> nix::Result<()>;
    fn close_descriptors(&mut self) -> nix::Result<()>;
    fn set_groups(&mut self, groups: &[Gid]) -> nix::Result<()>;
    fn clear_bounding_set(&mut self) -> nix::Result<()>;
    fn clear_inheritable_set(&mut self) -> nix::Result<()>;
    fn clear_ambient_set(&mut self) -> nix::Result<()>;
    fn lock_securebits(&mut self) -> nix::Result<()>;
    fn set_gid(&mut self, gid: Gid) -> nix::Result<()>;
    fn set_uid(&mut self, uid: Uid) -> nix::Result<()>;
    fn set_no_new_privs(&mut self) -> nix::Result<()>;
    fn capabilities_empty(&mut self) -> nix::Result<bool>;
    fn wait_for_supervisor(&mut self) -> nix::Result<()>;
    /// Replaces the process image; returns only on failure.
    fn execve(&mut self, path: &CStr) -> Errno;
}

/// Drops every privilege in the documented order and execs the first usable candidate.
/// Returns only on failure.
pub fn drop_and_exec(
    sys: &mut impl Syscalls,
    who: &Credentials,
    candidates: &[CString],
    mode: Mode,
) -> Failure {
    match drop_privileges(sys, who, mode) {
        Err(failure) => failure,
        Ok(()) => Failure {
            stage: Stage::Exec,
            errno: search_and_exec(sys, candidates),
        },
    }
}

fn drop_privileges(sys: &mut impl Syscalls, who: &Credentials, mode: Mode) -> Result<(), Failure> {
    let at = |stage| move |errno| Failure { stage, errno };
    if mode == Mode::Spawn {
        sys.set_process_group().map_err(at(Stage::ProcessGroup))?;
        match sys.take_terminal() {
            // No terminal, or stdin is not our controlling terminal, or stdin is closed.
            Ok(()) | Err(Errno::ENOTTY | Errno::ENXIO | Errno::EBADF) => {}
            Err(errno) => return Err(at(Stage::Terminal)(errno)),
        }
    }
    sys.restore_signals().map_err(at(Stage::Signals))?;
    sys.close_descriptors().map_err(at(Stage::Descriptors))?;
    sys.set_groups(&who.groups).map_err(at(Stage::Groups))?;
    sys.clear_bounding_set().map_err(at(Stage::BoundingSet))?;
    sys.clear_inheritable_set()
        .map_err(at(Stage::InheritableSet))?;
    sys.clear_ambient_set().map_err(at(Stage::AmbientSet))?;
    sys.lock_securebits().map_err(at(Stage::Securebits))?;
    sys.set_gid(who.gid).map_err(at(Stage::Gid))?;
    sys.set_uid(who.uid).map_err(at(Stage::Uid))?;
    sys.set_no_new_privs().map_err(at(Stage::NoNewPrivs))?;
    match sys.capabilities_empty() {
        Ok(true) => {}
        Ok(false) => return Err(at(Stage::CapabilitiesLeft)(Errno::EPERM)),
        Err(errno) => return Err(at(Stage::CapabilitiesLeft)(errno)),
    }
    if mode == Mode::Spawn {
        sys.wait_for_supervisor().map_err(at(Stage::Supervisor))?;
    }
    Ok(())
}

/// execvp's search: the first candidate that execs wins; EACCES on any candidate makes the
/// final error EACCES (126) rather than ENOENT (127); any other error stops the search.
fn search_and_exec(sys: &mut impl Syscalls, candidates: &[CString]) -> Errno {
    let mut result = Errno::ENOENT;
    for path in candidates {
        match sys.execve(path) {
            Errno::EACCES => result = Errno::EACCES,
            Errno::ENOENT | Errno::ENOTDIR => {}
            other => return other,
        }
    }
    result
}

/// Where to look for `program`: itself if it names a path, else each PATH entry in turn (an
/// empty entry is the working directory, as in execvp).
fn search_path(program: &OsStr, path: &OsStr) -> Vec<PathBuf> {
    if program.is_empty() {
        return Vec::new();
    }
    if program.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(program)];
    }
    path.as_bytes()
        .split(|&byte| byte == b':')
        .map(|dir| {
            if dir.is_empty() {
                PathBuf::from(program)
            } else {
                PathBuf::from(OsStr::from_bytes(dir)).join(program)
            }
        })
        .collect()
}

/// The agent's command, environment and identity, with every C string built ahead of `fork`.
pub struct Launch {
    program: String,
    user: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    candidates: Vec<CString>,
    who: Credentials,
}

impl Launch {
    pub fn new(
        command: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        account: Account,
    ) -> Result<Self> {
        if account.uid == 0 {
            return Err(Error::BadUser(format!(
                "refusing to run the agent as root ({} has uid 0): pass --user with an \
                 unprivileged user",
                account.name
            )));
        }
        let command = if command.is_empty() {
            DEFAULT_COMMAND.iter().map(OsString::from).collect()
        } else {
            command
        };
        let path = env
            .iter()
            .find(|(name, _)| name == "PATH")
            .map_or(OsStr::new(DEFAULT_PATH), |(_, value)| value.as_os_str());
        let candidates = search_path(&command[0], path)
            .into_iter()
            .map(|candidate| c_string(candidate.into_os_string(), "the command's path"))
            .collect::<Result<_>>()?;
        let program = command[0].to_string_lossy().into_owned();
        let argv = command
            .into_iter()
            .map(|arg| c_string(arg, "an argument of the command"))
            .collect::<Result<_>>()?;
        let envp = env
            .into_iter()
            .map(|(mut name, value)| {
                name.push("=");
                name.push(value);
                c_string(name, "an environment variable")
            })
            .collect::<Result<_>>()?;
        Ok(Launch {
            program,
            user: account.name,
            argv,
            envp,
            candidates,
            who: Credentials {
                uid: Uid::from_raw(account.uid),
                gid: Gid::from_raw(account.gid),
                groups: account.groups.into_iter().map(Gid::from_raw).collect(),
            },
        })
    }

    /// Forks the agent. Before forking, cordon becomes the child subreaper unless it is PID 1.
    /// Before the child may exec, the parent drops to CAP_KILL alone and moves to `/`. Returns
    /// once the agent runs, or its exec failure (126/127) or drop failure.
    pub fn spawn(&self, signals: &Signals) -> Result<Pid> {
        if std::process::id() != 1 {
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(|errno| Error::sys("becoming the child subreaper", errno))?;
        }
        let (go_read, go_write) = cloexec_pipe()?;
        let (report_read, report_write) = cloexec_pipe()?;
        let argv = null_terminated(&self.argv);
        let envp = null_terminated(&self.envp);
        let mut kernel = Kernel {
            signals,
            argv: &argv,
            envp: &envp,
            go: Some(go_read.as_raw_fd()),
        };
        log::info!(
            "starting {} as {} (uid {}, gid {})",
            self.program,
            self.user,
            self.who.uid,
            self.who.gid
        );
        // SAFETY: cordon is single-threaded here, and the child only makes system calls on
        // memory prepared above until it execs or exits.
        match unsafe { nix::unistd::fork() }.map_err(|errno| Error::sys("fork", errno))? {
            ForkResult::Child => {
                // SAFETY: closing the parent's pipe ends in the child; plain system calls.
                unsafe {
                    libc::close(go_write.as_raw_fd());
                    libc::close(report_read.as_raw_fd());
                }
                let failure = drop_and_exec(&mut kernel, &self.who, &self.candidates, Mode::Spawn);
                let bytes = failure.encode();
                // SAFETY: writing a stack buffer and exiting without running destructors.
                unsafe {
                    libc::write(report_write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(failure.exit_code())
                }
            }
            ForkResult::Parent { child } => {
                drop((go_read, report_write));
                self.release(child, go_write, report_read)
            }
        }
    }

    /// The parent's half of `spawn`: confine itself, let the child exec, and learn how it went.
    fn release(&self, child: Pid, go: OwnedFd, report: OwnedFd) -> Result<Pid> {
        // Also done by the child; doing it here too means --signal-group never races it.
        let _ = nix::unistd::setpgid(child, child);
        let confined = confine_supervisor()
            .and_then(|()| nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e)));
        if let Err(error) = confined {
            let _ = kill(child, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            return Err(error);
        }
        // If the child already died (say, Ctrl-C before exec), the write fails with EPIPE and the
        // supervisor reports how it died, like any other exit.
        let _ = nix::unistd::write(&go, b"1");
        drop(go);
        match read_report(&report)? {
            None => Ok(child),
            Some(failure) => {
                let _ = nix::sys::wait::waitpid(child, None);
                Err(failure.into_error(&self.program))
            }
        }
    }

    /// `--exec`: become the agent (no supervisor). The same drops as the child of `spawn`, minus
    /// the process group and terminal (cordon keeps its place) and the wait for a supervisor.
    /// cordon is then not PID 1's supervisor: if it was PID 1, the agent becomes PID 1 and
    /// nothing else reaps zombies or forwards signals. Returns only on failure.
    pub fn exec(&self, signals: &Signals) -> Result<i32> {
        if std::process::id() == 1 {
            log::warn!("--exec as PID 1: the agent becomes PID 1 and nothing reaps its zombies");
        }
        log::info!(
            "executing {} as {} (uid {}, gid {})",
            self.program,
            self.user,
            self.who.uid,
            self.who.gid
        );
        let argv = null_terminated(&self.argv);
        let envp = null_terminated(&self.envp);
        let mut kernel = Kernel {
            signals,
            argv: &argv,
            envp: &envp,
            go: None,
        };
        let failure = drop_and_exec(&mut kernel, &self.who, &self.candidates, Mode::Exec);
        Err(failure.into_error(&self.program))
    }
}

fn c_string(value: OsString, what: &str) -> Result<CString> {
    CString::new(value.into_vec())
        .map_err(|_| Error::Usage(format!("{what} contains a NUL byte: remove it")))
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| Error::sys("creating a pipe", errno))
}

/// Reads the child's failure report: nothing (EOF at exec) means the agent runs.
fn read_report(report: &OwnedFd) -> Result<Option<Failure>> {
    let mut bytes = [0u8; Failure::WIRE_LEN];
    let mut filled = 0;
    while filled < bytes.len() {
        match nix::unistd::read(report, &mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(Error::sys("reading the agent's start-up report", errno)),
        }
    }
    match filled {
        0 => Ok(None),
        Failure::WIRE_LEN => Ok(Failure::decode(bytes).or(Some(Failure {
            stage: Stage::Exec,
            errno: Errno::EIO,
        }))),
        _ => Err(Error::sys(
            "reading the agent's start-up report",
            Errno::EIO,
        )),
    }
}

/// The supervisor's own drop, made before the agent may exec: uid 0 stays (so the agent, under
/// another uid, can neither ptrace nor signal it), but only CAP_KILL remains, in permitted and
/// effective; the bounding, inheritable and ambient sets are empty; no_new_privs is set; and
/// PR_SET_DUMPABLE 0 makes /proc/1/{environ,mem,...} root-only and forbids ptrace even by root
/// without CAP_SYS_PTRACE.
fn confine_supervisor() -> Result<()> {
    let fail = |what: &'static str| move |errno| Error::sys(what, errno);
    clear_bounding_set().map_err(fail("supervisor: emptying the bounding set"))?;
    clear_ambient_set().map_err(fail("supervisor: emptying the ambient set"))?;
    let kill_only = CapData {
        effective: 1 << CAP_KILL,
        permitted: 1 << CAP_KILL,
        inheritable: 0,
    };
    capset([kill_only, CapData::default()]).map_err(fail("supervisor: dropping to CAP_KILL"))?;
    nix::sys::prctl::set_no_new_privs().map_err(fail("supervisor: setting no_new_privs"))?;
    nix::sys::prctl::set_dumpable(false).map_err(fail("supervisor: clearing dumpable"))
}

/// The real system calls. Every method is async-signal-safe: no allocation, no locks.
struct Kernel<'a> {
    signals: &'a Signals,
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
    /// The read end of the supervisor's go-ahead pipe (none with `--exec`).
    go: Option<RawFd>,
}

impl Syscalls for Kernel<'_> {
    fn set_process_group(&mut self) -> nix::Result<()> {
        // SAFETY: plain system call.
        Errno::result(unsafe { libc::setpgid(0, 0) }).map(drop)
    }

    fn take_terminal(&mut self) -> nix::Result<()> {
        // SAFETY: plain system calls.
        Errno::result(unsafe { libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpgrp()) }).map(drop)
    }

    fn restore_signals(&mut self) -> nix::Result<()> {
        self.signals.restore()
    }

    fn close_descriptors(&mut self) -> nix::Result<()> {
        mark_cloexec_from(3)
    }

    fn set_groups(&mut self, groups: &[Gid]) -> nix::Result<()> {
        nix::unistd::setgroups(groups)
    }

    fn clear_bounding_set(&mut self) -> nix::Result<()> {
        clear_bounding_set()
    }

    fn clear_inheritable_set(&mut self) -> nix::Result<()> {
        let [mut low, mut high] = capget()?;
        low.inheritable = 0;
        high.inheritable = 0;
        capset([low, high])
    }

    fn clear_ambient_set(&mut self) -> nix::Result<()> {
        clear_ambient_set()
    }

    fn lock_securebits(&mut self) -> nix::Result<()> {
        prctl(libc::PR_SET_SECUREBITS, AGENT_SECUREBITS).map(drop)
    }

    fn set_gid(&mut self, gid: Gid) -> nix::Result<()> {
        nix::unistd::setresgid(gid, gid, gid)
    }

    fn set_uid(&mut self, uid: Uid) -> nix::Result<()> {
        nix::unistd::setresuid(uid, uid, uid)
    }

    fn set_no_new_privs(&mut self) -> nix::Result<()> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn capabilities_empty(&mut self) -> nix::Result<bool> {
        let sets = capget()?;
        if sets
            .iter()
            .any(|set| set.effective | set.permitted | set.inheritable != 0)
        {
            return Ok(false);
        }
        for cap in 0..CAP_LIMIT {
            match prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) {
                Ok(0) => {}
                Ok(_) => return Ok(false),
                Err(Errno::EINVAL) => break,
                Err(errno) => return Err(errno),
            }
            // SAFETY: plain system call.
            let ambient = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
                    cap as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if Errno::result(ambient)? != 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn wait_for_supervisor(&mut self) -> nix::Result<()> {
        let Some(go) = self.go else { return Ok(()) };
        let mut byte = 0u8;
        loop {
            // SAFETY: reading one byte into a stack variable.
            match Errno::result(unsafe { libc::read(go, (&mut byte as *mut u8).cast(), 1) }) {
                Ok(1) => return Ok(()),
                Ok(_) => return Err(Errno::EPIPE),
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(errno),
            }
        }
    }

    fn execve(&mut self, path: &CStr) -> Errno {
        // SAFETY: argv and envp are NULL-terminated arrays of pointers to live C strings.
        unsafe { libc::execve(path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        Errno::last()
    }
}

fn prctl(option: c_int, arg: libc::c_ulong) -> nix::Result<c_int> {
    // SAFETY: plain system call with integer arguments.
    Errno::result(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
}

fn clear_bounding_set() -> nix::Result<()> {
    for cap in 0..CAP_LIMIT {
        match prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) {
            Ok(_) => {}
            // Past the kernel's last capability.
            Err(Errno::EINVAL) => break,
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

fn clear_ambient_set() -> nix::Result<()> {
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .map(drop)
}

/// `struct __user_cap_data_struct`: one of the two 32-bit halves of the capability sets.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> nix::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    Errno::result(rc).map(|_| data)
}

fn capset(data: [CapData; 2]) -> nix::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and a two-element data array, as version 3 requires.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    Errno::result(rc).map(drop)
}

/// Marks every descriptor from `lowest` up close-on-exec.
fn mark_cloexec_from(lowest: c_int) -> nix::Result<()> {
    // SAFETY: plain system call with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            lowest as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    match Errno::result(rc) {
        Ok(_) => Ok(()),
        // Before Linux 5.11 (no CLOSE_RANGE_CLOEXEC) or 5.9 (no close_range).
        Err(Errno::ENOSYS | Errno::EINVAL) => mark_cloexec_listed(lowest),
        Err(errno) => Err(errno),
    }
}

/// The fallback: list /proc/self/fd with getdents64 into a stack buffer (no allocation).
fn mark_cloexec_listed(lowest: c_int) -> nix::Result<()> {
    // SAFETY: opening a constant path.
    let dir = Errno::result(unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    let mut buffer = [0u8; 2048];
    let result = loop {
        // SAFETY: the buffer is valid for its length.
        let read =
            unsafe { libc::syscall(libc::SYS_getdents64, dir, buffer.as_mut_ptr(), buffer.len()) };
        let len = match Errno::result(read) {
            Ok(0) => break Ok(()),
            Ok(len) => len as usize,
            Err(errno) => break Err(errno),
        };
        for fd in dirent_fds(&buffer[..len]) {
            if fd >= lowest && fd != dir {
                // SAFETY: plain system call; FD_CLOEXEC is the only descriptor flag.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(dir) };
    result
}

/// The numeric names in a buffer of `struct linux_dirent64` records.
fn dirent_fds(buffer: &[u8]) -> impl Iterator<Item = c_int> + '_ {
    const NAME_OFFSET: usize = 19; // d_ino (8), d_off (8), d_reclen (2), d_type (1)
    let mut offset = 0;
    std::iter::from_fn(move || {
        while offset + NAME_OFFSET <= buffer.len() {
            let record = &buffer[offset..];
            let reclen = usize::from(u16::from_ne_bytes([record[16], record[17]]));
            if reclen == 0 || reclen > record.len() {
                return None;
            }
            offset += reclen;
            let name = &record[NAME_OFFSET..reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(fd) = parse_fd(name) {
                return Some(fd);
            }
        }
        None
    })
}

fn parse_fd(name: &[u8]) -> Option<c_int> {
    if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    name.iter().try_fold(0 as c_int, |fd, &digit| {
        fd.checked_mul(10)?.checked_add(c_int::from(digit - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the order of calls; fails the named step with the given errno.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail: Option<(&'static str, Errno)>,
        caps_left: bool,
        /// execve results per path; unlisted paths give ENOENT, "ok" paths UnknownErrno
        /// (standing in for a successful exec, which would not return).
        exec_results: Vec<(&'static str, Errno)>,
    }

    impl Recorder {
        fn step(&mut self, name: &str) -> nix::Result<()> {
            self.calls.push(name.to_string());
            match self.fail {
                Some((failing, errno)) if failing == name => Err(errno),
                _ => Ok(()),
            }
        }
    }

    impl Syscalls for Recorder {
        fn set_process_group(&mut self) -> nix::Result<()> {
            self.step("setpgid")
        }
        fn take_terminal(&mut self) -> nix::Result<()> {
            self.step("tcsetpgrp")
        }
        fn restore_signals(&mut self) -> nix::Result<()> {
            self.step("signals")
        }
        fn close_descriptors(&mut self) -> nix::Result<()> {
            self.step("close_range")
        }
        fn set_groups(&mut self, groups: &[Gid]) -> nix::Result<()> {
            let raw: Vec<u32> = groups.iter().map(|g| g.as_raw()).collect();
            self.step(&format!("setgroups {raw:?}"))
        }
        fn clear_bounding_set(&mut self) -> nix::Result<()> {
            self.step("bounding")
        }
        fn clear_inheritable_set(&mut self) -> nix::Result<()> {
            self.step("inheritable")
        }
        fn clear_ambient_set(&mut self) -> nix::Result<()> {
            self.step("ambient")
        }
        fn lock_securebits(&mut self) -> nix::Result<()> {
            self.step("securebits")
        }
        fn set_gid(&mut self, gid: Gid) -> nix::Result<()> {
            self.step(&format!("setresgid {gid}"))
        }
        fn set_uid(&mut self, uid: Uid) -> nix::Result<()> {
            self.step(&format!("setresuid {uid}"))
        }
        fn set_no_new_privs(&mut self) -> nix::Result<()> {
            self.step("no_new_privs")
        }
        fn capabilities_empty(&mut self) -> nix::Result<bool> {
            self.step("verify")?;
            Ok(!self.caps_left)
        }
        fn wait_for_supervisor(&mut self) -> nix::Result<()> {
            self.step("wait")
        }
        fn execve(&mut self, path: &CStr) -> Errno {
            let path = path.to_str().unwrap();
            self.calls.push(format!("execve {path}"));
            self.exec_results
                .iter()
                .find(|(p, _)| *p == path)
                .map_or(Errno::ENOENT, |&(_, errno)| errno)
        }
    }

    fn agent() -> Credentials {
        Credentials {
            uid: Uid::from_raw(1000),
            gid: Gid::from_raw(1001),
            groups: vec![Gid::from_raw(1001), Gid::from_raw(27)],
        }
    }

    fn paths(list: &[&str]) -> Vec<CString> {
        list.iter().map(|p| CString::new(*p).unwrap()).collect()
    }

    const DROPS: [&str; 11] = [
        "signals",
        "close_range",
        "setgroups [1001, 27]",
        "bounding",
        "inheritable",
        "ambient",
        "securebits",
        "setresgid 1001",
        "setresuid 1000",
        "no_new_privs",
        "verify",
    ];

    #[test]
    fn spawned_child_drops_in_order_then_waits_then_execs() {
        let mut sys = Recorder {
            exec_results: vec![("/usr/bin/claude", Errno::UnknownErrno)],
            ..Recorder::default()
        };
        let candidates = paths(&["/usr/local/bin/claude", "/usr/bin/claude", "/bin/claude"]);
        let failure = drop_and_exec(&mut sys, &agent(), &candidates, Mode::Spawn);
        let mut expected = vec!["setpgid", "tcsetpgrp"];
        expected.extend(DROPS);
        expected.extend([
            "wait",
            "execve /usr/local/bin/claude",
            "execve /usr/bin/claude",
        ]);
        assert_eq!(sys.calls, expected);
        assert_eq!(failure.stage, Stage::Exec);
    }

    #[test]
    fn exec_mode_keeps_its_place_and_does_not_wait() {
        let mut sys = Recorder::default();
        drop_and_exec(&mut sys, &agent(), &paths(&["/bin/sh"]), Mode::Exec);
        let mut expected: Vec<&str> = DROPS.to_vec();
        expected.push("execve /bin/sh");
        assert_eq!(sys.calls, expected);
    }

    #[test]
    fn no_terminal_is_not_an_error() {
        for errno in [Errno::ENOTTY, Errno::ENXIO, Errno::EBADF] {
            let mut sys = Recorder {
                fail: Some(("tcsetpgrp", errno)),
                ..Recorder::default()
            };
            let failure = drop_and_exec(&mut sys, &agent(), &paths(&["/x"]), Mode::Spawn);
            assert_eq!(failure.stage, Stage::Exec, "{errno}");
        }
        let mut sys = Recorder {
            fail: Some(("tcsetpgrp", Errno::EPERM)),
            ..Recorder::default()
        };
        let failure = drop_and_exec(&mut sys, &agent(), &paths(&["/x"]), Mode::Spawn);
        assert_eq!(failure.stage, Stage::Terminal);
    }

    #[test]
    fn any_failed_drop_stops_before_exec() {
        let steps = [
            ("setpgid", Stage::ProcessGroup),
            ("signals", Stage::Signals),
            ("close_range", Stage::Descriptors),
            ("setgroups [1001, 27]", Stage::Groups),
            ("bounding", Stage::BoundingSet),
            ("inheritable", Stage::InheritableSet),
            ("ambient", Stage::AmbientSet),
            ("securebits", Stage::Securebits),
            ("setresgid 1001", Stage::Gid),
            ("setresuid 1000", Stage::Uid),
            ("no_new_privs", Stage::NoNewPrivs),
            ("verify", Stage::CapabilitiesLeft),
            ("wait", Stage::Supervisor),
        ];
        for (step, stage) in steps {
            let mut sys = Recorder {
                fail: Some((step, Errno::EPERM)),
                ..Recorder::default()
            };
            let failure = drop_and_exec(&mut sys, &agent(), &paths(&["/x"]), Mode::Spawn);
            assert_eq!(
                failure,
                Failure {
                    stage,
                    errno: Errno::EPERM
                }
            );
            assert_eq!(sys.calls.last().unwrap(), step);
            assert!(!sys.calls.iter().any(|c| c.starts_with("execve")));
        }
    }

    #[test]
    fn capabilities_left_after_the_drop_are_fatal() {
        let mut sys = Recorder {
            caps_left: true,
            ..Recorder::default()
        };
        let failure = drop_and_exec(&mut sys, &agent(), &paths(&["/x"]), Mode::Spawn);
        assert_eq!(failure.stage, Stage::CapabilitiesLeft);
        assert_eq!(sys.calls.last().unwrap(), "verify");
    }

    #[test]
    fn path_search_follows_execvp() {
        let search = |results: Vec<(&'static str, Errno)>| {
            let mut sys = Recorder {
                exec_results: results,
                ..Recorder::default()
            };
            search_and_exec(&mut sys, &paths(&["/a/x", "/b/x", "/c/x"]))
        };
        assert_eq!(search(vec![]), Errno::ENOENT);
        assert_eq!(search(vec![("/a/x", Errno::EACCES)]), Errno::EACCES);
        assert_eq!(search(vec![("/b/x", Errno::ENOTDIR)]), Errno::ENOENT);
        assert_eq!(
            search(vec![("/a/x", Errno::EACCES), ("/b/x", Errno::ENOEXEC)]),
            Errno::ENOEXEC
        );
    }

    #[test]
    fn candidates_come_from_the_agents_path() {
        let found = search_path(OsStr::new("claude"), OsStr::new("/usr/local/bin::/bin"));
        assert_eq!(
            found,
            [
                PathBuf::from("/usr/local/bin/claude"),
                PathBuf::from("claude"),
                PathBuf::from("/bin/claude")
            ]
        );
        assert_eq!(
            search_path(OsStr::new("./run.sh"), OsStr::new("/bin")),
            [PathBuf::from("./run.sh")]
        );
        assert!(search_path(OsStr::new(""), OsStr::new("/bin")).is_empty());
    }

    fn account(uid: u32) -> Account {
        Account {
            name: "node".into(),
            uid,
            gid: 1000,
            groups: vec![1000],
            home: "/home/node".into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn empty_command_runs_claude() {
        let env = vec![("PATH".into(), "/opt/bin".into())];
        let launch = Launch::new(vec![], env, account(1000)).unwrap();
        assert_eq!(launch.argv, paths(&DEFAULT_COMMAND));
        assert_eq!(launch.candidates, paths(&["/opt/bin/claude"]));
    }

    #[test]
    fn environment_becomes_name_value_strings() {
        let env = vec![("HOME".into(), "/home/node".into())];
        let launch = Launch::new(vec!["sh".into()], env, account(1000)).unwrap();
        assert_eq!(launch.envp, paths(&["HOME=/home/node"]));
        assert_eq!(launch.candidates.len(), DEFAULT_PATH.split(':').count());
    }

    #[test]
    fn root_and_nul_bytes_are_refused() {
        let root = Launch::new(vec!["sh".into()], vec![], account(0));
        assert_eq!(root.err().unwrap().exit_code(), exit::BAD_USER);
        let nul = Launch::new(vec!["s\0h".into()], vec![], account(1000));
        assert_eq!(nul.err().unwrap().exit_code(), exit::USAGE);
    }

    #[test]
    fn failure_reports_survive_the_pipe() {
        for stage in Stage::ALL {
            let failure = Failure {
                stage,
                errno: Errno::EACCES,
            };
            assert_eq!(Failure::decode(failure.encode()), Some(failure));
        }
        assert_eq!(Failure::decode([200, 0, 0, 0, 0]), None);
    }

    #[test]
    fn exec_failures_map_to_126_and_127() {
        let exec = |errno| Failure {
            stage: Stage::Exec,
            errno,
        };
        assert_eq!(exec(Errno::ENOENT).exit_code(), 127);
        assert_eq!(exec(Errno::EACCES).exit_code(), 126);
        assert_eq!(exec(Errno::ENOENT).into_error("claude").exit_code(), 127);
        assert_eq!(exec(Errno::ENOEXEC).into_error("claude").exit_code(), 126);
        assert_eq!(
            exec(Errno::ENOENT).into_error("claude").to_string(),
            "claude: command not found"
        );
        let uid = Failure {
            stage: Stage::Uid,
            errno: Errno::EPERM,
        };
        assert_eq!(uid.into_error("claude").exit_code(), exit::INTERNAL);
    }

    #[test]
    fn dirent_records_yield_descriptor_numbers() {
        let mut buffer = Vec::new();
        for name in [&b"."[..], b"..", b"0", b"17", b"123"] {
            let reclen = (19 + name.len() + 1).next_multiple_of(8);
            let start = buffer.len();
            buffer.resize(start + reclen, 0);
            buffer[start + 16..start + 18].copy_from_slice(&(reclen as u16).to_ne_bytes());
            buffer[start + 19..start + 19 + name.len()].copy_from_slice(name);
        }
        assert_eq!(dirent_fds(&buffer).collect::<Vec<_>>(), [0, 17, 123]);
    }

    #[test]
    fn fallback_marks_descriptors_close_on_exec() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: clearing the flag on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        mark_cloexec_listed(fd).unwrap();
        // SAFETY: reading the flag of our own descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
