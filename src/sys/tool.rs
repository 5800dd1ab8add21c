//! The external tools cordon runs as root (ipset, iptables-*-restore, iptables-*-save): found
//! only in fixed system directories, never through `$PATH` (the agent can write to some of its
//! entries, e.g. ~/.local/bin or a relative node_modules/.bin); held open while their owner and
//! mode are checked, and executed through that same descriptor; started with an empty signal
//! mask and a fixed environment; bounded in time.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::sys::signals;

/// In a tool's error when a stop during set-up ended it (`Error::cut_short_by_stop`).
pub const CUT_SHORT: &str = "was stopped: set-up interrupted";

/// Where the tools are looked for, in this order.
const SEARCH_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
];

/// The PATH the tools themselves get (they may run helpers, e.g. modprobe).
const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The longest any tool may run. A tool still running then (e.g. iptables-legacy waiting for a
/// lock another process holds) is killed and counts as failed.
pub const BOUND: Duration = Duration::from_secs(10);

/// A tool found in a trusted place and held open: what was checked is what runs.
#[derive(Debug, Clone)]
pub struct Tool {
    /// The name it is run under (argv[0]): xtables-multi binaries dispatch on it.
    name: String,
    /// Where it was found, for messages.
    path: PathBuf,
    file: Arc<OwnedFd>,
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl Tool {
    /// The first trusted `name` in the system directories. A candidate that is not trusted is
    /// skipped with a warning naming why.
    pub fn find(name: &str) -> Option<Tool> {
        SEARCH_PATH.iter().find_map(|dir| {
            let path = Path::new(dir).join(name);
            let file = open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
            match untrusted_because(&file) {
                None => Some(Tool {
                    name: name.to_string(),
                    path,
                    file: Arc::new(file),
                }),
                Some(why) => {
                    log::warn!("ignoring {}: {why}", path.display());
                    None
                }
            }
        })
    }

    /// The file this tool resolves to (through its symlinks).
    pub fn resolved(&self) -> PathBuf {
        std::fs::read_link(fd_path(&self.file)).unwrap_or_else(|_| self.path.clone())
    }

    /// Runs the tool with `input` on its standard input, within `bound`; returns its standard
    /// output, or its first error lines.
    pub fn run(&self, args: &[&str], input: &str, bound: Duration) -> Result<String, String> {
        self.start(args, input.to_string())?
            .finish(Instant::now() + bound)
    }

    pub fn start(&self, args: &[&str], input: String) -> Result<Running, String> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {self}: {e}"))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Dropping stdin after writing closes it: the tool sees the end of its input.
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let stdout = collect(child.stdout.take().expect("stdout is piped"));
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        Ok(Running {
            tool: self.to_string(),
            args: args.join(" "),
            started: Instant::now(),
            child,
            writer,
            stdout,
            stderr,
        })
    }

    /// Executes the held descriptor (through /proc/self/fd, so that a script's interpreter can
    /// open it too), under the tool's own name. Started by fork and exec: with a `pre_exec` hook
    /// std does not use posix_spawn, whose musl version restores the caller's signal mask
    /// without the reserved signals 32-34 (see `sys::signals`). The hook gives the tool an
    /// empty signal mask and keeps the descriptor open across exec.
    fn command(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let fd = self.file.as_raw_fd();
        let mut command = Command::new(fd_path(&self.file));
        command
            .arg0(&self.name)
            .env_clear()
            .env("PATH", TOOL_PATH)
            .env("LC_ALL", "C");
        // SAFETY: two system calls on values owned by the closure; async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let none: u64 = 0;
                let rc = libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_SETMASK,
                    &none as *const u64,
                    std::ptr::null_mut::<u64>(),
                    std::mem::size_of::<u64>(),
                );
                Errno::result(rc).map_err(std::io::Error::from)?;
                Errno::result(libc::fcntl(fd, libc::F_SETFD, 0))
                    .map(drop)
                    .map_err(std::io::Error::from)
            })
        };
        command
    }
}

