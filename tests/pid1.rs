//! PID 1 behaviour, modelled on tini's and dumb-init's suites. Every scenario runs against each
//! init of a list (see tests/pid1_harness): `validated::*` runs them against Debian's tini (to
//! validate the tests where behaviours overlap) and cordon's launch + supervise stages alone;
//! `cordon::*` runs them against the full binary (fence included) in a fresh network namespace.
//! Scenarios whose promise tini does not make (the sweep, PID 1 moving to /) return early for it.

mod pid1_harness;
mod support;

use std::time::Duration;

use pid1_harness::{
    agent_testkit, children, field, finish, init_pid, run, start, wait_until, Init, Opts, Scratch,
};

const LIMIT: Duration = Duration::from_secs(20);

/// Generates `validated::NAME` (tini and cordon-core) and `cordon::NAME` (the full binary) for
/// each scenario function.
macro_rules! pid1_tests {
    ($($name:ident),* $(,)?) => {
        mod validated {
            $(
                #[test]
                fn $name() {
                    if !crate::support::privileged() {
                        return;
                    }
                    crate::pid1_harness::for_each(&crate::pid1_harness::validated(), super::$name);
                }
            )*
        }
        mod cordon {
            $(
                #[test]
                fn $name() {
                    if !crate::support::privileged() {
                        return;
                    }
                    let inits = crate::pid1_harness::variants(crate::pid1_harness::Kind::Cordon);
                    crate::pid1_harness::for_each(&inits, super::$name);
                }
            )*
        }
    };
}

