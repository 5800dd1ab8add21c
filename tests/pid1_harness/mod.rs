//! The inits under test and how to run a command under them, for tests/pid1.rs and
//! tests/privilege.rs.
//!
//! Every suite runs against a list of [`Init`]s: Debian's tini (as PID 1, as subreaper with
//! `-s`, and with `-g`) to validate the tests themselves; cordon's launch and supervise stages
//! alone (`testkit pid1-init`, which skips the fence and harden); and the full `cordon` binary
//! in a fresh network namespace. "PID 1" variants run in a new pid namespace
//! (`unshare --pid --mount-proc`); the others run under a `sh` that is PID 1 there, so the init
//! under test is not PID 1 but still cannot reach anything outside the namespace.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::support;

/// The unprivileged user the cordon variants run the agent as (Debian's nobody/nogroup).
pub const AGENT_UID: u32 = 65534;
pub const AGENT_GID: u32 = 65534;
/// The PATH every init and agent gets.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// PID 1 of the namespace when the init under test is not: it starts a canary the init must not
/// touch (a sweep that is not PID 1 may only signal its own descendants), runs the init (not
/// with exec, so the init stays PID 2), then reports the canary's fate and every process
/// still left in the namespace.
const NOT_PID1_WRAPPER: &str = r#"
sleep 1000 & canary=$!
"$@"; status=$?
kill -0 $canary 2>/dev/null || echo "pid1-harness: canary killed" >&2
kill $canary 2>/dev/null; wait $canary 2>/dev/null
left=""
for p in /proc/[0-9]*; do p=${p#/proc/}; [ "$p" = 1 ] || left="$left $p"; done
[ -z "$left" ] || echo "pid1-harness: left behind:$left" >&2
exit $status
"#;

/// What Docker gives a container's network namespace: a sysfs of its own (so /sys/class/net
/// lists the namespace's devices, not the host's), loopback up and an interface with an address
/// (here a veth pair with both ends inside; cordon refuses a namespace with loopback alone).
const CONTAINER_NETWORK: &str = r#"mount -t sysfs sysfs /sys && ip link set lo up && ip link add eth0 type veth peer name eth1 && ip addr add 10.253.0.2/24 dev eth0 && ip link set eth0 up && ip link set eth1 up && exec "$@""#;

/// Replaces /etc/passwd and /etc/group with those in "$0" (in the namespace's own mounts only),
/// then becomes the rest of the command.
const BIND_ETC: &str =
    r#"mount --bind "$0/passwd" /etc/passwd && mount --bind "$0/group" /etc/group && exec "$@""#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Debian's tini package (/usr/bin/tini).
    Tini,
    /// cordon's launch + supervise stages through `testkit pid1-init`.
    Core,
    /// The full cordon binary (fence, then launch and supervise).
    Cordon,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Init {
    pub kind: Kind,
    /// PID 1 of a new pid namespace, or a child of one (subreaper path).
    pub pid1: bool,
    /// Signals go to the agent's process group (`tini -g`, `--signal-group`).
    pub group: bool,
}

/// Options a scenario may set.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// The sweep's grace period (cordon only; tini does not sweep).
    pub grace: Option<f64>,
    /// Run the init with this working directory.
    pub cwd: Option<PathBuf>,
    /// `testkit pid1-init --delay-ms`: a slow start-up, as the fence gives the real binary.
    pub startup_delay_ms: Option<u64>,
    /// The agent's `--user` (cordon variants), instead of AGENT_UID:AGENT_GID.
    pub user: Option<String>,
    /// Start the init with these signals ignored and blocked (via `testkit with-signals`).
    pub signal_state: Option<(Vec<i32>, Vec<i32>)>,
    /// `--exec`: cordon becomes the agent instead of supervising it.
    pub exec: bool,
    /// A directory with `passwd` and `group` to bind-mount over /etc's inside the namespace.
    pub etc: Option<PathBuf>,
}

impl Init {
    pub fn name(&self) -> String {
        let kind = match self.kind {
            Kind::Tini => "tini",
            Kind::Core => "cordon-core",
            Kind::Cordon => "cordon",
        };
        let place = if self.pid1 { "pid1" } else { "subreaper" };
        let group = if self.group { "+group" } else { "" };
        format!("{kind}/{place}{group}")
    }

