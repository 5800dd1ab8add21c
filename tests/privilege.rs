//! What the agent's process holds once cordon has started it, checked from inside by testkit
//! helpers (as youki's tests do): identity, capability sets, no_new_privs, descriptors, no way
//! back to root, and no way into PID 1. `validated::*` runs against cordon's launch + supervise
//! stages (`testkit pid1-init`); `cordon::*` against the full binary. Throw-away root
//! filesystems and the harden stage are tested elsewhere (cordon runs with --no-harden here, so
//! the test machine's own setuid files are never touched).

mod pid1_harness;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use pid1_harness::{agent_testkit, field, run, Init, Kind, Opts, Outcome, Scratch, AGENT_UID};

const LIMIT: Duration = Duration::from_secs(20);

/// cordon as PID 1 and as a subreaper (the process-group flag changes nothing here).
fn inits(kind: Kind) -> Vec<Init> {
    pid1_harness::variants(kind)
        .into_iter()
        .filter(|init| !init.group)
        .collect()
}

macro_rules! privilege_tests {
    ($($name:ident),* $(,)?) => {
        mod validated {
            $(
                #[test]
                fn $name() {
                    if !crate::support::privileged() {
                        return;
                    }
                    let inits = super::inits(crate::pid1_harness::Kind::Core);
                    crate::pid1_harness::for_each(&inits, super::$name);
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
                    let inits = super::inits(crate::pid1_harness::Kind::Cordon);
                    crate::pid1_harness::for_each(&inits, super::$name);
                }
            )*
        }
    };
}

privilege_tests!(
    agent_holds_no_privilege,
    cannot_regain_root,
    setuid_root_binary_does_not_give_root,
    cannot_reach_pid1,
    exec_mode_drops_the_same,
);

