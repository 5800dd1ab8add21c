//! The base-image devcontainer and the init-firewall.sh drop-in.

use std::time::Duration;

use crate::run::{run_for, MINUTE};
use crate::support::{privileged, workspace_root};
use crate::world::*;

/// VS Code keeps the ENTRYPOINT and replaces CMD with its keep-alive shell: cordon fences, then
/// runs it as node; the editor's `docker exec -u node` sessions are behind the fence.
#[test]
fn devcontainer_keep_alive_cmd_runs_as_node_behind_the_fence() {
    if !privileged() {
        return;
    }
    let world = World::new();
    // VS Code's keep-alive (overrideCommand with the image's ENTRYPOINT kept).
    let keep_alive = "echo Container started; trap \"exit 0\" 15; exec \"$@\"; while sleep 1 & wait $!; do :; done";
    let c = world.start(
        "vscode",
        Dns::Embedded,
        &args(&[&CAPS, &[&world.s.image, "/bin/sh", "-c", keep_alive, "-"]]),
    );
    let logs = world.wait_log(&c, "cordon: starting /bin/sh as node", 1);
    world.wait_log(&c, "Container started", 1);
    assert!(logs.contains("cordon: fence ready"), "{logs}");
    world.assert_agent_is_node(&c, "sh");
    world.assert_fenced(&c, Dns::Embedded);
    // The keep-alive traps SIGTERM with `exit 0`: docker stop gives that status, at once.
    let out = world.docker_must(&["stop", c.as_str()]);
    assert!(
        out.elapsed < Duration::from_secs(2),
        "docker stop took {:?}",
        out.elapsed
    );
    assert_eq!(world.inspect(&c, "{{.State.ExitCode}}"), "0");
}

/// The devcontainer CLI with docker/devcontainer/devcontainer.json ("overrideCommand": false):
/// `--entrypoint /bin/sh IMAGE -c '<its script>' - <image ENTRYPOINT> <image CMD>`, i.e. the shell
/// execs `cordon sleep infinity`; cordon becomes PID 1 and runs the keep-alive as node.
#[test]
fn devcontainer_cli_form_runs_cordon_as_pid1_and_the_keep_alive_as_node() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let image = world.s.devcontainer_image.as_str();
    // What the devcontainer CLI appends: the image's ENTRYPOINT and CMD.
    let config = world.docker_must(&[
        "image",
        "inspect",
        "-f",
        "{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}",
        image,
    ]);
    let tail: Vec<&str> = config.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(tail, ["/usr/local/bin/cordon", "sleep", "infinity"]);
    // The devcontainer CLI's script (src/spec-node/singleContainer.ts), no custom entrypoints.
    let script = "echo Container started\ntrap \"exit 0\" 15\n\nexec \"$@\"\nwhile sleep 1 & wait $!; do :; done";
    let workspace = world.dir.join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let volume = format!("{}-claude", world.net);
    world.volumes.lock().unwrap().push(volume.clone());
    let mut parts = vec![
        "--mount".to_string(),
        format!("type=bind,src={},dst=/workspace", workspace.display()),
        "--mount".into(),
        format!("source={volume},target=/home/node/.claude,type=volume"),
        "-e".into(),
        "CORDON_PROFILE=vscode".into(),
    ];
    // The example's runArgs, as the CLI passes them.
    let config_text =
        std::fs::read_to_string(workspace_root().join("docker/devcontainer/devcontainer.json"))
            .unwrap();
    let run_args = config_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"runArgs\":"))
        .expect("runArgs in devcontainer.json");
    let run_args: Vec<String> = run_args
        .split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert!(
        run_args.contains(&"--security-opt=no-new-privileges".to_string()),
        "{run_args:?}"
    );
    parts.extend(run_args);
    parts.extend([
        "--entrypoint".into(),
        "/bin/sh".into(),
        image.into(),
        "-c".into(),
        script.into(),
        "-".into(),
    ]);
    parts.extend(tail.iter().map(|s| s.to_string()));
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let c = world.start("devcontainer", Dns::Embedded, &parts);
    let logs = world.wait_log(&c, "cordon: starting sleep as node", 1);
    assert!(logs.starts_with("Container started"), "{logs}");
    world.assert_agent_is_node(&c, "sleep");
    world.assert_fenced(&c, Dns::Embedded);
    // A terminal (docker exec as node) gets no_new_privs too: no setuid file can raise it.
    let status = world.exec("node", &c, &["cat", "/proc/self/status"]);
    assert!(
        status.stdout.lines().any(|l| l == "NoNewPrivs:\t1"),
        "{}",
        status.stdout
    );
    // The `vscode` profile from containerEnv is in the allowlist: the DNS gateway answers its
    // names (the world's allowed address) and refuses names no profile holds.
    let got = world.probe(
        &c,
        &[
            "dns:marketplace.visualstudio.com@127.0.0.11".to_string(),
            "dns:registry.npmjs.org@127.0.0.11".to_string(),
        ],
    );
    assert_eq!(
        got["dns:marketplace.visualstudio.com@127.0.0.11"],
        ("answered".to_string(), world.a("10")),
        "claude + vscode profiles: {logs}"
    );
    assert_eq!(
        got["dns:registry.npmjs.org@127.0.0.11"],
        ("error".to_string(), "REFUSED".to_string())
    );
    let out = world.docker_must(&["stop", c.as_str()]);
    assert!(
        out.elapsed < Duration::from_secs(2),
        "docker stop took {:?}",
        out.elapsed
    );
    assert_eq!(world.inspect(&c, "{{.State.ExitCode}}"), "143");
}

