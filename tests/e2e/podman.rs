//! Podman, rootful and rootless (tests/docker/podman.sh prepares both).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::run::*;
use crate::setup::*;
use crate::support::{privileged, workspace_root};

/// How to call podman in one of its two modes.
pub(crate) struct Podman {
    rootless: bool,
    binary: String,
    user: (String, String),
    home: String,
}

impl Podman {
    pub(crate) fn both() -> [Podman; 2] {
        let s = setup();
        let mut prepare = script("podman.sh");
        prepare.args([s.image.as_str(), s.tools_image.as_str()]);
        let vars = assignments(&must(prepare, 10 * MINUTE).stdout);
        let var = |name: &str| {
            vars.get(name)
                .unwrap_or_else(|| panic!("podman.sh printed no {name}="))
                .clone()
        };
        let user = (var("ROOTLESS_UID"), var("ROOTLESS_GID"));
        [false, true].map(|rootless| Podman {
            rootless,
            binary: var("PODMAN"),
            user: user.clone(),
            home: var("ROOTLESS_HOME"),
        })
    }

    pub(crate) fn mode(&self) -> &'static str {
        if self.rootless {
            "rootless"
        } else {
            "rootful"
        }
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = if self.rootless {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid",
                &self.user.0,
                "--regid",
                &self.user.1,
                "--init-groups",
            ])
            .arg(&self.binary)
            .current_dir(&self.home)
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", format!("/run/user/{}", self.user.0));
            cmd
        } else {
            Command::new(&self.binary)
        };
        cmd.args(["--log-level=error", "--runtime", "runc"])
            .args(args);
        cmd
    }

    pub(crate) fn run(&self, args: &[&str]) -> Out {
        run_for(self.cmd(args), MINUTE)
    }

    /// `podman run -d` with the options every container here needs (see podman.sh).
    pub(crate) fn start(&self, name: &str, args: &[&str]) -> Out {
        let mut full = vec![
            "run",
            "-d",
            "--name",
            name,
            "--no-healthcheck",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ];
        full.extend_from_slice(args);
        self.run(&full)
    }
}