pid1_tests!(
    exit_codes_pass_through,
    death_by_signal_is_128_plus_n,
    exec_failures_are_126_and_127,
    every_catchable_signal_reaches_the_agent,
    reserved_signals_reach_the_agent_and_never_end_the_init,
    a_stopped_agent_is_continued_after_sigterm,
    group_flag_decides_who_gets_signals,
    signal_during_start_up_reaches_the_agent,
    orphans_are_reaped_while_the_agent_runs,
    merged_sigchlds_do_not_hang,
    subreaper_adopts_orphans_when_not_pid1,
    sweep_gives_grace_then_kills,
    sweep_ends_early_when_everything_exits,
    signal_state_is_restored_in_the_agent,
    working_directory_is_kept,
    job_control_works_under_a_terminal,
);

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn testkit(args: &[&str]) -> Vec<String> {
    let mut argv = vec![agent_testkit().display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// The harness's own complaints (canary killed, processes left behind) must never appear.
fn assert_clean(init: &Init, stderr: &str) {
    assert!(
        !stderr.contains("pid1-harness: canary killed"),
        "{} signalled a process outside its descendants:\n{stderr}",
        init.name()
    );
}

fn exit_codes_pass_through(init: &Init) {
    for code in 0..=255 {
        let outcome = run(init, &Opts::default(), &sh(&format!("exit {code}")), LIMIT);
        assert_eq!(outcome.code, Some(code), "{outcome:#?}");
        assert_clean(init, &outcome.stderr);
    }
}

fn death_by_signal_is_128_plus_n(init: &Init) {
    // No core-dumping signals: core_pattern may write files. 36 is a real-time signal.
    for signal in [1, 2, 9, 10, 12, 14, 15, 36] {
        let outcome = run(
            init,
            &Opts::default(),
            &sh(&format!("kill -{signal} $$")),
            LIMIT,
        );
        assert_eq!(
            outcome.code,
            Some(128 + signal),
            "signal {signal}: {outcome:#?}"
        );
    }
}

fn exec_failures_are_126_and_127(init: &Init) {
    let missing = run(init, &Opts::default(), &["no-such-command-xyz"], LIMIT);
    assert_eq!(missing.code, Some(127), "{missing:#?}");
    assert!(
        missing.stderr.contains("no-such-command-xyz"),
        "{missing:#?}"
    );
    let not_executable = run(init, &Opts::default(), &["/etc/passwd"], LIMIT);
    assert_eq!(not_executable.code, Some(126), "{not_executable:#?}");
}

/// Every signal a process can catch, except SIGCHLD (which the init consumes) and SIGTERM
/// (sent last, it ends the recorder). Real-time signals from 35: the C library reserves 32-34.
fn catchable_signals() -> Vec<i32> {
    (1..=64)
        .filter(|&s| {
            ![
                libc::SIGKILL,
                libc::SIGSTOP,
                libc::SIGCHLD,
                libc::SIGTERM,
                32,
                33,
                34,
            ]
            .contains(&s)
        })
        .collect()
}

fn recorded(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn every_catchable_signal_reaches_the_agent(init: &Init) {
    let scratch = Scratch::new();
    let file = scratch.path("signals");
    let child = start(init.command(
        &Opts::default(),
        &testkit(&["signals", &scratch.arg("signals")]),
    ));
    assert!(
        wait_until(LIMIT, || recorded(&file).contains(&"ready".into())),
        "the recorder never started"
    );
    let pid = init_pid(init, &child);
    let mut sent = catchable_signals();
    sent.retain(|&s| init.forwards(s));
    sent.push(libc::SIGTERM);
    for signal in sent {
        // SAFETY: signalling the init under test.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let seen = wait_until(Duration::from_secs(5), || {
            recorded(&file).contains(&signal.to_string())
        });
        assert!(seen, "signal {signal} did not reach the agent");
    }
    let outcome = finish(child, LIMIT);
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
}

/// Signals 32-34, which the C library reserves for itself: cordon blocks and forwards them like
/// any other, so they neither end it (its default action when it is not PID 1) nor get lost.
/// tini leaves them unblocked.
fn reserved_signals_reach_the_agent_and_never_end_the_init(init: &Init) {
    if !init.is_cordon() {
        return;
    }
    let scratch = Scratch::new();
    let file = scratch.path("signals");
    let child = start(init.command(
        &Opts::default(),
        &testkit(&["signals", &scratch.arg("signals")]),
    ));
    assert!(
        wait_until(LIMIT, || recorded(&file).contains(&"ready".into())),
        "the recorder never started"
    );
    let pid = init_pid(init, &child);
    for signal in [32, 33, 34, libc::SIGTERM] {
        // SAFETY: signalling the init under test.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal}");
        let seen = wait_until(Duration::from_secs(5), || {
            recorded(&file).contains(&signal.to_string())
        });
        assert!(seen, "signal {signal} did not reach the agent");
    }
    let outcome = finish(child, LIMIT);
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
}

/// A stopped agent cannot act on SIGTERM: after forwarding it, the init continues the agent (its
/// process group with --signal-group), so `docker stop` does not wait for SIGKILL.
fn a_stopped_agent_is_continued_after_sigterm(init: &Init) {
    if !init.is_cordon() {
        return;
    }
    let scratch = Scratch::new();
    let file = scratch.path("signals");
    let child = start(init.command(
        &Opts::default(),
        &testkit(&["signals", &scratch.arg("signals")]),
    ));
    assert!(wait_until(LIMIT, || recorded(&file).contains(&"ready".into())));
    let pid = init_pid(init, &child);
    let agent = *children(pid).first().expect("the agent");
    let state = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim().to_string());
        after_name.and_then(|rest| rest.chars().next())
    };
    // SAFETY: stopping the agent under test.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGSTOP) }, 0);
    assert!(wait_until(Duration::from_secs(5), || state(agent) == Some('T')));
    // SAFETY: signalling the init under test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let outcome = finish(child, Duration::from_secs(5));
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
    assert!(recorded(&file).contains(&libc::SIGTERM.to_string()));
}

/// With `-g`/`--signal-group` a forwarded signal reaches the agent's whole process group;
/// without, only the agent.
fn group_flag_decides_who_gets_signals(init: &Init) {
    let scratch = Scratch::new();
    let (agent, other) = (scratch.path("agent"), scratch.path("other"));
    let recorder = testkit(&["signals", &scratch.arg("agent"), &scratch.arg("other")]);
    let child = start(init.command(&Opts::default(), &recorder));
    let ready = |file: &std::path::Path| recorded(file).contains(&"ready".into());
    assert!(wait_until(LIMIT, || ready(&agent) && ready(&other)));
    let pid = init_pid(init, &child);
    let usr1 = libc::SIGUSR1.to_string();
    // SAFETY: signalling the init under test.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert!(wait_until(Duration::from_secs(5), || recorded(&agent).contains(&usr1)));
    let group_got_it = wait_until(Duration::from_millis(500), || {
        recorded(&other).contains(&usr1)
    });
    assert_eq!(group_got_it, init.group, "{}", init.name());
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let outcome = finish(child, LIMIT);
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
}

