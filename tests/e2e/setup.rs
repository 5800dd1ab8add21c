//! Setup, once per process: the engine and the images.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::run::*;
use crate::support::workspace_root;

pub(crate) struct Setup {
    pub(crate) docker: PathBuf,
    /// The image built from the public Dockerfile.
    pub(crate) image: String,
    /// docker/devcontainer/Dockerfile on top of it.
    pub(crate) devcontainer_image: String,
    /// docker/devcontainer-dropin/Dockerfile on the tools base.
    pub(crate) dropin_image: String,
    pub(crate) tools_image: String,
    pub(crate) testkit: PathBuf,
}

pub(crate) fn script(name: &str) -> Command {
    Command::new(workspace_root().join("tests/docker").join(name))
}

/// Progress of the shared setup, written past libtest's output capture (it runs inside whichever
/// test comes first, and on a cold machine it takes minutes).
macro_rules! progress {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) fn build_setup() -> Result<Setup, String> {
    let started = Instant::now();
    let step = |name: &str, cmd: Command, limit: Duration| -> Result<Out, String> {
        let what = show(&cmd);
        let t = Instant::now();
        let out = run_for(cmd, limit);
        progress!("e2e setup: {name} {:.1}s", t.elapsed().as_secs_f64());
        if out.ok() {
            Ok(out)
        } else {
            Err(format!(
                "{what} failed ({:?}):\n{}{}",
                out.code, out.stdout, out.stderr
            ))
        }
    };
    let engine =
        assignments(&step("ensure-docker.sh", script("ensure-docker.sh"), 10 * MINUTE)?.stdout);
    let docker = PathBuf::from(
        engine
            .get("DOCKER")
            .ok_or("ensure-docker.sh printed no DOCKER=")?,
    );
    sweep(&docker);
    let bases = assignments(&step("base-image.sh", script("base-image.sh"), 30 * MINUTE)?.stdout);
    let tools_image = bases
        .get("TOOLS_IMAGE")
        .ok_or("base-image.sh printed no TOOLS_IMAGE=")?
        .clone();
    step("claude-cli.sh", script("claude-cli.sh"), 30 * MINUTE)?;

    let binary = crate::support::cordon();
    let testkit = crate::support::testkit();
    // Tagged by the binary's hash: parallel runs with different binaries never share a tag.
    let mut sum = Command::new("sha256sum");
    sum.arg(&binary);
    let hash = must(sum, MINUTE).stdout[..12].to_string();
    let tag = format!("e2e-{hash}");
    let mut build = script("build-image.sh");
    build
        .arg("--binary")
        .arg(&binary)
        .args(["--tag", &format!("cordon-test/cordon:{tag}")]);
    let built = assignments(&step("build-image.sh", build, 30 * MINUTE)?.stdout);
    let image = built
        .get("IMAGE")
        .ok_or("build-image.sh printed no IMAGE=")?
        .clone();

    let example = |dir: &str, args: &[String], name: &str| -> Result<String, String> {
        let mut cmd = Command::new(&docker);
        cmd.env("DOCKER_BUILDKIT", "1")
            .args(["build", "-q", "-t", name]);
        for a in args {
            cmd.args(["--build-arg", a]);
        }
        cmd.arg(workspace_root().join(dir));
        step(dir, cmd, 10 * MINUTE)?;
        Ok(name.to_string())
    };
    let devcontainer_image = example(
        "docker/devcontainer",
        &[format!("CORDON_IMAGE={image}")],
        &format!("cordon-test/devcontainer:{tag}"),
    )?;
    let dropin_image = example(
        "docker/devcontainer-dropin",
        &[
            format!("CORDON_IMAGE={image}"),
            format!("BASE_IMAGE={tools_image}"),
        ],
        &format!("cordon-test/dropin:{tag}"),
    )?;
    prune_old_tags(&docker, &tag);
    progress!(
        "e2e setup: ready in {:.1}s (image {image})",
        started.elapsed().as_secs_f64()
    );
    Ok(Setup {
        docker,
        image,
        devcontainer_image,
        dropin_image,
        tools_image,
        testkit,
    })
}

/// The test process that created a resource named `cde-PID-N...` (or `...-ws-PID-N-...`).
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .split_once("cde-")
        .or_else(|| name.split_once("ws-"))?
        .1;
    let (pid, n) = rest.split_once('-')?;
    n.chars().next().filter(char::is_ascii_digit)?;
    pid.parse().ok()
}

/// Removes what earlier runs that were killed (no Drop ran) left behind: containers, volumes and
/// networks (with their host ip6tables rules) named after a test process that no longer exists.
pub(crate) fn sweep(docker: &Path) {
    let list = |args: &[&str]| {
        let mut cmd = Command::new(docker);
        cmd.args(args);
        run_for(cmd, MINUTE).stdout
    };
    let dead = |name: &&str| {
        owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let containers = list(&[
        "ps",
        "-a",
        "--filter",
        "name=cde-",
        "--format",
        "{{.Names}}",
    ]);
    let containers: Vec<&str> = containers.lines().filter(dead).collect();
    let volumes = list(&["volume", "ls", "-q"]);
    let volumes: Vec<&str> = volumes
        .lines()
        .filter(|v| v.starts_with("cde-") || v.starts_with("cordon-claude-ws-"))
        .filter(dead)
        .collect();
    let networks = list(&[
        "network",
        "ls",
        "--filter",
        "name=cde-",
        "--format",
        "{{.Name}}",
    ]);
    let networks: Vec<&str> = networks.lines().filter(dead).collect();
    if containers.is_empty() && volumes.is_empty() && networks.is_empty() {
        return;
    }
    progress!(
        "e2e setup: removing leftovers of killed runs: {containers:?} {volumes:?} {networks:?}"
    );
    for (verb, names) in [
        (&["rm", "-f", "-v"][..], &containers),
        (&["volume", "rm", "-f"][..], &volumes),
    ] {
        if !names.is_empty() {
            let mut cmd = Command::new(docker);
            cmd.args(verb).args(names.iter());
            run_for(cmd, MINUTE);
        }
    }
    for net in networks {
        let mut rm = script("test-net.sh");
        rm.args(["rm", net]);
        run_for(rm, MINUTE);
    }
}

/// Untags this suite's images of other binaries built more than a day ago. `docker rmi` without
/// `-f` leaves any image a container (a concurrent run's) still uses.
pub(crate) fn prune_old_tags(docker: &Path, current: &str) {
    let mut date = Command::new("date");
    date.args(["-u", "-d", "1 day ago", "+%Y-%m-%dT%H:%M:%S"]);
    let cutoff = run_for(date, MINUTE).stdout.trim().to_string();
    let mut ls = Command::new(docker);
    ls.args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "--filter",
        "reference=cordon-test/*:e2e-*",
    ]);
    let old: Vec<String> = run_for(ls, MINUTE)
        .stdout
        .lines()
        .filter(|t| !t.ends_with(&format!(":{current}")))
        .filter(|t| {
            let mut inspect = Command::new(docker);
            inspect.args(["image", "inspect", "-f", "{{.Created}}", t]);
            let created = run_for(inspect, MINUTE).stdout;
            !cutoff.is_empty() && created.trim() < cutoff.as_str()
        })
        .map(String::from)
        .collect();
    if !old.is_empty() {
        let mut rmi = Command::new(docker);
        rmi.arg("rmi").args(&old);
        run_for(rmi, MINUTE);
    }
}

pub(crate) fn setup() -> &'static Setup {
    static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();
    match SETUP.get_or_init(build_setup) {
        Ok(s) => s,
        Err(e) => panic!("e2e setup failed: {e}"),
    }
}