/// Rootful and rootless Podman (4.3, Debian's) run the image unchanged: on an internal network
/// with the world's DNS, the agent starts behind a verified fence that holds, and `cordon check`
/// is ok as node.
#[test]
pub(crate) fn podman_rootful_and_rootless_run_the_image_unchanged() {
    if !privileged() {
        return;
    }
    let s = setup();
    let mut failures = Vec::new();
    for (n, podman) in Podman::both().iter().enumerate() {
        let mode = podman.mode();
        let tag = format!("cde-{}-p{n}", std::process::id());
        let p4 = format!(
            "10.217.{}",
            10 + (std::process::id() as usize * 3 + n) % 240
        );
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The world's root is the rootless user's uid outside: let it write its logs.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let (world, sandbox) = (format!("{tag}-world"), format!("{tag}-sandbox"));
        let cleanup = || {
            podman.run(&["rm", "-f", "-t", "0", &world, &sandbox]);
            podman.run(&["network", "rm", "-f", &tag]);
        };
        cleanup();
        let created = podman.run(&[
            "network",
            "create",
            "--internal",
            "--subnet",
            &format!("{p4}.0/24"),
            &tag,
        ]);
        assert!(created.ok(), "{mode}: {}", created.both());
        // Rootful bridges are forwarded by this host, whose FORWARD policy Docker set to DROP.
        let bridge = podman.run(&["network", "inspect", "-f", "{{.NetworkInterface}}", &tag]);
        let bridge = bridge.stdout.trim().to_string();
        let forward = [
            "FORWARD",
            "-i",
            &bridge,
            "-o",
            &bridge,
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "ACCEPT",
        ];
        if !podman.rootless {
            crate::support::run("iptables", &[&["-I"][..], &forward].concat());
        }
        let testkit = format!("{}:/opt/testkit/testkit:ro", s.testkit.display());
        let world_sh = format!(
            "{}:/opt/e2e/world.sh:ro",
            workspace_root().join("tests/e2e/world.sh").display()
        );
        let out_dir = format!("{}:/out", dir.display());
        let started = podman.start(
            &world,
            &[
                "--network",
                &tag,
                "--ip",
                &format!("{p4}.2"),
                "--cap-add",
                "NET_ADMIN",
                "-v",
                &testkit,
                "-v",
                &world_sh,
                "-v",
                &out_dir,
                "--entrypoint",
                "/bin/sh",
                &s.tools_image,
                "/opt/e2e/world.sh",
                "/out",
                &p4,
                "-",
            ],
        );
        assert!(started.ok(), "{mode} world: {}", started.both());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !["dns.ready", "listen.ready"]
            .iter()
            .all(|f| dir.join(f).exists())
        {
            assert!(
                Instant::now() < deadline,
                "{mode}: the world never got ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The first container a fresh netavark (1.4) bridge connects after the world gets no ARP
        // answer from it (measured here, cordon aside: a plain probe container times out, the
        // next one is answered). A throwaway probe container goes first, until one is answered.
        let resolver = format!("dns:api.anthropic.com@{p4}.2");
        let warmed = (0..5).any(|_| {
            let probe = podman.run(&[
                "run",
                "--rm",
                "--no-healthcheck",
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
                "--network",
                &tag,
                "-v",
                &testkit,
                "--entrypoint",
                "/opt/testkit/testkit",
                &s.tools_image,
                "probe",
                "--timeout-ms",
                "1000",
                &resolver,
            ]);
            probe.stdout.contains(" answered ")
        });
        assert!(
            warmed,
            "{mode}: no container on the network reaches the world"
        );
        let started = podman.start(
            &sandbox,
            &[
                "--network",
                &tag,
                "--dns",
                &format!("{p4}.2"),
                // The world's allowed host is on the sandbox's own network, where the DNS
                // gateway lets a name open an address only if an address entry covers it.
                "-e",
                &format!("CORDON_ALLOW={p4}.10:9"),
                "--cap-add",
                "NET_ADMIN",
                "--cap-add",
                "NET_RAW",
                "-v",
                &testkit,
                &s.image,
                "sleep",
                "infinity",
            ],
        );
        assert!(started.ok(), "{mode} sandbox: {}", started.both());
        let deadline = Instant::now() + Duration::from_secs(30);
        let logs = loop {
            let logs = podman.run(&["logs", &sandbox]).both();
            if logs.contains("cordon: starting sleep as node") || Instant::now() > deadline {
                break logs;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut problems = Vec::new();
        if !logs.contains("cordon: starting sleep as node") {
            let state = podman.run(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
            problems.push(format!(
                "the agent never started:\n{logs}\n{}",
                state.both()
            ));
        } else {
            let specs = [
                format!("dns:api.anthropic.com@{p4}.2"),
                format!("tcp:{p4}.10:443"),
                format!("tcp:{p4}.20:443"),
                format!("tcp:{p4}.3:22"),
                format!("udp:{p4}.10:443"),
                format!("dns:example.com@{p4}.53"),
                "tcp:169.254.169.254:80".to_string(),
            ];
            let mut probe = vec![
                "exec",
                "-u",
                "node",
                &sandbox,
                "/opt/testkit/testkit",
                "probe",
            ];
            probe.extend(specs.iter().map(String::as_str));
            let got = podman.run(&probe).stdout;
            eprintln!("podman {mode}: probes as node:\n{got}");
            let verdict = |spec: &str| -> String {
                got.lines()
                    .find(|l| l.starts_with(&format!("{spec} ")))
                    .map(|l| {
                        l.split_whitespace()
                            .skip(1)
                            .take(2)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            };
            let expect = |spec: &String, ok: &[&str], problems: &mut Vec<String>| {
                let v = verdict(spec);
                if !ok.iter().any(|want| v.starts_with(want)) {
                    problems.push(format!("{spec}: expected {ok:?}, got {v:?}"));
                }
            };
            expect(&specs[0], &[&format!("answered {p4}.10")], &mut problems);
            expect(&specs[1], &["open"], &mut problems);
            for blocked in &specs[2..4] {
                expect(blocked, &["refused"], &mut problems);
            }
            expect(&specs[4], &["rejected"], &mut problems);
            // DNS to another server reaches cordon's DNS gateway, which refuses the name.
            expect(&specs[5], &["error REFUSED"], &mut problems);
            // An internal Podman network has no default route: routing stops this one.
            expect(&specs[6], &["refused", "unreachable"], &mut problems);
            let listened = std::fs::read_to_string(dir.join("listen.log")).unwrap_or_default();
            if !listened.contains(&format!("tcp {p4}.10:443 ")) {
                problems.push(format!("the allowed connection was not seen:\n{listened}"));
            }
            for never in [format!("tcp {p4}.20:"), format!("tcp {p4}.3:")] {
                if listened.contains(&never) {
                    problems.push(format!("{never} was reached:\n{listened}"));
                }
            }
            let check = podman.run(&["exec", "-u", "node", &sandbox, "cordon", "check"]);
            if !check.ok() || !check.stdout.contains("the sandbox holds") {
                problems.push(format!("cordon check as node: {}", check.both()));
            }
        }
        cleanup();
        if !podman.rootless {
            crate::support::run("iptables", &[&["-D"][..], &forward].concat());
        }
        let _ = std::fs::remove_dir_all(&dir);
        failures.extend(problems.into_iter().map(|p| format!("{mode}: {p}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
