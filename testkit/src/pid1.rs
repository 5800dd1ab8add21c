//! Helpers for the PID 1 and privilege suites (tests/pid1.rs, tests/privilege.rs). Each runs as
//! the agent under the init being tested and reports what it saw on stdout; the exit status says
//! whether the expectation held.
//!
//! - `pid1-init [--signal-group] [--grace SECS] [--exec] [--delay-ms MS]
//!   --user UID:GID[:G1,G2...] -- CMD...` runs cordon's own launch and supervise stages (no
//!   fence, no harden), so the suites can test them before the full pipeline runs end to end.
//! - `with-signals IGNORED BLOCKED CMD...`: execs CMD with the signals in the comma list
//!   IGNORED set to SIG_IGN and those in BLOCKED blocked (`-` for none), all others default.
//! - `status`: identity, capability sets, no_new_privs, working directory, descriptors, process
//!   group and terminal foreground group.
//! - `signals FILE [CHILD_FILE]`: records every signal it receives to FILE, one number a line;
//!   exits 0 after SIGTERM. With CHILD_FILE, a child in the same process group does the same.
//! - `orphans N`: leaves N orphaned grandchildren that exit at once, then waits until the init
//!   has reaped them all (exit 0) or 10 s passed (exit 1).
//! - `orphan-parent`: checks that an orphaned grandchild is adopted by our parent (the init).
//! - `burst N CODE`: N orphans and this process exit at the same moment (merged SIGCHLDs).
//! - `sweep-tree DIR CODE [graceful]`: leaves three grandchildren (one handles SIGTERM slowly
//!   and cleanly, one ignores it, one is in its own session; only the first with `graceful`),
//!   then exits with CODE.
//! - `try-root`: tries to become root again; exit 0 if every attempt failed.
//! - `try-ptrace [PID]`: tries to attach to PID (default: our parent), read its environment and
//!   memory, and signal it; prints its capability lines; exit 0 if every attempt failed.

use std::ffi::{c_int, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

pub const COMMANDS: [&str; 10] = [
    "pid1-init",
    "with-signals",
    "status",
    "signals",
    "orphans",
    "orphan-parent",
    "burst",
    "sweep-tree",
    "try-root",
    "try-ptrace",
];

pub fn main(command: &str, args: &[String]) -> i32 {
    let result = match command {
        "pid1-init" => return init(args),
        "with-signals" => with_signals(args),
        "status" => status(),
        "signals" => signals(arg(args, 0), args.get(1)),
        "orphans" => orphans(number(args, 0)),
        "orphan-parent" => orphan_parent(),
        "burst" => burst(number(args, 0), number(args, 1)),
        "sweep-tree" => sweep_tree(
            arg(args, 0),
            number(args, 1),
            args.get(2).is_some_and(|a| a == "graceful"),
        ),
        "try-root" => try_root(),
        "try-ptrace" => try_ptrace(args.first().map(|pid| pid.parse().expect("PID"))),
        _ => unreachable!("not a pid1 command: {command}"),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("testkit {command}: {error}");
            1
        }
    }
}

fn arg(args: &[String], index: usize) -> &str {
    args.get(index)
        .unwrap_or_else(|| panic!("argument {} missing", index + 1))
}

fn number(args: &[String], index: usize) -> i32 {
    arg(args, index).parse().expect("a number")
}

/// cordon's launch and supervise stages alone: block signals, fork, drop, exec, supervise.
fn init(args: &[String]) -> i32 {
    use cordon::agent::{launch, user};
    use cordon::supervise;

    let signals = match cordon::sys::signals::Signals::block_all() {
        Ok(signals) => signals,
        Err(error) => return fail_init(&error),
    };
    let mut opts = supervise::Options::default();
    let mut exec = false;
    let mut ids = (65534, 65534, Vec::new());
    let mut rest = args.iter();
    let mut command: Vec<OsString> = Vec::new();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--signal-group" => opts.signal_group = true,
            // Stands in for the fence: a slow start-up with every signal already blocked.
            "--delay-ms" => {
                let ms: u64 = rest
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("MILLISECONDS");
                std::thread::sleep(Duration::from_millis(ms));
            }
            "--exec" => exec = true,
            "--grace" => {
                let seconds: f64 = rest.next().and_then(|s| s.parse().ok()).expect("SECONDS");
                opts.grace = Duration::from_secs_f64(seconds);
            }
            "--user" => ids = parse_ids(rest.next().expect("UID:GID[:GROUPS]")),
            "--" => {
                command = rest.by_ref().map(OsString::from).collect();
            }
            other => panic!("pid1-init: unknown option {other}"),
        }
    }
    let (uid, gid, groups) = ids;
    let account = user::Account {
        name: format!("uid {uid}"),
        uid,
        gid,
        groups,
        home: "/".into(),
        shell: "/bin/sh".into(),
    };
    let launch = match launch::Launch::new(command, std::env::vars_os().collect(), account) {
        Ok(launch) => launch,
        Err(error) => return fail_init(&error),
    };
    let started = if exec {
        launch.exec(&signals)
    } else {
        launch
            .spawn(&signals)
            .map(|child| supervise::run(child, &signals, &opts, &mut []))
    };
    started.unwrap_or_else(|error| fail_init(&error))
}