    pub fn is_cordon(&self) -> bool {
        self.kind != Kind::Tini
    }

    /// Whether the init forwards `signal`: tini leaves nine unblocked and handles them itself.
    pub fn forwards(&self, signal: i32) -> bool {
        const TINI_KEEPS: [i32; 9] = [
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGABRT,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ];
        self.is_cordon() || !TINI_KEEPS.contains(&signal)
    }

    /// The command that runs `agent` under this init.
    pub fn command<S: AsRef<OsStr>>(&self, opts: &Opts, agent: &[S]) -> Command {
        let mut argv: Vec<PathBuf> = ["unshare", "--pid", "--kill-child", "--mount-proc"]
            .map(PathBuf::from)
            .to_vec();
        if self.kind == Kind::Cordon {
            argv.push("--net".into());
            argv.extend(["/bin/sh", "-c", CONTAINER_NETWORK, "sh"].map(PathBuf::from));
        }
        if let Some(etc) = &opts.etc {
            argv.extend(["/bin/sh", "-c", BIND_ETC].map(PathBuf::from));
            argv.push(etc.clone());
        }
        if !self.pid1 {
            argv.extend(["/bin/sh", "-c", NOT_PID1_WRAPPER, "sh"].map(PathBuf::from));
        }
        if let Some((ignored, blocked)) = &opts.signal_state {
            let list = |signals: &[i32]| {
                let text: Vec<String> = signals.iter().map(i32::to_string).collect();
                if text.is_empty() {
                    "-".to_string()
                } else {
                    text.join(",")
                }
            };
            argv.push(agent_testkit());
            argv.extend(["with-signals".into(), list(ignored), list(blocked)].map(PathBuf::from));
        }
        argv.extend(self.init_args(opts));
        argv.push("--".into());
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .args(agent)
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null());
        if let Some(cwd) = &opts.cwd {
            command.current_dir(cwd);
        }
        command
    }

    fn init_args(&self, opts: &Opts) -> Vec<PathBuf> {
        let mut args: Vec<String> = Vec::new();
        let grace = opts.grace.unwrap_or(2.0).to_string();
        // The primary group is also a supplementary one, as cordon's --user gives it.
        let default_user = match self.kind {
            Kind::Core => format!("{AGENT_UID}:{AGENT_GID}:{AGENT_GID}"),
            _ => format!("{AGENT_UID}:{AGENT_GID}"),
        };
        let user = opts.user.clone().unwrap_or(default_user);
        match self.kind {
            Kind::Tini => {
                args.push("/usr/bin/tini".into());
                if !self.pid1 {
                    args.push("-s".into());
                }
                if self.group {
                    args.push("-g".into());
                }
            }
            Kind::Core => {
                args.push(agent_testkit().display().to_string());
                args.extend(["pid1-init", "--grace", &grace, "--user", &user].map(String::from));
                if let Some(delay) = opts.startup_delay_ms {
                    args.extend(["--delay-ms".to_string(), delay.to_string()]);
                }
                if self.group {
                    args.push("--signal-group".into());
                }
                if opts.exec {
                    args.push("--exec".into());
                }
            }
            Kind::Cordon => {
                args.push(support::cordon().display().to_string());
                args.extend(["--no-default-profile", "--resolv-conf"].map(String::from));
                args.push(resolv_conf().display().to_string());
                // Never strip the test machine's own setuid files.
                args.extend(["--no-harden", "--grace", &grace, "--user", &user].map(String::from));
                if self.group {
                    args.push("--signal-group".into());
                }
                if opts.exec {
                    args.push("--exec".into());
                }
            }
        }
        args.into_iter().map(PathBuf::from).collect()
    }
}

/// Every init whose tests must pass today: tini and cordon's launch + supervise stages.
pub fn validated() -> Vec<Init> {
    let mut all = variants(Kind::Tini);
    all.extend(variants(Kind::Core));
    all
}

