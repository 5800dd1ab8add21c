//! The privilege drop: every step between root and the agent's exec, in a fixed order.
//!
//! The order lives in one pure function, [`drop_and_exec`], written against the [`Syscalls`]
//! seam: `launch::Kernel` makes the real calls, the tests' recorder checks the order without
//! root.
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
//!    This comes before the uid change, not after it: setting securebits
//!    needs CAP_SETPCAP, which `setresuid` takes away.
//! 6. `setresgid`, then `setresuid` (real, effective and saved ids all change: no way back).
//! 7. `no_new_privs` (fatal if refused), then a check that every capability set is empty.
//! 8. Wait until the supervisor has dropped its own privileges (so the agent never runs next to
//!    a privileged PID 1), then exec with a PATH search over the agent's PATH. Exec failures go
//!    to the parent through a close-on-exec pipe (tini's 126/127).
//!
//! Nothing in the child allocates or takes a lock: every string and pointer array is built
//! before `fork`.

use std::ffi::{c_int, CStr, CString};

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

use crate::error::{exit, Error};

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
    pub(super) const WIRE_LEN: usize = 5;

    pub(super) fn encode(self) -> [u8; Self::WIRE_LEN] {
        let [a, b, c, d] = (self.errno as i32).to_le_bytes();
        [self.stage as u8, a, b, c, d]
    }

    pub(super) fn decode(bytes: [u8; Self::WIRE_LEN]) -> Option<Failure> {
        let [stage, a, b, c, d] = bytes;
        Some(Failure {
            stage: Stage::from_u8(stage)?,
            errno: Errno::from_raw(i32::from_le_bytes([a, b, c, d])),
        })
    }

    /// The status the child exits with (the parent reports the failure itself).
    pub(super) fn exit_code(self) -> c_int {
        match (self.stage, self.errno) {
            (Stage::Exec, Errno::ENOENT) => exit::NOT_FOUND,
            (Stage::Exec, _) => exit::CANNOT_EXECUTE,
            _ => exit::INTERNAL,
        }
    }

    pub(super) fn into_error(self, command: &str) -> Error {
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
}
