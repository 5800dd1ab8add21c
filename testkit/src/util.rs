//! Shared plumbing: argument walking, usage errors, line logs, ready files, errno names.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::Mutex;

/// Walks `--flag VALUE` arguments by hand (no clap: the binary stays small and std-only).
pub struct Args<'a> {
    args: &'a [String],
    pos: usize,
}

impl<'a> Args<'a> {
    pub fn new(args: &'a [String]) -> Self {
        Args { args, pos: 0 }
    }

    /// The next argument (a flag or a positional one).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<&'a str> {
        let a = self.args.get(self.pos)?;
        self.pos += 1;
        Some(a)
    }

    /// The value that must follow `flag`.
    pub fn value(&mut self, flag: &str) -> Result<&'a str, String> {
        self.next().ok_or_else(|| format!("{flag} needs a value"))
    }

    /// The value following `flag`, parsed.
    pub fn parse<T: FromStr>(&mut self, flag: &str) -> Result<T, String> {
        let v = self.value(flag)?;
        v.parse().map_err(|_| format!("{flag}: bad value {v:?}"))
    }
}

/// Prints the problem and the usage line; returns exit code 2.
pub fn usage_error(usage: &str, msg: &str) -> i32 {
    eprintln!("testkit: {msg}\n{usage}");
    2
}

/// Prints a runtime failure; returns exit code 1.
pub fn fail(cmd: &str, err: impl std::fmt::Display) -> i32 {
    eprintln!("testkit {cmd}: {err}");
    1
}

/// Adds what was being done to an io::Error.
pub fn ctx(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A line-oriented log shared by threads: one `write` per line, so lines never interleave and
/// each is on disk (appended) as soon as it is logged. `Log::none()` discards.
pub struct Log(Option<Mutex<Box<dyn Write + Send>>>);

impl Log {
    pub fn none() -> Log {
        Log(None)
    }

    pub fn stdout() -> Log {
        Log(Some(Mutex::new(Box::new(io::stdout()))))
    }

    pub fn append(path: &str) -> io::Result<Log> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(ctx(path))?;
        Ok(Log(Some(Mutex::new(Box::new(f)))))
    }

    /// `--log FILE` if given, else `fallback`.
    pub fn open_or(path: Option<&str>, fallback: fn() -> Log) -> io::Result<Log> {
        path.map_or_else(|| Ok(fallback()), Log::append)
    }

    pub fn line(&self, s: &str) {
        if let Some(w) = &self.0 {
            let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
            let _ = w.write_all(format!("{s}\n").as_bytes());
            let _ = w.flush();
        }
    }
}

/// Writes the ready file (one line per bound socket) atomically: tmp file, then rename.
pub fn write_ready(path: Option<&str>, lines: &[String]) -> io::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let tmp = format!("{path}.tmp{}", std::process::id());
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&tmp, body).map_err(ctx(&tmp))?;
    std::fs::rename(&tmp, path).map_err(ctx(path))
}

/// Lifts the soft limit on open files to the hard limit (servers with thousands of sockets).
pub fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid rlimit for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// The errno behind an io::Error (EIO if it has none).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => libc::ETIMEDOUT,
        _ => libc::EIO,
    })
}

/// Symbolic name of an errno value (`E<n>` for the uncommon ones).
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::EPIPE => "EPIPE",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETRESET => "ENETRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return format!("E{e}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_walk_flags_and_values() {
        let v: Vec<String> = ["--a", "1", "x", "--b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut a = Args::new(&v);
        assert_eq!(a.next(), Some("--a"));
        assert_eq!(a.parse::<u32>("--a"), Ok(1));
        assert_eq!(a.next(), Some("x"));
        assert_eq!(a.next(), Some("--b"));
        assert_eq!(a.value("--b"), Err("--b needs a value".to_string()));
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EHOSTUNREACH), "EHOSTUNREACH");
        assert_eq!(errno_name(9999), "E9999");
    }
}
