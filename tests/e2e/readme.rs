//! README.md's quick start, run as written: its commands are read from the README, not copied
//! here, so that the README cannot drift from what works.
//!
//! Two stand-ins, because nothing here may reach a registry or a real host: `docker` on PATH is a
//! wrapper that (1) answers the README's `docker build -t cordon .` by building the same public
//! Dockerfile offline (tests/docker/build-image.sh: the local Debian base, this tree's binary,
//! the pinned CLI) under the tag the README names, and (2) adds the test world's network, DNS
//! and API upstream (the TLS mock as api.anthropic.com, its CA) to `docker run`/`docker create`.
//! The key placeholder `sk-...` is replaced by the world's key. Everything else — the commands,
//! their options, the image name, cordon-run — is the README's.

use std::process::Command;

use crate::run::*;
use crate::support::{privileged, workspace_root};
use crate::world::*;

/// The shell blocks of README.md's "Quick start" section, in order.
fn quick_start_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Quick start\n")
        .nth(1)
        .expect("README.md has a Quick start section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().replace("\\\n", " "))
        .map(|block| block.trim().to_string())
        .collect()
}

#[test]
fn the_readme_quick_start_works_as_written() {
    let blocks = quick_start_blocks();
    assert_eq!(
        blocks.len(),
        3,
        "build+run, plain docker run, tests: {blocks:#?}"
    );
    // The test command is the one CI runs.
    assert_eq!(blocks[2], "tests/run");
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).unwrap();
    assert!(ci.lines().any(|line| line == "exec tests/run"), "{ci}");
    if !privileged() {
        return;
    }
    let world = World::new();
    let bin = world.dir.join("readme-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("docker");
    let upstream: Vec<String> = world
        .credential_upstream_args()
        .iter()
        .map(|arg| format!("'{arg}'"))
        .collect();
    let script = format!(
        r#"#!/bin/bash
# The README's docker, offline and on the test world (see tests/e2e/readme.rs).
set -euo pipefail
if [ "${{1:-}}" = build ]; then
    [ "$*" = "build -t cordon ." ] || {{ echo "readme docker: unexpected build: $*" >&2; exit 90; }}
    [ "${{DOCKER_BUILDKIT:-}}" = 1 ] || {{ echo "readme docker: BuildKit not asked for" >&2; exit 91; }}
    exec {root}/tests/docker/build-image.sh --binary {binary} --tag cordon:latest >/dev/null
fi
if [ "${{1:-}}" = run ] || [ "${{1:-}}" = create ]; then
    command=$1; shift
    exec {docker} "$command" --network={net} --dns={dns} {upstream} "$@"
fi
exec {docker} "$@"
"#,
        root = workspace_root().display(),
        binary = crate::support::cordon().display(),
        docker = world.s.docker.display(),
        net = world.net,
        dns = world.dns_ip(),
        upstream = upstream.join(" "),
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    // Each block runs at a terminal, from this directory, as the README says; the driver answers
    // the CLI's first-run dialogs, asks, and waits for the mock's reply.
    for (which, block) in blocks[..2].iter().enumerate() {
        // The first block sets the key on its command line, the second takes it from the
        // environment (as a user who exported it).
        let line = block.replace("sk-...", E2E_API_KEY);
        let mut command = Command::new("python3");
        command
            .arg(workspace_root().join("tests/e2e/pty-turn.py"))
            .args(["cordon-e2e-reply", "Say hello", "--", "bash", "-c", &line])
            .current_dir(workspace_root())
            .env("PATH", &path)
            .env_remove("DOCKER")
            .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
            .env("ANTHROPIC_API_KEY", E2E_API_KEY);
        let out = run_for(command, 4 * MINUTE);
        eprintln!(
            "README block {which}: `{line}` → {:?} in {:.1}s\n{}",
            out.code,
            out.elapsed.as_secs_f64(),
            out.stderr
        );
        assert_eq!(out.code, Some(0), "{block}\n{}", out.both());
        assert!(out.stdout.contains("reply seen"), "{}", out.stdout);
    }
    // Both turns went through the credential gateway, with the key.
    let tls = world.tls_mock_log();
    let turns = tls
        .lines()
        .filter(|line| line.starts_with("POST /v1/messages"))
        .filter(|line| line.ends_with(&format!("cred=x-api-key:{E2E_API_KEY}")))
        .count();
    assert!(turns >= 2, "{tls}");
    // cordon-run's HOME volume for this directory.
    let mut ls = world.docker();
    ls.args(["volume", "ls", "-q", "--filter", "name=cordon-home-"]);
    let workspace = workspace_root().canonicalize().unwrap();
    for volume in run_for(ls, MINUTE).stdout.split_whitespace() {
        let base = workspace
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if volume.contains(&base) {
            world.volumes.lock().unwrap().push(volume.to_string());
        }
    }
}