/// The base-image devcontainer's credential route: the key as a root-only secret file (the
/// example's mount), an editor terminal (`docker exec -u node` with the example's remoteEnv)
/// running the real CLI: the turn completes through the credential gateway with the real key,
/// and neither the terminal's environment nor the container's configuration holds it.
#[test]
fn devcontainer_terminal_uses_the_credential_gateway() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let image = world.s.devcontainer_image.as_str();
    let config =
        std::fs::read_to_string(workspace_root().join("docker/devcontainer/devcontainer.json"))
            .unwrap();
    assert!(
        config.contains("target=/run/secrets/anthropic_api_key,type=bind,readonly"),
        "the example mounts the secret file"
    );
    let remote_env = remote_env(&config);
    assert_eq!(
        remote_env
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"],
        "{remote_env:?}"
    );
    let secret = root_only_secret(&world);
    let mut parts = vec![
        "--cap-add=NET_ADMIN".to_string(),
        "--cap-add=NET_RAW".into(),
        "--security-opt=no-new-privileges".into(),
        "--mount".into(),
        format!(
            "type=bind,src={},dst=/run/secrets/anthropic_api_key,readonly",
            secret.display()
        ),
    ];
    parts.extend(world.credential_upstream_args());
    parts.push(image.into());
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let c = world.start("devcontainer-credential", Dns::Embedded, &parts);
    let logs = world.wait_log(&c, "cordon: starting sleep as node", 1);
    assert!(logs.contains("credential gateway (uid 65054)"), "{logs}");

    let mut exec = world.docker();
    exec.args(["exec", "-u", "node", "-w", "/tmp"]);
    for (name, value) in &remote_env {
        exec.args(["-e", &format!("{name}={value}")]);
    }
    exec.args([
        c.as_str(),
        "claude",
        "--dangerously-skip-permissions",
        "-p",
        "Say hello",
    ]);
    let turn = run_for(exec, 3 * MINUTE);
    assert!(
        turn.ok() && turn.stdout.contains("cordon-e2e-reply"),
        "{}",
        turn.both()
    );
    assert_the_api_got_the_real_key_and_node_has_none(&world, &c);
    let configured = world.inspect(&c, "{{json .Config.Env}}");
    assert!(!configured.contains(E2E_API_KEY), "{configured}");
    // And node cannot read the file.
    let read = world.exec("node", &c, &["cat", "/run/secrets/anthropic_api_key"]);
    assert!(
        !read.ok() && !read.stdout.contains(E2E_API_KEY),
        "{}",
        read.both()
    );
}

