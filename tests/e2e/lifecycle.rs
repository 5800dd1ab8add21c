//! Stop, restart, and a container without NET_ADMIN.

use std::time::Duration;

use crate::run::*;
use crate::support::privileged;
use crate::world::*;

/// `docker stop` ends the container within 2 s with the agent's status: 143 for an agent killed
/// by SIGTERM, the agent's own code when it traps SIGTERM.
#[test]
fn docker_stop_ends_within_two_seconds_with_the_agents_status() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let image = world.s.image.as_str();
    let dies = world.start(
        "stop-dies",
        Dns::Embedded,
        &args(&[&CAPS, &[image, "sleep", "infinity"]]),
    );
    let traps = world.start(
        "stop-traps",
        Dns::Embedded,
        &args(&[
            &CAPS,
            &[
                image,
                "/bin/sh",
                "-c",
                "trap 'exit 7' TERM; while :; do sleep 1 & wait $!; done",
            ],
        ]),
    );
    world.wait_log(&dies, "cordon: starting sleep as node", 1);
    world.wait_log(&traps, "cordon: starting /bin/sh as node", 1);
    for (c, code) in [(&dies, "143"), (&traps, "7")] {
        let out = world.docker_must(&["stop", c]);
        assert!(
            out.elapsed < Duration::from_secs(2),
            "docker stop {c} took {:?}",
            out.elapsed
        );
        assert_eq!(
            world.inspect(c, "{{.State.ExitCode}}"),
            code,
            "{c}: {}",
            world.logs(c)
        );
        eprintln!(
            "docker stop {c}: {:.2}s, exit {code}",
            out.elapsed.as_secs_f64()
        );
    }
}

/// `docker restart` starts cordon again in a fresh network namespace on the same filesystem: the
/// fence is applied again without errors and holds.
#[test]
fn docker_restart_reapplies_the_fence() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let c = world.start(
        "restart",
        Dns::Embedded,
        &args(&[&CAPS, &[&world.s.image, "sleep", "infinity"]]),
    );
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let out = world.docker_must(&["restart", c.as_str()]);
    eprintln!("docker restart: {:.2}s", out.elapsed.as_secs_f64());
    let logs = world.wait_log(&c, "cordon: starting sleep as node", 2);
    assert_eq!(logs.matches("cordon: fence ready").count(), 2, "{logs}");
    assert_eq!(
        logs.matches("cordon: self-test passed").count(),
        2,
        "{logs}"
    );
    let noise: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("error") || l.contains("warn") || l.contains("WARN"))
        .collect();
    assert!(
        noise.is_empty(),
        "errors or warnings across the restart:\n{logs}"
    );
    world.assert_fenced(&c, Dns::Embedded);
}

/// Without NET_ADMIN cordon cannot fence: it exits at once with status 77 and one line naming
/// the fix, and the agent never runs.
#[test]
fn without_net_admin_it_exits_at_once_and_the_agent_never_runs() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let mark = format!("{}:/mark", world.dir.join("mark").display());
    let run = |caps: &[&str], file: &str| {
        let name = world.name(&format!("nocap-{file}"));
        let mut cmd = world.docker();
        cmd.args(["run", "--rm", "--name", &name])
            .args(world.dns_args(Dns::Embedded));
        cmd.args(caps).args([
            "-v",
            &mark,
            &world.s.image,
            "touch",
            &format!("/mark/{file}"),
        ]);
        run_for(cmd, MINUTE)
    };
    let out = run(&[], "without");
    eprintln!(
        "without NET_ADMIN: {:?} in {:.2}s: {}",
        out.code,
        out.elapsed.as_secs_f64(),
        out.stderr
    );
    assert_eq!(out.code, Some(77), "{}", out.both());
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    assert!(
        out.stderr
            .contains("run the container with --cap-add NET_ADMIN ("),
        "{}",
        out.stderr
    );
    assert!(
        !world.dir.join("mark/without").exists(),
        "the agent ran without a fence"
    );

    // The same command with the capabilities does run (the marker is a valid witness).
    let out = run(&CAPS, "with");
    assert!(out.ok(), "{}", out.both());
    assert!(world.dir.join("mark/with").exists());
}