fn fail_init(error: &cordon::error::Error) -> i32 {
    eprintln!("testkit pid1-init: {error}");
    error.exit_code()
}

fn parse_ids(spec: &str) -> (u32, u32, Vec<u32>) {
    let mut parts = spec.splitn(3, ':');
    let uid = parts.next().and_then(|s| s.parse().ok()).expect("UID");
    let gid = parts.next().map_or(uid, |s| s.parse().expect("GID"));
    let groups = parts
        .next()
        .map(|list| list.split(',').map(|g| g.parse().expect("GROUP")).collect())
        .unwrap_or_default();
    (uid, gid, groups)
}

fn with_signals(args: &[String]) -> io::Result<i32> {
    let list = |text: &str| -> Vec<c_int> {
        text.split(',')
            .filter(|s| *s != "-")
            .map(|s| s.parse().expect("a signal number"))
            .collect()
    };
    let (ignored, blocked) = (list(arg(args, 0)), list(arg(args, 1)));
    // SAFETY: plain system calls on valid sets.
    unsafe {
        // Rust ignores SIGPIPE before main: give it back its default unless asked otherwise.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        for &signal in &ignored {
            libc::signal(signal, libc::SIG_IGN);
        }
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in &blocked {
            libc::sigaddset(&mut set, signal);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    // Not std's Command::exec: it would reset the mask and SIGPIPE.
    let argv: Vec<std::ffi::CString> = args[2..]
        .iter()
        .map(|a| std::ffi::CString::new(a.as_str()).unwrap())
        .collect();
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: a NULL-terminated argv of live C strings.
    unsafe { libc::execvp(pointers[0], pointers.as_ptr()) };
    Err(io::Error::last_os_error())
}

/// Lines of /proc/PID/status whose name is in `names`.
fn status_lines(pid: &str, names: &[&str]) -> io::Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(text
        .lines()
        .filter(|line| {
            names
                .iter()
                .any(|name| line.split(':').next() == Some(name))
        })
        .map(str::to_string)
        .collect())
}

const IDENTITY: [&str; 9] = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
];

fn status() -> io::Result<i32> {
    let fds: Vec<String> = fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    let mut out = status_lines("self", &IDENTITY)?;
    out.push(format!("Cwd:\t{}", std::env::current_dir()?.display()));
    // The listing itself held one descriptor: report only those that are still open.
    let open: Vec<&str> = fds
        .iter()
        .map(String::as_str)
        .filter(|fd| Path::new("/proc/self/fd").join(fd).exists())
        .collect();
    out.push(format!("Fds:\t{}", open.join(" ")));
    let stat = fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // After the name: state(0) ppid(1) pgrp(2) session(3) tty_nr(4) tpgid(5).
    out.push(format!("Pid:\t{}", std::process::id()));
    out.push(format!("Pgrp:\t{}", fields[2]));
    out.push(format!("Tpgid:\t{}", fields[5]));
    println!("{}", out.join("\n"));
    Ok(0)
}

fn all_signals() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the set.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

fn append(path: &str, line: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(format!("{line}\n").as_bytes())
}

/// Every signal 1-64 but SIGKILL and SIGSTOP, as a kernel mask (bit n-1 = signal n). musl's
/// sigfillset leaves out 32-34; the recorder must see those too.
const EVERY_SIGNAL: u64 = !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));

fn signals(file: &str, child_file: Option<&String>) -> io::Result<i32> {
    // SAFETY: blocking every signal of this single-threaded process; the mask is 8 bytes.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &EVERY_SIGNAL as *const u64,
            std::ptr::null_mut::<u64>(),
            8,
        )
    };
    if let Some(child_file) = child_file {
        fork(|| record_signals(child_file).unwrap_or(1))?;
    }
    record_signals(file)
}