/// The drop-in with a credential: the secret file (the example's mount) makes
/// `sudo init-firewall.sh` leave a credential gateway daemon beside the DNS one; a terminal
/// with the example's remoteEnv sends an API request through it as the CLI would (this image
/// has no CLI: curl with the placeholder), which reaches the API with the real key, which no
/// session of node's holds. A rerun replaces the daemon; killed, the agent's requests
/// are refused (never sent another way) until the next run.
#[test]
fn dropin_terminal_uses_the_credential_gateway_daemon() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let config = std::fs::read_to_string(
        workspace_root().join("docker/devcontainer-dropin/devcontainer.json"),
    )
    .unwrap();
    assert!(
        config.contains("target=/run/secrets/anthropic_api_key,type=bind,readonly"),
        "the example mounts the secret file"
    );
    let remote_env = remote_env(&config);
    let secret = root_only_secret(&world);
    let script = "echo Container started\ntrap \"exit 0\" 15\n\nexec \"$@\"\nwhile sleep 1 & wait $!; do :; done";
    let mount = format!(
        "type=bind,src={},dst=/run/secrets/anthropic_api_key,readonly",
        secret.display()
    );
    // sudo passes no SSL_CERT_FILE: the test CA is the system store here.
    let mut upstream = world.credential_upstream_args();
    upstream.extend([
        "-v".into(),
        format!(
            "{}:/etc/ssl/certs/ca-certificates.crt:ro",
            world.dir.join("pki/ca.pem").display()
        ),
    ]);
    let mut parts: Vec<&str> = vec!["--user", "node", "--mount", &mount];
    parts.extend(upstream.iter().map(String::as_str));
    parts.extend(CAPS);
    parts.extend([
        "--entrypoint",
        "/bin/sh",
        &world.s.dropin_image,
        "-c",
        script,
        "-",
    ]);
    let c = world.start("dropin-credential", Dns::Embedded, &parts);
    world.wait_log(&c, "Container started", 1);
    let out = world.exec("node", &c, &["sudo", "/usr/local/bin/init-firewall.sh"]);
    assert!(out.ok(), "{}", out.both());
    assert!(
        out.stderr.contains("credential gateway (uid 65054)"),
        "{}",
        out.stderr
    );
    assert!(!out.both().contains(E2E_API_KEY));

    let turn = |world: &World| {
        let mut exec = world.docker();
        exec.args(["exec", "-u", "node", "-w", "/tmp"]);
        for (name, value) in &remote_env {
            exec.args(["-e", &format!("{name}={value}")]);
        }
        exec.args([
            c.as_str(),
            "sh",
            "-c",
            "curl -sSf --max-time 10 -X POST \"$ANTHROPIC_BASE_URL/v1/messages/count_tokens\" \
             -H \"authorization: Bearer $ANTHROPIC_AUTH_TOKEN\" -d '{}'",
        ]);
        run_for(exec, MINUTE)
    };
    let first = turn(&world);
    assert!(
        first.ok() && first.stdout.contains("input_tokens"),
        "{}",
        first.both()
    );
    assert_the_api_got_the_real_key_and_node_has_none(&world, &c);

    // A rerun replaces the daemon; the next turn goes through the new one.
    let daemon = || {
        world
            .exec("root", &c, &["cat", "/run/cordon/credential-gateway.pid"])
            .stdout
            .trim()
            .to_string()
    };
    let before = daemon();
    let again = world.exec("node", &c, &["sudo", "/usr/local/bin/init-firewall.sh"]);
    assert!(again.ok(), "{}", again.both());
    let after = daemon();
    assert!(!after.is_empty() && after != before, "{before} → {after}");
    assert!(turn(&world).ok(), "after the rerun");
    // `cordon check` (the drop-in's `cordon` is init-firewall.sh under its other name) says it
    // runs, and after a kill that it does not; `init-firewall.sh check` answers the same.
    let check = || world.exec("node", &c, &["cordon", "check"]).stdout;
    let running = check();
    assert!(
        running.contains("credential gateway: running as uid 65054"),
        "{running}"
    );
    let same = world.exec("node", &c, &["/usr/local/bin/init-firewall.sh", "check"]);
    assert!(
        same.stdout
            .contains("credential gateway: running as uid 65054"),
        "{}",
        same.both()
    );
    // Killed: requests are refused, and nothing reaches the API.
    let requests = world
        .tls_mock_log()
        .lines()
        .filter(|l| l.contains("cred="))
        .count();
    assert!(world.exec("root", &c, &["kill", "-9", &after]).ok());
    let refused = turn(&world);
    assert!(
        !refused.ok(),
        "a turn without the gateway: {}",
        refused.both()
    );
    let down = check();
    assert!(down.contains("credential gateway: not running"), "{down}");
    assert_eq!(
        world
            .tls_mock_log()
            .lines()
            .filter(|l| l.contains("cred="))
            .count(),
        requests,
        "a request reached the API without the gateway"
    );
}

