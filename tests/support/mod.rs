//! Shared helpers for the integration suites. Each suite includes this with `mod support;`.
#![allow(dead_code)]

pub mod world;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Privileged suites call this first. Without root they skip — unless CORDON_REQUIRE_PRIVILEGED=1
/// (set by tests/run and CI), where a skip would hide a failure, so they panic instead.
pub fn privileged() -> bool {
    let is_root = nix::unistd::geteuid().is_root();
    let required = std::env::var("CORDON_REQUIRE_PRIVILEGED").as_deref() == Ok("1");
    match (is_root, required) {
        (true, _) => true,
        (false, true) => {
            panic!("privileged test run without root while CORDON_REQUIRE_PRIVILEGED=1")
        }
        (false, false) => {
            eprintln!("skipped: needs root (set CORDON_REQUIRE_PRIVILEGED=1 to make this fatal)");
            false
        }
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const MUSL: &str = "x86_64-unknown-linux-musl";

/// A static (musl) release build of one of the workspace binaries, built once per test process.
/// Static binaries are needed wherever a test runs them inside a throw-away root filesystem or a
/// container. CORDON_STATIC_DIR points at a directory that already holds them (tests/run sets it).
pub fn static_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        if let Ok(dir) = std::env::var("CORDON_STATIC_DIR") {
            return PathBuf::from(dir);
        }
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                MUSL,
                "--workspace",
                "--bins",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "static build failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        target.join(MUSL).join("release")
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} missing", path.display());
    path
}

pub fn cordon() -> PathBuf {
    static_binary("cordon")
}

pub fn testkit() -> PathBuf {
    static_binary("testkit")
}

/// Runs a command, panicking with its output if it fails. Returns stdout.
pub fn run(program: impl AsRef<Path>, args: &[&str]) -> String {
    let output = Command::new(program.as_ref())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.as_ref().display()));
    assert!(
        output.status.success(),
        "{} {:?} failed ({}):\n{}{}",
        program.as_ref().display(),
        args,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