fn record_signals(file: &str) -> io::Result<i32> {
    append(file, "ready")?;
    let timeout = libc::timespec {
        tv_sec: 30,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: valid mask and timeout.
        let signal = unsafe {
            libc::syscall(
                libc::SYS_rt_sigtimedwait,
                &EVERY_SIGNAL as *const u64,
                std::ptr::null_mut::<libc::siginfo_t>(),
                &timeout as *const libc::timespec,
                8,
            )
        } as i32;
        if signal < 0 {
            // A stop and continue (SIGSTOP, SIGCONT) interrupts the wait.
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            eprintln!("testkit signals: no signal for 30 s");
            return Ok(1);
        }
        append(file, &signal.to_string())?;
        if signal == libc::SIGTERM {
            return Ok(0);
        }
    }
}

fn pipe() -> io::Result<(fs::File, fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned here.
    unsafe { Ok((fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1]))) }
}

/// Forks; the child runs `body` and exits with its status.
fn fork(body: impl FnOnce() -> i32) -> io::Result<c_int> {
    // SAFETY: the helpers are single-threaded.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = body();
            // SAFETY: leave without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

fn wait_for(pid: c_int) -> io::Result<c_int> {
    let mut status = 0;
    // SAFETY: valid status pointer.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(status)
}

fn quiet_stdio() {
    let null = fs::File::options().read(true).write(true).open("/dev/null");
    if let Ok(null) = null {
        for fd in 0..3 {
            // SAFETY: replacing our own standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Leaves `count` grandchildren behind an intermediate that exits at once, so they are orphans
/// adopted by the init. Each waits until the returned write end is closed (dropped, or closed
/// by our exit), then exits. Returns their pids and that write end.
fn orphans_waiting(count: i32) -> io::Result<(Vec<c_int>, fs::File)> {
    let (release_read, release_write) = pipe()?;
    let (mut pids_read, mut pids_write) = pipe()?;
    let (release_read, release_write_fd) = (release_read.as_raw_fd(), release_write.as_raw_fd());
    let pids_write_fd = pids_write.as_raw_fd();
    let intermediate = fork(|| {
        for _ in 0..count {
            let grandchild = fork(|| {
                quiet_stdio();
                // SAFETY: closing our copies of the write ends, then reading until EOF.
                unsafe {
                    libc::close(release_write_fd);
                    libc::close(pids_write_fd);
                }
                let mut byte = 0u8;
                // SAFETY: reading one byte into a stack variable.
                while unsafe { libc::read(release_read, (&mut byte as *mut u8).cast(), 1) } > 0 {}
                0
            });
            match grandchild {
                Ok(pid) => {
                    let _ = pids_write.write_all(&pid.to_ne_bytes());
                }
                Err(_) => return 1,
            }
        }
        0
    })?;
    drop(pids_write);
    let mut bytes = Vec::new();
    pids_read.read_to_end(&mut bytes)?;
    wait_for(intermediate)?;
    let pids = bytes
        .chunks_exact(4)
        .map(|chunk| c_int::from_ne_bytes(chunk.try_into().unwrap()))
        .collect();
    Ok((pids, release_write))
}

/// The processes in `pids` that still exist (zombies included).
fn still_present(pids: &[c_int]) -> Vec<c_int> {
    pids.iter()
        .copied()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .collect()
}

fn state(pid: c_int) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

fn orphans(count: i32) -> io::Result<i32> {
    let (pids, release) = orphans_waiting(count)?;
    drop(release);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = still_present(&pids);
        if left.is_empty() {
            println!("orphans {} reaped {}", pids.len(), pids.len());
            return Ok(if pids.len() == count as usize { 0 } else { 1 });
        }
        if Instant::now() > deadline {
            let zombies = left.iter().filter(|&&pid| state(pid) == Some('Z')).count();
            println!(
                "orphans {} left {} zombies {zombies}",
                pids.len(),
                left.len()
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn orphan_parent() -> io::Result<i32> {
    let (pids, release) = orphans_waiting(1)?;
    let parent_line = status_lines(&pids[0].to_string(), &["PPid"])?;
    drop(release);
    let adopted_by: c_int = parent_line[0]
        .split_whitespace()
        .nth(1)
        .and_then(|pid| pid.parse().ok())
        .unwrap_or(-1);
    // SAFETY: plain system call.
    let init = unsafe { libc::getppid() };
    println!("orphan adopted by {adopted_by}, init is {init}");
    Ok(if adopted_by == init { 0 } else { 1 })
}

fn burst(count: i32, code: i32) -> io::Result<i32> {
    // Our exit closes the write end: the orphans and we exit at the same moment.
    let (_pids, _release) = orphans_waiting(count)?;
    Ok(code)
}

fn sweep_tree(dir: &str, code: i32, graceful_only: bool) -> io::Result<i32> {
    let dir = Path::new(dir);
    let record = |name: &str| {
        let _ = fs::write(
            dir.join(format!("{name}.pid")),
            std::process::id().to_string(),
        );
    };
    fork(|| {
        quiet_stdio();
        // Handles SIGTERM: takes a moment, then exits cleanly.
        let mut set = all_signals();
        // SAFETY: valid sets; single-threaded.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        record("graceful");
        let mut signal = 0;
        // SAFETY: valid set and output.
        unsafe { libc::sigwait(&set, &mut signal) };
        std::thread::sleep(Duration::from_millis(300));
        let _ = fs::write(dir.join("graceful.done"), format!("clean after {signal}"));
        0
    })?;
    let names: &[&str] = if graceful_only {
        &["graceful"]
    } else {
        &["graceful", "stubborn", "detached"]
    };
    if !graceful_only {
        leave_stubborn_and_detached(&record)?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !names
        .iter()
        .all(|name| dir.join(format!("{name}.pid")).exists())
    {
        if Instant::now() > deadline {
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(code)
}

/// One grandchild that ignores SIGTERM, one that left our session with setsid.
fn leave_stubborn_and_detached(record: &dyn Fn(&str)) -> io::Result<()> {
    fork(|| {
        quiet_stdio();
        // SAFETY: ignoring SIGTERM in this process.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        record("stubborn");
        loop {
            // SAFETY: plain system call.
            unsafe { libc::pause() };
        }
    })?;
    fork(|| {
        quiet_stdio();
        // SAFETY: plain system call.
        unsafe { libc::setsid() };
        record("detached");
        loop {
            // SAFETY: plain system call.
            unsafe { libc::pause() };
        }
    })?;
    Ok(())
}

fn report(what: &str, rc: c_int) -> bool {
    let denied = rc != 0;
    let outcome = if denied {
        io::Error::last_os_error().to_string()
    } else {
        "SUCCEEDED".to_string()
    };
    println!("{what}: {outcome}");
    denied
}

fn try_root() -> io::Result<i32> {
    let root_group: libc::gid_t = 0;
    // SAFETY: plain system calls; each one is expected to fail.
    let denied = [
        report("setuid(0)", unsafe { libc::setuid(0) }),
        report("seteuid(0)", unsafe { libc::seteuid(0) }),
        report("setresuid(0,0,0)", unsafe { libc::setresuid(0, 0, 0) }),
        report("setgid(0)", unsafe { libc::setgid(0) }),
        report("setgroups([0])", unsafe { libc::setgroups(1, &root_group) }),
    ];
    // SAFETY: plain system call.
    let euid = unsafe { libc::geteuid() };
    println!("euid: {euid}");
    Ok(if denied.iter().all(|&d| d) && euid != 0 {
        0
    } else {
        1
    })
}

fn try_ptrace(pid: Option<c_int>) -> io::Result<i32> {
    // SAFETY: plain system call.
    let pid = pid.unwrap_or_else(|| unsafe { libc::getppid() });
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: attaching (and detaching again if that worked) is harmless to our own test.
    let attach = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, null, null) as c_int };
    let mut denied = vec![report("ptrace attach", attach)];
    if attach == 0 {
        // SAFETY: detaching what was attached just above.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, null, null) };
    }
    // SAFETY: as the attach above; expected to fail.
    let seize = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, null, null) as c_int };
    denied.push(report("ptrace seize", seize));
    for file in ["environ", "mem", "cmdline"] {
        let path = format!("/proc/{pid}/{file}");
        let mut buffer = [0u8; 16];
        let read = fs::File::open(&path).and_then(|mut f| f.read(&mut buffer));
        let rc = match read {
            Ok(_) => 0,
            Err(error) => {
                // Keep errno for `report`.
                // SAFETY: writing errno of this thread.
                unsafe { *libc::__errno_location() = error.raw_os_error().unwrap_or(0) };
                -1
            }
        };
        // cmdline is world-readable by design: it is printed, not counted.
        let result = report(&format!("read {path}"), rc);
        if file != "cmdline" {
            denied.push(result);
        }
    }
    // Signal 0 checks the permission without sending anything.
    // SAFETY: plain system call.
    denied.push(report("kill", unsafe { libc::kill(pid, 0) }));
    for line in status_lines(&pid.to_string(), &IDENTITY)? {
        println!("target {line}");
    }
    Ok(if denied.iter().all(|&d| d) { 0 } else { 1 })
}