pub fn variants(kind: Kind) -> Vec<Init> {
    vec![
        Init {
            kind,
            pid1: true,
            group: false,
        },
        Init {
            kind,
            pid1: false,
            group: false,
        },
        Init {
            kind,
            pid1: true,
            group: true,
        },
    ]
}

/// The static testkit, copied where the agent's unprivileged user can execute it.
pub fn agent_testkit() -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        let dir = shared_dir();
        let copy = dir.join("testkit");
        std::fs::copy(support::testkit(), &copy).expect("copy testkit");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
}

/// A resolv.conf with nothing to resolve against, for the full cordon binary.
fn resolv_conf() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = shared_dir().join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        path
    })
    .clone()
}

/// One directory per test process, readable by everyone. Directories left by test processes
/// that no longer run are removed first.
fn shared_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let temp = std::env::temp_dir();
        for entry in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = name
                .strip_prefix("cordon-pid1-")
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| !exists(pid));
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = temp.join(format!("cordon-pid1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    })
    .clone()
}

/// A scratch directory the agent can write to, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = shared_dir().join(format!("scratch-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// `key:\tvalue` from `testkit status` (or /proc status) output.
    pub fn field(&self, key: &str) -> Option<String> {
        field(&self.stdout, key)
    }
}

pub fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .map(|value| value.trim().to_string())
}

/// Starts `command` with stdout and stderr captured.
pub fn start(mut command: Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"))
}

/// Waits for `child` at most `limit`; kills it (and with it the pid namespace) after that.
pub fn finish(mut child: Child, limit: Duration) -> Outcome {
    let started = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let outcome = Outcome {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed,
    };
    assert!(status.is_some(), "timed out after {limit:?}: {outcome:#?}");
    outcome
}

/// Runs `agent` under `init` and waits at most `limit`.
pub fn run<S: AsRef<OsStr>>(init: &Init, opts: &Opts, agent: &[S], limit: Duration) -> Outcome {
    finish(start(init.command(opts, agent)), limit)
}

/// The host pid of the init under test, once it runs: the child of `unshare` (PID 1 variants)
/// or the wrapper's child that runs the init's binary.
pub fn init_pid(init: &Init, unshare: &Child) -> i32 {
    let binary = match init.kind {
        Kind::Tini => "tini",
        Kind::Core => "testkit",
        Kind::Cordon => "cordon",
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut candidates = children(unshare.id() as i32);
        if !init.pid1 {
            candidates = candidates.into_iter().flat_map(children).collect();
        }
        let found = candidates
            .into_iter()
            .find(|&pid| exe_name(pid).as_deref() == Some(binary));
        if let Some(pid) = found {
            return pid;
        }
        assert!(Instant::now() < deadline, "the init never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn exe_name(pid: i32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

/// Polls `done` every 5 ms for at most `limit`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// Whether a process still exists (zombies count).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `scenario` for each init, naming the init in any failure.
pub fn for_each(inits: &[Init], scenario: impl Fn(&Init)) {
    for init in inits {
        eprintln!("--- {}", init.name());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(init)));
        if let Err(panic) = result {
            eprintln!("failed under {}", init.name());
            std::panic::resume_unwind(panic);
        }
    }
}

/// Running an init under a fresh pseudo-terminal, as `docker run -t` does.
pub mod pty {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Runs `command` as a session leader with a new pty as its controlling terminal and
    /// stdio. Once the output contains "armed", writes `input` (e.g. Ctrl-C). Returns the
    /// terminal output followed by an `exit status N` line.
    pub fn run(mut command: Command, input: &[u8]) -> String {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave = pty.slave;
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn under a pty");
        drop(command); // closes our copies of the slave side
        let output = Arc::new(Mutex::new(String::new()));
        let mut master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = input.is_empty();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if !sent && output.lock().unwrap().contains("armed") {
                std::thread::sleep(Duration::from_millis(100));
                master.write_all(input).unwrap();
                sent = true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("timed out under a pty: {}", output.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Let the reader drain what the terminal still holds.
        std::thread::sleep(Duration::from_millis(200));
        let text = output.lock().unwrap().clone();
        format!("{text}\nexit status {}\n", status.code().unwrap_or(-1))
    }
}