/// Whether `pid` is the leader of its own process group (/proc's stat: state, ppid, pgrp).
fn leads_its_group(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let pgrp = (stat.rsplit_once(')'))
        .and_then(|(_, rest)| rest.split_whitespace().nth(2).map(str::to_string));
    pgrp == Some(pid.to_string())
}

/// Whether `pid` holds SIGTERM back: blocked, or waiting for it in sigtimedwait (which unblocks
/// the awaited signals for the duration of the call, so SigBlk alone does not show it).
fn blocks_sigterm(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let blocked = field(&status, "SigBlk")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & signal_mask(&[libc::SIGTERM]) != 0);
    let waiting = std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .is_ok_and(|wchan| wchan.contains("sigtimedwait"));
    blocked || waiting
}

/// A `docker stop` while the init is still starting (signals blocked, agent not yet running)
/// must reach the agent once it runs.
fn signal_during_start_up_reaches_the_agent(init: &Init) {
    let opts = Opts {
        startup_delay_ms: Some(500),
        ..Opts::default()
    };
    let child = start(init.command(&opts, &["sleep", "10"]));
    let pid = init_pid(init, &child);
    let blocked = wait_until(Duration::from_secs(5), || blocks_sigterm(pid));
    assert!(blocked, "the init never blocked SIGTERM");
    if !init.is_cordon() && init.group {
        // tini -g forwards to the child's group, which the child makes itself after the fork:
        // a signal before then is lost ("Child was dead when forwarding signal", seen on a
        // loaded machine). tini has no start-up to test; only its group must exist.
        let grouped = || children(pid).iter().any(|&agent| leads_its_group(agent));
        assert!(
            wait_until(Duration::from_secs(5), grouped),
            "tini's child never made its group"
        );
    }
    // SAFETY: signalling the init under test.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let outcome = finish(child, LIMIT);
    assert_eq!(outcome.code, Some(128 + libc::SIGTERM), "{outcome:#?}");
    assert!(outcome.elapsed < Duration::from_secs(8), "{outcome:#?}");
}

fn orphans_are_reaped_while_the_agent_runs(init: &Init) {
    let outcome = run(init, &Opts::default(), &testkit(&["orphans", "150"]), LIMIT);
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
    assert!(outcome.stdout.contains("reaped 150"), "{outcome:#?}");
}

fn merged_sigchlds_do_not_hang(init: &Init) {
    let outcome = run(
        init,
        &Opts::default(),
        &testkit(&["burst", "200", "42"]),
        LIMIT,
    );
    assert_eq!(outcome.code, Some(42), "{outcome:#?}");
    assert!(outcome.elapsed < Duration::from_secs(5), "{outcome:#?}");
}

fn subreaper_adopts_orphans_when_not_pid1(init: &Init) {
    if init.pid1 {
        return;
    }
    let outcome = run(init, &Opts::default(), &testkit(&["orphan-parent"]), LIMIT);
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
}

/// tini does not sweep: when its child exits it exits too, and the kernel SIGKILLs the rest.
fn sweeps(init: &Init) -> bool {
    init.is_cordon()
}

fn sweep_gives_grace_then_kills(init: &Init) {
    if !sweeps(init) {
        return;
    }
    let scratch = Scratch::new();
    let grace = 1.0;
    let opts = Opts {
        grace: Some(grace),
        ..Opts::default()
    };
    let outcome = run(
        init,
        &opts,
        &testkit(&["sweep-tree", &scratch.arg(""), "7"]),
        LIMIT,
    );
    assert_eq!(outcome.code, Some(7), "{outcome:#?}");
    let done = std::fs::read_to_string(scratch.path("graceful.done")).unwrap_or_default();
    assert_eq!(
        done, "clean after 15",
        "the SIGTERM handler had no time: {outcome:#?}"
    );
    // One grandchild ignores SIGTERM: the init waited the whole grace period for it.
    let waited = outcome.elapsed.as_secs_f64();
    assert!(waited >= grace && waited < grace + 3.0, "{outcome:#?}");
    assert_clean(init, &outcome.stderr);
    assert!(
        !outcome.stderr.contains("pid1-harness: left behind"),
        "the sweep left processes behind: {outcome:#?}"
    );
}

