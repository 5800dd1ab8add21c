//! `cordon check`, the HEALTHCHECK, and what an agent plants or mounts.

use std::time::{Duration, Instant};

use crate::run::*;
use crate::support::privileged;
use crate::world::*;

/// The image's HEALTHCHECK (`cordon check --quiet`) and `cordon check` by hand, as root and as
/// node, report that the sandbox holds once the agent runs; in both DNS shapes.
#[test]
fn cordon_check_and_the_healthcheck_report_healthy() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let mut failures = Vec::new();
    let mut containers = Vec::new();
    for (tag, dns) in [
        ("health-embedded", Dns::Embedded),
        ("health-mounted", Dns::Mounted),
    ] {
        // Only the interval is shortened (the Dockerfile's is 30 s); command and retries are the image's.
        let c = world.start(
            tag,
            dns,
            &args(&[
                &CAPS,
                &[
                    "--health-interval",
                    "1s",
                    &world.s.image,
                    "sleep",
                    "infinity",
                ],
            ]),
        );
        containers.push((c, dns));
    }
    for (c, dns) in &containers {
        world.wait_log(c, "cordon: starting sleep as node", 1);
        for user in ["root", "node"] {
            let out = world.exec(user, c, &["cordon", "check"]);
            eprintln!(
                "{dns:?}: cordon check as {user}: {:?}\n{}",
                out.code,
                out.both()
            );
            if !out.ok() {
                failures.push(format!(
                    "{dns:?}: `docker exec -u {user} C cordon check` exited {:?}:\n{}",
                    out.code,
                    out.both()
                ));
            }
        }
    }
    for (c, dns) in &containers {
        // Failures during the 15 s start period do not count; a success turns it healthy at once.
        let deadline = Instant::now() + Duration::from_secs(25);
        let status = loop {
            let status = world.inspect(c, "{{.State.Health.Status}}");
            if status != "starting" || Instant::now() > deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if status != "healthy" {
            failures.push(format!(
                "{dns:?}: health {status}; exit codes of the checks: {}; the first one said:\n{}",
                world.inspect(c, "{{range .State.Health.Log}}{{.ExitCode}} {{end}}"),
                world.inspect(c, "{{with index .State.Health.Log 0}}{{.Output}}{{end}}")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A surgical tamper (one blocked address added to an allowed set, as a process holding
    // NET_ADMIN could) leaves every structural check intact; the record catches it and the
    // HEALTHCHECK turns unhealthy (three failed checks, 1 s apart).
    let (c, _) = &containers[0];
    let blocked = world.a("20");
    world.docker_must(&[
        "exec",
        "-u",
        "root",
        c,
        "ipset",
        "add",
        "cordon4-hosts",
        &blocked,
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = world.inspect(c, "{{.State.Health.Status}}");
        if status != "healthy" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let said = world.inspect(c, "{{range .State.Health.Log}}{{.Output}}{{end}}");
    assert_eq!(status, "unhealthy", "{said}");
    let check = world.exec("root", c, &["cordon", "check", "--quiet"]);
    assert_eq!(check.code, Some(1), "{}", check.both());
    assert!(
        check
            .stdout
            .contains(&format!("set cordon4-hosts gained {blocked}")),
        "{}",
        check.stdout
    );
}

/// The agent plants firewall tools where the container's PATH looks first: a directory it owns
/// (~/.local/bin) and a relative entry (node_modules/.bin, resolved against the working
/// directory). Neither the HEALTHCHECK (`cordon check` as root) nor the entrypoint after a
/// `docker restart` runs them; the fence holds and the container stays healthy.
#[test]
fn tools_the_agent_plants_on_path_never_run_as_root() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let path = "PATH=/home/node/.local/bin:node_modules/.bin:/usr/local/sbin:/usr/local/bin:\
                /usr/sbin:/usr/bin:/sbin:/bin";
    let c = world.start(
        "planted",
        Dns::Embedded,
        &args(&[
            &CAPS,
            &[
                "-e",
                path,
                "-w",
                "/tmp",
                "--health-interval",
                "1s",
                &world.s.image,
                "sleep",
                "infinity",
            ],
        ]),
    );
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let plant = "for dir in /home/node/.local/bin /tmp/node_modules/.bin; do mkdir -p $dir; \
                 for tool in ipset iptables iptables-nft-restore ip6tables-nft-restore \
                 iptables-nft-save ip6tables-nft-save iptables-legacy-save xtables-nft-multi; do \
                 printf '#!/bin/sh\\ntouch /tmp/planted-ran\\n' > $dir/$tool; chmod 755 \
                 $dir/$tool; done; done";
    let planted = world.exec("node", &c, &["sh", "-c", plant]);
    assert!(planted.ok(), "{}", planted.both());
    // Let the HEALTHCHECK run a few times with the planted tools in place.
    std::thread::sleep(Duration::from_secs(3));
    world.docker_must(&["restart", c.as_str()]);
    world.wait_log(&c, "cordon: starting sleep as node", 2);
    std::thread::sleep(Duration::from_secs(2));
    let ran = world.exec("root", &c, &["test", "-e", "/tmp/planted-ran"]);
    assert_eq!(ran.code, Some(1), "a planted tool ran as root");
    world.assert_fenced(&c, Dns::Embedded);
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        let status = world.inspect(&c, "{{.State.Health.Status}}");
        if status != "starting" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(health, "healthy");
}

/// A volume of this world (removed with it) holding `suid`, a setuid-root copy of /bin/true, and
/// whatever `more` (a shell line run in it) adds; returns its `--mount` value at `dst`.
fn volume_with_setuid_file(world: &World, tag: &str, dst: &str, more: &str) -> String {
    let volume = format!("{}-{tag}", world.net);
    world.volumes.lock().unwrap().push(volume.clone());
    let mount = format!("type=volume,src={volume},dst={dst}");
    let fill = format!(
        "cd {dst} && cp /bin/true suid && chmod 4755 suid && {}",
        if more.is_empty() { "true" } else { more }
    );
    world.docker_must(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--mount",
        &mount,
        "--entrypoint",
        "/bin/sh",
        &world.s.image,
        "-c",
        &fill,
    ]);
    mount
}

/// harden strips only the root filesystem: a setuid file on a volume stays, and `cordon check`
/// names it. It fails while an exec session runs without no_new_privs (the agent could drive it
/// through ptrace to run the file); under `--security-opt no-new-privileges` the file is inert
/// and the check says so.
#[test]
fn check_names_setuid_files_on_other_mounts() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let mount = volume_with_setuid_file(&world, "suid", "/data", "");
    for (tag, extra) in [
        ("suid-plain", None),
        ("suid-nnp", Some("no-new-privileges")),
    ] {
        let mut parts: Vec<&str> = CAPS.to_vec();
        parts.extend(["--mount", &mount]);
        if let Some(option) = extra {
            parts.extend(["--security-opt", option]);
        }
        parts.extend([world.s.image.as_str(), "sleep", "infinity"]);
        let c = world.start(tag, Dns::Embedded, &parts);
        world.wait_log(&c, "cordon: starting sleep as node", 1);
        // An editor's terminal: an exec session of the agent's user.
        world.docker_must(&["exec", "-d", "-u", "node", c.as_str(), "sleep", "60"]);
        let check = world.exec("root", &c, &["cordon", "check"]);
        let line = check
            .stdout
            .lines()
            .find(|l| l.contains(" other mounts: "))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains("/data/suid (setuid root"),
            "{tag}: {}",
            check.stdout
        );
        match extra {
            None => {
                assert!(line.starts_with("FAIL "), "{tag}: {line}");
                assert_eq!(check.code, Some(1), "{tag}");
            }
            Some(_) => assert!(
                line.starts_with("note ") && line.contains("inert"),
                "{tag}: {line}"
            ),
        }
    }

    // A file --strip-mounts cannot strip (a read-only mount) stops the start before the agent.
    let read_only = format!("{mount},readonly");
    let mut parts: Vec<&str> = CAPS.to_vec();
    parts.extend(["--mount", &read_only, world.s.image.as_str()]);
    parts.extend(["--strip-mounts", "sh", "-c", "echo agent-ran"]);
    let c = world.start("suid-strip-ro", Dns::Embedded, &parts);
    let mut wait = world.docker();
    wait.args(["wait", c.as_str()]);
    let code = must(wait, MINUTE).stdout.trim().to_string();
    let logs = world.logs(&c);
    assert_ne!(code, "0", "{logs}");
    assert!(
        logs.contains("--strip-mounts: cannot remove") && logs.contains("/data/suid"),
        "{logs}"
    );
    assert!(!logs.contains("agent-ran"), "{logs}");

    // --strip-mounts strips the file before the agent starts (this changes the volume: last).
    let mut parts: Vec<&str> = CAPS.to_vec();
    parts.extend(["--mount", &mount, world.s.image.as_str()]);
    parts.extend(["--strip-mounts", "sleep", "infinity"]);
    let c = world.start("suid-strip", Dns::Embedded, &parts);
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let logs = world.logs(&c);
    assert!(
        logs.contains("--strip-mounts: ") && logs.contains("stripped /data/suid (setuid root"),
        "{logs}"
    );
    let mode = world.exec("root", &c, &["stat", "-c", "%a", "/data/suid"]);
    assert_eq!(mode.stdout.trim(), "755");
    world.docker_must(&["exec", "-d", "-u", "node", c.as_str(), "sleep", "60"]);
    let check = world.exec("root", &c, &["cordon", "check"]);
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("ok    other mounts: ")),
        "{}",
        check.stdout
    );
}

/// Copies /usr/bin/id, setuid root, into a created (not yet started) container: a privileged
/// file on its root filesystem, as a derived image would add.
fn plant_setuid_id(world: &World, container: &str) {
    let file = world.dir.join("suid-id");
    std::fs::copy("/usr/bin/id", &file).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let target = format!("{container}:/usr/local/bin/suid-id");
    world.docker_must(&["cp", file.to_str().unwrap(), &target]);
}

/// Stops the background harden helper (PID 1's child named cordon that stays uid 0; the DNS
/// gateway is another, of its own uid) as soon as it exists, so that a check can see the pass
/// running however fast it would be. Returns its host pid.
fn stop_the_helper(world: &World, container: &str) -> i32 {
    let init: i32 = world.inspect(container, "{{.State.Pid}}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
            .unwrap_or_default();
        for child in children.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            let status =
                std::fs::read_to_string(format!("/proc/{child}/status")).unwrap_or_default();
            let root = status.lines().any(|line| line.starts_with("Uid:\t0\t"));
            if comm.trim() == "cordon" && root {
                let pid: i32 = child.parse().unwrap();
                // SAFETY: a signal to a process of the test's own container.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no background harden helper appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// With `--security-opt no-new-privileges` the agent starts before harden: the pass runs beside
/// it, an exec session meanwhile cannot use the setuid file (it has no_new_privs), `cordon check`
/// says the pass is running and exits 0, then reports its result, and the file is stripped.
/// Without the switch harden comes first, as before, with a hint; the other mounts (here a
/// 100k-file workspace) are still scanned beside the agent, after it started, and what would work
/// there is named in the log.
#[test]
fn with_no_new_privileges_harden_runs_beside_the_agent() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let mount = volume_with_setuid_file(
        &world,
        "workspace",
        "/workspace",
        "for d in $(seq 1 100); do mkdir $d && (cd $d && seq 1 1000 | xargs touch); done",
    );

    let name = world.name("beside");
    let mut create = world.docker();
    create
        .args(["create", "--name", &name])
        .args(world.dns_args(Dns::Embedded))
        .args(CAPS)
        .args(["--security-opt", "no-new-privileges", "--mount", &mount])
        .args([world.s.image.as_str(), "sleep", "infinity"]);
    must(create, MINUTE);
    plant_setuid_id(&world, &name);
    // 50,000 more files on the root filesystem: the pass over it takes long enough for the host
    // to stop the helper before it reaches the planted file, however the walk is scheduled.
    let extra = world.dir.join("extra");
    for dir in 0..50 {
        let dir = extra.join(dir.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        for file in 0..1000 {
            std::fs::write(dir.join(file.to_string()), b"").unwrap();
        }
    }
    let target = format!("{name}:/opt/extra");
    world.docker_must(&["cp", extra.to_str().unwrap(), &target]);
    world.docker_must(&["start", &name]);
    let helper = stop_the_helper(&world, &name);
    world.wait_log(&name, "cordon: starting sleep as node", 1);

    let session = world.exec(
        "node",
        &name,
        &[
            "sh",
            "-c",
            "grep NoNewPrivs /proc/self/status; /usr/local/bin/suid-id -u",
        ],
    );
    assert_eq!(
        session.stdout,
        "NoNewPrivs:\t1\n1000\n",
        "{}",
        session.both()
    );
    let check = world.exec("node", &name, &["cordon", "check"]);
    assert!(check.ok(), "{}", check.both());
    assert!(
        check.stdout.contains("harden: running beside the agent"),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("/usr/local/bin/suid-id (setuid root)"),
        "{}",
        check.stdout
    );

    // SAFETY: a signal to the helper stopped above.
    assert_eq!(unsafe { libc::kill(helper, libc::SIGCONT) }, 0);
    let logs = world.wait_log(&name, "cordon: background harden done in ", 1);
    assert!(
        logs.find("cordon: starting sleep as node") < logs.find("background harden done"),
        "{logs}"
    );
    assert!(logs.contains("/workspace/suid (setuid root"), "{logs}");
    let mode = world.exec(
        "root",
        &name,
        &["stat", "-c", "%a", "/usr/local/bin/suid-id"],
    );
    assert_eq!(mode.stdout.trim(), "755");
    let check = world.exec("node", &name, &["cordon", "check"]);
    assert!(check.ok(), "{}", check.both());
    assert!(
        check.stdout.contains("harden: done beside the agent in "),
        "{}",
        check.stdout
    );

    // Without the switch: harden first, the hint, and the other mounts reported beside the agent.
    let mut parts: Vec<&str> = CAPS.to_vec();
    parts.extend([
        "--mount",
        &mount,
        world.s.image.as_str(),
        "sleep",
        "infinity",
    ]);
    let plain = world.start("before", Dns::Embedded, &parts);
    let logs = world.wait_log(&plain, "cordon: background harden done in ", 1);
    let hardened = logs.find("cordon: hardened /").expect("harden ran");
    assert!(
        hardened < logs.find("cordon: starting sleep as node").unwrap(),
        "{logs}"
    );
    assert!(
        logs.contains("hint: docker run --security-opt no-new-privileges"),
        "{logs}"
    );
    assert!(logs.contains("/workspace/suid (setuid root"), "{logs}");
}

/// The public Dockerfile sets the binary's mode as it copies it: the binary is in one layer of
/// the image, not copied again by a later `chmod` (and likewise in the drop-in example).
#[test]
fn the_binary_is_in_one_layer_of_the_image() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let binary = std::fs::metadata(crate::support::cordon()).unwrap().len();
    for image in [&world.s.image, &world.s.dropin_image] {
        let history = world.docker_must(&[
            "history",
            "--no-trunc",
            "--human=false",
            "--format",
            "{{.Size}}\t{{.CreatedBy}}",
            image,
        ]);
        let layers: Vec<(u64, &str)> = history
            .stdout
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(size, created_by)| (size.parse().unwrap(), created_by))
            .collect();
        let holding: Vec<&(u64, &str)> = layers
            .iter()
            .filter(|(size, created_by)| *size >= binary && created_by.contains("cordon"))
            .collect();
        assert_eq!(holding.len(), 1, "{image}:\n{}", history.stdout);
        assert!(
            holding[0].1.starts_with("COPY"),
            "{image}: {:?}",
            holding[0]
        );
        let copy = holding[0].1;
        assert!(copy.contains("/usr/local/bin/"), "{image}: {copy}");
    }
}
