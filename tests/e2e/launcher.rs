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
    let launcher = workspace_root().join("docker/cordon-run");
    let launcher_help = Command::new(&launcher).arg("--help").output().unwrap();
    assert!(launcher_help.status.success());
    let launcher_help = String::from_utf8_lossy(&launcher_help.stdout).into_owned();
    let passed_through = launcher_help
        .split_once("cordon options, passed to cordon")
        .expect("cordon-run --help lists cordon's options")
        .1;
    // cordon-run handles these itself.
    let own = [
        "--allow",
        "--allowlist",
        "--profile",
        "--uid-from",
        "--help",
    ];
    let mut checked = 0;
    for line in help.lines().map(str::trim) {
        let Some(rest) = line
            .strip_prefix("--")
            .or_else(|| line.split_once(", --").map(|x| x.1))
        else {
            continue;
        };
        let (name, takes_value) = match rest.split_once(" <") {
            Some((name, _)) => (name, true),
            None => (rest.trim_end_matches("..."), false),
        };
        let option = format!("--{name}");
        if own.contains(&option.as_str()) {
            continue;
        }
        checked += 1;
        // Listed, a value-taking one with its placeholder; and a flag is taken as one (a value
        // option must not swallow the next word, nor a flag leave its value behind).
        let listed = passed_through.split_whitespace().collect::<Vec<_>>();
        let at = listed.iter().position(|word| *word == option);
        assert!(at.is_some(), "cordon-run --help does not list {option}");
        let next = listed.get(at.unwrap() + 1).copied().unwrap_or("");
        assert_eq!(
            !next.starts_with('-') && !next.is_empty(),
            takes_value,
            "cordon-run --help: {option} {next}"
        );
        let dry = Command::new(&launcher)
            .args(["--dry-run", "--no-uid-from", "--image", "img", &option])
            .args(if takes_value { &["VALUE"][..] } else { &[][..] })
            .args(["--", "true"])
            .env("DOCKER", "/bin/false")
            .output()
            .unwrap();
        let command = String::from_utf8_lossy(&dry.stdout);
        let expected = match takes_value {
            true => format!(" img {option} VALUE -- true"),
            false => format!(" img {option} -- true"),
        };
        assert!(
            dry.status.success() && command.contains(&expected),
            "{option}: {command}{}",
            String::from_utf8_lossy(&dry.stderr)
        );
    }
    assert!(checked >= 20, "only {checked} of cordon's options found");
}

/// A mistyped option, cordon-run's or cordon's, is refused in one line naming the closest one.
#[test]
fn cordon_run_names_the_closest_option_to_a_typo() {
    let launcher = workspace_root().join("docker/cordon-run");
    for (typo, meant) in [
        ("--strcit", "--strict"),
        ("--imgae", "--image"),
        ("--no-credential-gatway", "--no-credential-gateway"),
        ("--allowlst", "--allowlist"),
    ] {
        let out = Command::new(&launcher)
            .args(["--dry-run", typo, "--", "true"])
            .env("DOCKER", "/bin/false")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{typo}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{typo}: {stderr}");
        assert!(
            stderr.contains(&format!("unknown option {typo}; did you mean {meant}?")),
            "{typo}: {stderr}"
        );
    }
}