fn testkit(args: &[&str]) -> Vec<String> {
    let mut argv = vec![agent_testkit().display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

fn ids(id: u32) -> String {
    format!("{id}\t{id}\t{id}\t{id}")
}

const ZERO: &str = "0000000000000000";

fn assert_no_privilege(status: &Outcome, uid: u32, gid: u32, groups: &str) {
    let expect = |key: &str, value: &str| {
        assert_eq!(
            status.field(key).as_deref(),
            Some(value),
            "{key}: {status:#?}"
        );
    };
    expect("Uid", &ids(uid));
    expect("Gid", &ids(gid));
    expect("Groups", groups);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        expect(set, ZERO);
    }
    expect("NoNewPrivs", "1");
    expect("Fds", "0 1 2");
}

fn agent_holds_no_privilege(init: &Init) {
    let status = run(init, &Opts::default(), &testkit(&["status"]), LIMIT);
    assert_eq!(status.code, Some(0), "{status:#?}");
    assert_no_privilege(&status, AGENT_UID, AGENT_UID, &AGENT_UID.to_string());
}

fn cannot_regain_root(init: &Init) {
    let outcome = run(init, &Opts::default(), &testkit(&["try-root"]), LIMIT);
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
}

/// A setuid-root copy of testkit gives euid 0 to an unprivileged user without no_new_privs
/// (checked first, so the test can fail), and nothing under cordon.
fn setuid_root_binary_does_not_give_root(init: &Init) {
    let scratch = Scratch::new();
    let suid = scratch.path("testkit-suid");
    std::fs::copy(agent_testkit(), &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let suid = suid.display().to_string();

    let uid = AGENT_UID.to_string();
    let control = support::run(
        "setpriv",
        &[
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
            &suid,
            "status",
        ],
    );
    let control_uid = field(&control, "Uid").unwrap();
    assert_eq!(
        control_uid,
        format!("{uid}\t0\t0\t0"),
        "setuid binaries do not work in {}: the test cannot tell anything",
        scratch.0.display()
    );

    let outcome = run(init, &Opts::default(), &[suid.as_str(), "status"], LIMIT);
    assert_eq!(outcome.field("Uid"), Some(ids(AGENT_UID)), "{outcome:#?}");
    assert_eq!(outcome.field("CapEff").as_deref(), Some(ZERO));
}

/// The agent cannot ptrace PID 1, read its environment or memory, or signal it; PID 1 holds
/// CAP_KILL alone effective, no_new_privs set.
fn cannot_reach_pid1(init: &Init) {
    let outcome = run(init, &Opts::default(), &testkit(&["try-ptrace"]), LIMIT);
    assert_eq!(outcome.code, Some(0), "{outcome:#?}");
    let target = |key: &str| field(&outcome.stdout, &format!("target {key}"));
    // The full binary runs the DNS gateway, so its supervisor also keeps CAP_SETGID, CAP_SETUID
    // and CAP_NET_ADMIN permitted (never effective) to start the gateway again.
    let permitted = match init.kind {
        Kind::Cordon => "00000000000010e0",
        _ => "0000000000000020",
    };
    assert_eq!(target("CapPrm").as_deref(), Some(permitted));
    assert_eq!(target("CapEff").as_deref(), Some("0000000000000020"));
    for set in ["CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(target(set).as_deref(), Some(ZERO), "{set}: {outcome:#?}");
    }
    assert_eq!(target("NoNewPrivs").as_deref(), Some("1"));
}

/// `--exec`: cordon becomes the agent (PID 1 itself in a pid namespace) with the same drops.
fn exec_mode_drops_the_same(init: &Init) {
    let opts = Opts {
        exec: true,
        ..Opts::default()
    };
    let status = run(init, &opts, &testkit(&["status"]), LIMIT);
    assert_eq!(status.code, Some(0), "{status:#?}");
    assert_no_privilege(&status, AGENT_UID, AGENT_UID, &AGENT_UID.to_string());
    if init.pid1 {
        assert_eq!(status.field("Pid").as_deref(), Some("1"), "{status:#?}");
    }
}

#[test]
fn explicit_groups_are_exact() {
    if !support::privileged() {
        return;
    }
    for init in inits(Kind::Core) {
        let opts = Opts {
            user: Some("1234:5678:5678,27,100".into()),
            ..Opts::default()
        };
        let status = run(&init, &opts, &testkit(&["status"]), LIMIT);
        assert_no_privilege(&status, 1234, 5678, "27 100 5678");
    }
}

/// An /etc/passwd and /etc/group of our own, bind-mounted over the real ones inside the test's
/// mount namespace.
fn test_accounts(scratch: &Scratch) -> std::path::PathBuf {
    let etc = scratch.path("etc");
    let home = scratch.path("home");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(4242), Some(4343)).unwrap();
    std::fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\nagent:x:4242:4343::{}:/bin/sh\n",
            home.display()
        ),
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\nagentgrp:x:4343:\nextra:x:4444:agent\nother:x:4545:someone\n",
    )
    .unwrap();
    etc
}

#[test]
fn cordon_user_forms_give_exact_ids() {
    if !support::privileged() {
        return;
    }
    let scratch = Scratch::new();
    let etc = test_accounts(&scratch);
    // (--user, uid, gid, groups): supplementary groups are those listing the name, plus the
    // primary group (see src/agent/user.rs).
    let forms = [
        ("agent", 4242, 4343, "4343 4444"),
        ("4242", 4242, 4343, "4343 4444"),
        ("4242:4545", 4242, 4545, "4444 4545"),
    ];
    for init in inits(Kind::Cordon) {
        for (user, uid, gid, groups) in forms {
            let opts = Opts {
                user: Some(user.into()),
                etc: Some(etc.clone()),
                ..Opts::default()
            };
            let status = run(&init, &opts, &testkit(&["status"]), LIMIT);
            assert_no_privilege(&status, uid, gid, groups);
        }
    }
}

#[test]
fn cordon_refuses_unknown_users_and_root() {
    if !support::privileged() {
        return;
    }
    let scratch = Scratch::new();
    let etc = test_accounts(&scratch);
    let marker = scratch.path("agent-ran");
    let agent = ["/bin/touch".to_string(), marker.display().to_string()];
    for init in inits(Kind::Cordon) {
        for user in ["no-such-user", "0", "root", "4242:0"] {
            let opts = Opts {
                user: Some(user.into()),
                etc: Some(etc.clone()),
                ..Opts::default()
            };
            let outcome = run(&init, &opts, &agent, LIMIT);
            assert_eq!(outcome.code, Some(67), "--user {user}: {outcome:#?}");
            assert!(
                !Path::new(&marker).exists(),
                "the agent ran as --user {user}"
            );
        }
    }
}