/// The API key in a file of the world's, root's alone (0600), to mount as a secret.
fn root_only_secret(world: &World) -> std::path::PathBuf {
    let secret = world.dir.join("anthropic_api_key");
    std::fs::write(&secret, E2E_API_KEY).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    secret
}

/// The API mock got the real key and never the placeholder; a terminal's environment (node's,
/// as an editor's) holds no key.
fn assert_the_api_got_the_real_key_and_node_has_none(world: &World, c: &str) {
    let tls = world.tls_mock_log();
    assert!(
        tls.contains(&format!("cred=x-api-key:{E2E_API_KEY}")),
        "{tls}"
    );
    assert!(!tls.contains("placeholder"), "{tls}");
    let env = world.exec("node", c, &["env"]);
    assert!(!env.stdout.contains(E2E_API_KEY), "{}", env.stdout);
}

/// The `remoteEnv` block of a devcontainer.json: NAME → VALUE, in order.
fn remote_env(config: &str) -> Vec<(String, String)> {
    config
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("\"remoteEnv\""))
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('}'))
        .filter_map(|l| {
            let quoted: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            match quoted[..] {
                [name, value] => Some((name.to_string(), value.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// An existing devcontainer with cordon dropped in as /usr/local/bin/init-firewall.sh
/// (docker/devcontainer-dropin): the container runs as node from the start, and
/// `sudo /usr/local/bin/init-firewall.sh` (its postStartCommand) fences it. The sudoers rule
/// allows exactly that, without arguments.
#[test]
fn dropin_init_firewall_via_sudo_fences_the_container() {
    if !privileged() {
        return;
    }
    let world = World::new();
    // VS Code with overrideCommand (the default): its keep-alive replaces the entrypoint.
    let script = "echo Container started\ntrap \"exit 0\" 15\n\nexec \"$@\"\nwhile sleep 1 & wait $!; do :; done";
    let c = world.start(
        "dropin",
        Dns::Embedded,
        &args(&[
            &["--user", "node"],
            &CAPS,
            &[
                "--entrypoint",
                "/bin/sh",
                &world.s.dropin_image,
                "-c",
                script,
                "-",
            ],
        ]),
    );
    world.wait_log(&c, "Container started", 1);
    let blocked = format!("tcp:{}:443", world.a("20"));
    let before = world.probe(&c, std::slice::from_ref(&blocked));
    assert_eq!(
        before[&blocked].0, "open",
        "no fence before the postStartCommand"
    );
    // Unfenced, `cordon check` (and `init-firewall.sh check`) as node says so in one line.
    assert_check_says_absent(&world, &c, "before the postStartCommand");
    // Flows the agent opens before the postStartCommand: a TCP and a UDP stream to the blocked
    // address, one socket each, a line every 100 ms (bash's /dev/tcp and /dev/udp). The TCP one
    // leaves a mark when a write fails.
    let streams = format!(
        "trap '' PIPE; exec 3<>/dev/tcp/{b}/443 4>/dev/udp/{b}/443; while echo x >&3; do echo x >&4; sleep \
         0.1; done 2>/dev/null; touch /tmp/tcp-ended; while :; do echo x >&4; sleep 0.1; done \
         2>/dev/null",
        b = world.a("20")
    );
    world.docker_must(&[
        "exec",
        "-d",
        "-u",
        "node",
        c.as_str(),
        "bash",
        "-c",
        &streams,
    ]);
    let datagrams = || {
        let needle = format!("udp {}:443 ", world.a("20"));
        std::fs::read_to_string(world.dir.join("listen.log"))
            .unwrap_or_default()
            .matches(&needle)
            .count()
    };
    let tcp_ended = || {
        world
            .exec("root", &c, &["test", "-e", "/tmp/tcp-ended"])
            .ok()
    };
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        datagrams() > 2,
        "the UDP stream reaches the world before the fence"
    );
    assert!(!tcp_ended(), "the TCP stream is alive before the fence");

    // The world's allowed host is on the container's own network, where the DNS gateway lets a
    // name open an address only if an address entry covers it (sudo drops the container's
    // CORDON_ALLOW, so the entry goes in a root-owned allowlist file).
    let entries = world.own_network_entries().replace("CORDON_ALLOW=", "");
    let write = format!("echo '{entries}' > /etc/cordon/allowlist.d/world");
    assert!(world.exec("root", &c, &["/bin/sh", "-c", &write]).ok());
    // The postStartCommand, as the container's user (node).
    let out = world.exec("node", &c, &["sudo", "/usr/local/bin/init-firewall.sh"]);
    eprintln!(
        "sudo init-firewall.sh: {:?} in {:.2}s\n{}",
        out.code,
        out.elapsed.as_secs_f64(),
        out.stderr
    );
    assert!(out.ok(), "{}", out.both());
    // The gateway stays as a daemon after the script exits (the drop-in's default).
    assert!(
        out.stderr.contains("DNS gateway (uid 65053)"),
        "anthropic-devcontainer profile: {}",
        out.stderr
    );
    assert!(out.stderr.contains("cordon: fence ready"), "{}", out.stderr);
    world.assert_fenced(&c, Dns::Embedded);
    // The streams from before the fence are judged again at their next packet.
    let fenced_at = datagrams();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        datagrams() <= fenced_at + 1,
        "the UDP stream from before the fence went on: {fenced_at} then {}",
        datagrams()
    );
    assert!(tcp_ended(), "the TCP stream from before the fence went on");

    // node cannot widen it: arguments are not in the sudoers rule, and no other rule exists.
    let widen = world.exec(
        "node",
        &c,
        &[
            "sudo",
            "/usr/local/bin/init-firewall.sh",
            "--allow",
            "evil.test",
        ],
    );
    assert_eq!(widen.code, Some(1), "{}", widen.both());
    assert!(
        widen.stderr.contains("password is required") || widen.stderr.contains("not allowed"),
        "sudo refuses: {}",
        widen.stderr
    );
    let other = world.exec("node", &c, &["sudo", "-n", "true"]);
    assert_eq!(other.code, Some(1), "{}", other.both());
    let after = world.probe(
        &c,
        &[blocked.clone(), "dns:evil.test@127.0.0.11".to_string()],
    );
    assert_eq!(
        after[&blocked].0, "refused",
        "evil.test's address stays blocked"
    );
    assert_eq!(
        after["dns:evil.test@127.0.0.11"],
        ("error".to_string(), "REFUSED".to_string())
    );
    // Fenced, the check no longer calls the fence absent.
    let fenced = world.exec("node", &c, &["cordon", "check"]);
    assert!(
        !fenced.stdout.contains("fence: absent") && fenced.stdout.contains("ok    fence:"),
        "{}",
        fenced.both()
    );
    // The postStartCommand runs again on every start: idempotent.
    let again = world.exec("node", &c, &["sudo", "/usr/local/bin/init-firewall.sh"]);
    assert!(again.ok(), "{}", again.both());
    world.assert_fenced(&c, Dns::Embedded);
    // A plain `docker restart` (no devcontainer CLI, so no postStartCommand) leaves no fence: the
    // README says so, and `cordon check` tells the user.
    world.docker_must(&["restart", "-t", "1", c.as_str()]);
    world.wait_log(&c, "Container started", 2);
    let restarted = world.probe(&c, std::slice::from_ref(&blocked));
    assert_eq!(
        restarted[&blocked].0, "open",
        "no fence after docker restart"
    );
    assert_check_says_absent(&world, &c, "after docker restart");
}

/// `cordon check` and `init-firewall.sh check` as node in an unfenced drop-in container: exit 1,
/// and the fence is one line that says it is absent and how to apply it.
fn assert_check_says_absent(world: &World, c: &str, when: &str) {
    for command in [&["cordon", "check"][..], &["init-firewall.sh", "check"]] {
        let out = world.exec("node", c, command);
        let fence: Vec<&str> = out
            .stdout
            .lines()
            .filter(|line| line.contains(" fence: "))
            .collect();
        eprintln!("{command:?} {when}: {:?}\n{}", out.code, out.stdout);
        assert_eq!(out.code, Some(1), "{when}: {}", out.both());
        assert_eq!(fence.len(), 1, "{when}: {}", out.both());
        assert!(
            fence[0].starts_with("FAIL  fence: absent")
                && fence[0].contains("sudo /usr/local/bin/init-firewall.sh"),
            "{when}: {}",
            fence[0]
        );
    }
}

/// The drop-in shape keeps the container running whatever cordon does: when `sudo
/// init-firewall.sh` refuses (here the container lacks NET_RAW, which the set match needs), it
/// still leaves egress denied, and says so in its one error line.
#[test]
fn dropin_refusal_leaves_the_running_container_denied() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let c = world.start(
        "dropin-no-raw",
        Dns::Embedded,
        &[
            "--user",
            "node",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "NET_RAW",
            "--entrypoint",
            "/bin/sh",
            &world.s.dropin_image,
            "-c",
            "echo Container started; exec sleep infinity",
        ],
    );
    world.wait_log(&c, "Container started", 1);
    let blocked = format!("tcp:{}:443", world.a("20"));
    let allowed = format!("tcp:{}:443", world.a("10"));
    let before = world.probe(&c, std::slice::from_ref(&blocked));
    assert_eq!(
        before[&blocked].0, "open",
        "no fence before init-firewall.sh"
    );

    let out = world.exec("node", &c, &["sudo", "/usr/local/bin/init-firewall.sh"]);
    eprintln!("sudo init-firewall.sh: {:?}\n{}", out.code, out.stderr);
    assert_eq!(out.code, Some(77), "{}", out.both());
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("cordon: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("--cap-add NET_RAW")
            && errors[0].ends_with("[egress is now denied except loopback]"),
        "{}",
        errors[0]
    );
    let after = world.probe(&c, &[blocked.clone(), allowed.clone()]);
    for spec in [&blocked, &allowed] {
        assert_ne!(after[spec].0, "open", "{spec} after the refusal");
    }
}