fn fd_path(file: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Why a tool held open must not be run as root, if it must not: it, or a directory above it,
/// is not root-owned or can be written by others than root. A world-writable directory with the
/// sticky bit (/tmp) is accepted above a root-owned entry: nobody else can rename or replace it.
fn untrusted_because(file: &OwnedFd) -> Option<String> {
    let meta = match nix::sys::stat::fstat(file) {
        Ok(meta) => meta,
        Err(errno) => return Some(format!("cannot stat it: {}", errno.desc())),
    };
    if meta.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Some("not a regular file".into());
    }
    if meta.st_uid != 0 || meta.st_mode & 0o022 != 0 {
        return Some(format!(
            "owned by uid {} with mode {:o}; a tool run as root must be root-owned and writable \
             only by root",
            meta.st_uid,
            meta.st_mode & 0o7777
        ));
    }
    let resolved = match std::fs::read_link(fd_path(file)) {
        Ok(path) => path,
        Err(e) => return Some(format!("cannot tell where it is: {e}")),
    };
    for dir in resolved.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            return Some(format!("cannot stat {}", dir.display()));
        };
        let writable_by_others = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
        if meta.uid() != 0 || writable_by_others {
            return Some(format!(
                "{} (above {}) is owned by uid {} with mode {:o}; every directory above a tool \
                 run as root must be root-owned and writable only by root",
                dir.display(),
                resolved.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
    }
    None
}

/// A tool that has been started: threads feed its input and collect its output, so it can never
/// block on a full pipe while cordon waits for it with a deadline.
pub struct Running {
    tool: String,
    args: String,
    started: Instant,
    child: std::process::Child,
    writer: std::thread::JoinHandle<std::io::Result<()>>,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Running {
    /// Waits for the tool until `deadline`, then kills it.
    pub fn finish(mut self, deadline: Instant) -> Result<String, String> {
        let tool = self.tool.clone();
        let status = wait_until(&mut self.child, deadline)
            .map_err(|e| format!("waiting for {tool}: {e}"))?;
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Some(signal) = signals::stop_during_set_up() {
                return Err(format!("{tool} {CUT_SHORT} by signal {signal}"));
            }
            let stderr = first_lines(&self.stderr.join().unwrap_or_default());
            return Err(format!(
                "{tool} did not finish within {:.1} s and was stopped{}",
                self.started.elapsed().as_secs_f64(),
                match stderr.is_empty() {
                    true => String::new(),
                    false => format!(" ({stderr})"),
                }
            ));
        };
        let written = self.writer.join().expect("writer thread panicked");
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = first_lines(&self.stderr.join().unwrap_or_default());
        if !status.success() {
            return Err(match stderr.is_empty() {
                true => format!("{tool} exited with {status}"),
                false => stderr,
            });
        }
        written.map_err(|e| format!("writing to {tool}: {e}"))?;
        log::debug!(
            "{tool} {}: {:.1} ms",
            self.args,
            self.started.elapsed().as_secs_f64() * 1e3
        );
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }
}

fn collect(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

fn first_lines(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `Child::wait` with a deadline: polls, first often (the tools take milliseconds), then every
/// 2 ms. `None` when the deadline passed, or set-up was interrupted (a tool waiting on a held
/// xtables lock must not hold up the lockdown).
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline || signals::stop_during_set_up().is_some() {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(name: &str) -> Tool {
        Tool::find(name).unwrap_or_else(|| panic!("{name} is in the system directories"))
    }

    #[test]
    fn a_tool_past_its_bound_is_stopped() {
        let started = Instant::now();
        let result = system("sleep").run(&["5"], "", Duration::from_millis(100));
        assert!(result.unwrap_err().contains("did not finish"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_tool_that_reads_nothing_cannot_block_on_its_input() {
        // More than a pipe holds, to a tool that never reads it.
        let input = "x".repeat(1 << 20);
        let started = Instant::now();
        let _ = system("true").run(&[], &input, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(2));
        let echoed = system("cat").run(&[], &input, Duration::from_secs(5));
        assert_eq!(echoed.unwrap().len(), input.len());
    }

    #[test]
    fn tools_run_under_their_own_name_with_a_fixed_environment() {
        let shown = system("sh")
            .run(
                &["-c", "echo \"$0|$PATH|$HOME\""],
                "",
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(shown.trim(), format!("sh|{TOOL_PATH}|"));
    }

    #[test]
    fn a_file_others_can_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cordon-tool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ipset");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o777)).unwrap();
        let held = open(&file, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        let why = untrusted_because(&held).expect("group/other-writable");
        assert!(why.contains("writable only by root"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
