//! Start the agent: build every C string ahead of `fork`, fork, confine the supervisor, and let
//! the child run the privilege drop (`drop`) and exec. `Kernel` is the drop's real system calls:
//! every one async-signal-safe, no allocation, no locks.

use std::ffi::{c_char, CStr, CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use super::drop::{drop_and_exec, Credentials, Failure, Mode, Stage, Syscalls};
use super::env::DEFAULT_PATH;
use crate::agent::user::Account;
use crate::error::{Error, Result};
use crate::sys::signals::Signals;
use crate::sys::{caps, fd};

/// Securebits for the agent: NO_SETUID_FIXUP and KEEP_CAPS stay off, and are locked off; NOROOT
/// and NO_CAP_AMBIENT_RAISE are on and locked.
const AGENT_SECUREBITS: libc::c_ulong = caps::SECBIT_NOROOT
    | caps::SECBIT_NOROOT_LOCKED
    | caps::SECBIT_NO_SETUID_FIXUP_LOCKED
    | caps::SECBIT_KEEP_CAPS_LOCKED
    | caps::SECBIT_NO_CAP_AMBIENT_RAISE
    | caps::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// What runs when no command is given.
pub const DEFAULT_COMMAND: [&str; 2] = ["claude", "--dangerously-skip-permissions"];

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
    /// What the supervisor keeps permitted besides CAP_KILL (`supervisor_keeps`).
    supervisor_permitted: u64,
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
            supervisor_permitted: 0,
        })
    }

    /// The supervisor keeps `kept` in its permitted set, never effective: to start a resident
    /// process (the DNS gateway) again, which raises them in its own forked child only.
    pub fn supervisor_keeps(self, kept: &[caps::Capability]) -> Self {
        Launch {
            supervisor_permitted: kept.iter().fold(0, |bits, cap| bits | 1 << cap.index()),
            ..self
        }
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
        let confined = confine_supervisor(self.supervisor_permitted)
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
/// effective (plus `also_permitted`, permitted only: see `gateway::service`); the bounding,
/// inheritable and ambient sets are empty; no_new_privs is set; and PR_SET_DUMPABLE 0 makes
/// /proc/1/{environ,mem,...} root-only and forbids ptrace even by root without CAP_SYS_PTRACE.
fn confine_supervisor(also_permitted: u64) -> Result<()> {
    let fail = |what: &'static str| move |errno| Error::sys(what, errno);
    caps::clear_bounding_set().map_err(fail("supervisor: emptying the bounding set"))?;
    caps::clear_ambient_set().map_err(fail("supervisor: emptying the ambient set"))?;
    let permitted = also_permitted | 1 << caps::CAP_KILL;
    let half = |shift: u32| caps::CapData {
        effective: ((1u64 << caps::CAP_KILL) >> shift) as u32,
        permitted: (permitted >> shift) as u32,
        inheritable: 0,
    };
    caps::capset([half(0), half(32)]).map_err(fail("supervisor: dropping to CAP_KILL"))?;
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
        fd::mark_cloexec_from(3)
    }

    fn set_groups(&mut self, groups: &[Gid]) -> nix::Result<()> {
        nix::unistd::setgroups(groups)
    }

    fn clear_bounding_set(&mut self) -> nix::Result<()> {
        caps::clear_bounding_set()
    }

    fn clear_inheritable_set(&mut self) -> nix::Result<()> {
        caps::clear_inheritable_set()
    }

    fn clear_ambient_set(&mut self) -> nix::Result<()> {
        caps::clear_ambient_set()
    }

    fn lock_securebits(&mut self) -> nix::Result<()> {
        caps::set_securebits(AGENT_SECUREBITS)
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
        caps::all_empty()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit;

    fn paths(list: &[&str]) -> Vec<CString> {
        list.iter().map(|p| CString::new(*p).unwrap()).collect()
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
}