fn sweep_ends_early_when_everything_exits(init: &Init) {
    if !sweeps(init) {
        return;
    }
    let scratch = Scratch::new();
    let opts = Opts {
        grace: Some(10.0),
        ..Opts::default()
    };
    let agent = testkit(&["sweep-tree", &scratch.arg(""), "0", "graceful"]);
    let outcome = run(init, &opts, &agent, LIMIT);
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
    assert!(scratch.path("graceful.done").exists(), "{outcome:#?}");
    assert!(outcome.elapsed < Duration::from_secs(5), "{outcome:#?}");
}

fn signal_mask(signals: &[i32]) -> u64 {
    signals.iter().map(|s| 1u64 << (s - 1)).sum()
}

/// SigBlk and SigIgn of the agent, without signals 32-34: the C libraries keep those for
/// themselves (glibc's posix_spawn, used by std::process::Command, even leaves 32 and 33
/// ignored in the children of a multi-threaded parent such as this test).
fn status_masks(outcome: &pid1_harness::Outcome) -> (u64, u64) {
    const LIBC_INTERNAL: u64 = 0b111 << 31;
    let mask =
        |key| u64::from_str_radix(&outcome.field(key).unwrap(), 16).unwrap() & !LIBC_INTERNAL;
    (mask("SigBlk"), mask("SigIgn"))
}

fn signal_state_is_restored_in_the_agent(init: &Init) {
    let agent = ["grep", "^Sig", "/proc/self/status"];
    // Default state: nothing blocked, nothing ignored (Rust's SIGPIPE=ignore must not leak).
    let plain = run(init, &Opts::default(), &agent, LIMIT);
    assert_eq!(status_masks(&plain), (0, 0), "{plain:#?}");

    let ignored = [libc::SIGHUP, libc::SIGUSR1, libc::SIGPIPE];
    let blocked = [libc::SIGUSR2, libc::SIGWINCH];
    let opts = Opts {
        signal_state: Some((ignored.to_vec(), blocked.to_vec())),
        ..Opts::default()
    };
    let command = init.command(&opts, &agent);
    let inherited = finish(start(command), LIMIT);
    assert_eq!(
        status_masks(&inherited),
        (signal_mask(&blocked), signal_mask(&ignored)),
        "{inherited:#?}"
    );
}

fn working_directory_is_kept(init: &Init) {
    let scratch = Scratch::new();
    let opts = Opts {
        cwd: Some(scratch.0.clone()),
        ..Opts::default()
    };
    let outcome = run(init, &opts, &testkit(&["status"]), LIMIT);
    assert_eq!(outcome.field("Cwd"), Some(scratch.0.display().to_string()));
    if !init.is_cordon() {
        return;
    }
    // cordon itself moves to / once the agent runs.
    let child = start(init.command(&opts, &testkit(&["signals", &scratch.arg("sig")])));
    assert!(wait_until(LIMIT, || scratch.path("sig").exists()));
    let pid = init_pid(init, &child);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    // SAFETY: signalling the init under test.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    finish(child, LIMIT);
    assert_eq!(cwd, std::path::Path::new("/"));
}

/// Under a terminal the agent gets its own process group and the terminal's foreground, so
/// job control (`bash -m`) and Ctrl-C work.
fn job_control_works_under_a_terminal(init: &Init) {
    let command = init.command(&Opts::default(), &testkit(&["status"]));
    let status = pid1_harness::pty::run(command, b"");
    let pid = field(&status, "Pid").unwrap();
    assert_eq!(
        field(&status, "Pgrp").as_deref(),
        Some(pid.as_str()),
        "{status}"
    );
    assert_eq!(
        field(&status, "Tpgid").as_deref(),
        Some(pid.as_str()),
        "{status}"
    );

    let script = "sleep 0.2 & fg %1 >/dev/null; echo fg-exit-$?; \
                  trap 'echo got-INT; exit 5' INT; echo armed; sleep 5 & wait";
    let bash = ["bash", "--norc", "--noprofile", "-m", "-c", script];
    let output = pid1_harness::pty::run(init.command(&Opts::default(), &bash), b"\x03");
    assert!(output.contains("fg-exit-0"), "{output}");
    assert!(!output.contains("no job control"), "{output}");
    assert!(output.contains("got-INT"), "{output}");
    assert!(output.contains("exit status 5"), "{output}");
}
