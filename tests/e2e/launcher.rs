//! docker/cordon-run.

use std::process::Command;

use crate::run::*;
use crate::support::{privileged, workspace_root};
use crate::world::*;

/// `docker/cordon-run` runs the agent as the owner of the current directory when that is not
/// node (`--uid-from /workspace`), with a HOME volume it can write, and passes cordon's own
/// options through.
#[test]
fn cordon_run_runs_the_agent_as_the_workspace_owner() {
    if !privileged() {
        return;
    }
    let world = World::ipv4_only();
    let workspace = world.dir.join(format!("ws-{}", world.id));
    std::fs::create_dir_all(&workspace).unwrap();
    std::os::unix::fs::chown(&workspace, Some(2345), Some(2345)).unwrap();
    let base = format!("ws-{}", world.id);
    let run = |tag: &str| {
        let mut cmd = Command::new(workspace_root().join("docker/cordon-run"));
        cmd.current_dir(&workspace)
            .env("DOCKER", &world.s.docker)
            .args(["--image", &world.s.image, "--name", &world.name(tag)])
            .arg(format!("--docker-arg=--network={}", world.net))
            .arg(format!("--docker-arg=--dns={}", world.dns_ip()))
            // cordon's own options, passed through.
            .args(["-q", "--strict", "--grace", "1"])
            .args([
                "--",
                "sh",
                "-c",
                "id -u; touch /workspace/made-by-agent ~/.claude/ok ~/.claude.json && echo wrote",
            ]);
        run_for(cmd, 2 * MINUTE)
    };
    let first = run("cordon-run-1");
    let mut ls = world.docker();
    ls.args([
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name=cordon-home-{base}-"),
    ]);
    world.volumes.lock().unwrap().extend(
        run_for(ls, MINUTE)
            .stdout
            .split_whitespace()
            .map(String::from),
    );
    assert!(first.ok(), "{}", first.both());
    assert_eq!(
        first.stdout.lines().collect::<Vec<_>>(),
        ["2345", "wrote"],
        "{}",
        first.both()
    );
    assert!(
        !first.stderr.contains("cordon: starting"),
        "-q reached cordon: {}",
        first.stderr
    );
    let made = std::fs::metadata(workspace.join("made-by-agent")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&made),
            std::os::unix::fs::MetadataExt::gid(&made)
        ),
        (2345, 2345)
    );
    assert_eq!(world.volumes.lock().unwrap().len(), 1, "one HOME volume");
    // The next start finds the renumbered HOME volume and works the same.
    let second = run("cordon-run-2");
    assert!(second.ok(), "{}", second.both());
    assert_eq!(second.stdout.lines().collect::<Vec<_>>(), ["2345", "wrote"]);
}

/// docker/cordon-run forwards cordon's options; the ones that take a value take the next word.
/// Its list of those must match `cordon --help`.
#[test]
fn cordon_run_knows_which_cordon_options_take_a_value() {
    let help = Command::new(crate::support::cordon())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let launcher = std::fs::read_to_string(workspace_root().join("docker/cordon-run")).unwrap();
    // cordon-run handles these itself.
    let own = ["--allow", "--allowlist", "--profile", "--uid-from"];
    for line in help.lines().map(str::trim) {
        let Some(rest) = line
            .strip_prefix("--")
            .or_else(|| line.split_once(", --").map(|x| x.1))
        else {
            continue;
        };
        let Some((name, _)) = rest.split_once(" <") else {
            continue;
        };
        let option = format!("--{name}");
        if own.contains(&option.as_str()) {
            continue;
        }
        assert!(
            launcher.contains(&format!(" {option} |")) || launcher.contains(&format!(" {option})")),
            "docker/cordon-run does not know that {option} takes a value"
        );
    }
}
