//! The fence as users meet it: the real CLI, both DNS shapes, every container shape, refusals.

use std::process::Command;
use std::time::Duration;

use crate::run::*;
use crate::support::{privileged, workspace_root};
use crate::world::*;

/// How the CLI's credential travels in a turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// ANTHROPIC_API_KEY, held by cordon's credential gateway (the default).
    ApiKeyThroughTheGateway,
    /// CLAUDE_CODE_OAUTH_TOKEN (from `claude setup-token`), held by the gateway.
    OAuthTokenThroughTheGateway,
    /// `--no-credential-gateway`: the agent holds the key and talks to the API itself (here the
    /// plain-HTTP mock at http://api.anthropic.com).
    HeldByTheAgent,
}

/// The README's run command (docker/cordon-run) starts the real Claude Code CLI behind the fence:
/// `claude --dangerously-skip-permissions -p ...` completes against the Messages API mock.
/// With `--dns static` (names resolved at start), the credential held by the agent.
#[test]
fn the_real_claude_cli_answers_through_the_fence() {
    if !privileged() {
        return;
    }
    claude_completes_a_turn(
        &["CORDON_DNS=static"],
        Credential::HeldByTheAgent,
        false,
        Shape::DualStack,
    );
}

/// The defaults: the DNS gateway answers the CLI's names, the credential gateway holds the API
/// key (a secret file cordon-run copies in) and adds it to the CLI's requests, which reach the
/// API mock over TLS with the real key and never the placeholder.
#[test]
fn the_real_claude_cli_answers_through_the_dns_and_credential_gateways() {
    if !privileged() {
        return;
    }
    claude_completes_a_turn(
        &[],
        Credential::ApiKeyThroughTheGateway,
        false,
        Shape::DualStack,
    );
}

/// The same with an OAuth token (`claude setup-token`): it goes as a bearer token.
#[test]
fn the_real_claude_cli_answers_with_an_oauth_token_through_the_credential_gateway() {
    if !privileged() {
        return;
    }
    claude_completes_a_turn(
        &[],
        Credential::OAuthTokenThroughTheGateway,
        false,
        Shape::DualStack,
    );
}

/// An interactive start, at a terminal (tests/e2e/pty-turn.py answers the first-run dialogs,
/// types the prompt and waits for the reply), through the credential gateway.
#[test]
fn the_real_claude_cli_answers_interactively_through_the_credential_gateway() {
    if !privileged() {
        return;
    }
    claude_completes_a_turn(
        &[],
        Credential::ApiKeyThroughTheGateway,
        true,
        Shape::DualStack,
    );
}

/// The same with an OAuth token.
#[test]
fn the_real_claude_cli_answers_interactively_with_an_oauth_token() {
    if !privileged() {
        return;
    }
    claude_completes_a_turn(
        &[],
        Credential::OAuthTokenThroughTheGateway,
        true,
        Shape::DualStack,
    );
}

/// Both gateways on Docker's ordinary IPv4-only network, in a container started with
/// `--cap-drop ALL` and the README's minimum: the credential gateway's rules, upstream lookup
/// and restart budget work with what that shape grants.
#[test]
fn the_real_claude_cli_answers_through_the_credential_gateway_on_ipv4_only_with_minimum_caps() {
    if !privileged() {
        return;
    }
    claude_completes_a_turn(
        &[],
        Credential::ApiKeyThroughTheGateway,
        false,
        Shape::Ipv4OnlyMinimumCaps,
    );
}

/// The container network and capabilities a turn runs with.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// A dual-stack test network, cordon-run's capabilities.
    DualStack,
    /// An IPv4-only network (disable_ipv6=1), `--cap-drop ALL` and the README's minimum.
    Ipv4OnlyMinimumCaps,
}

fn claude_completes_a_turn(
    environment: &[&str],
    credential: Credential,
    interactive: bool,
    shape: Shape,
) {
    let world = match shape {
        Shape::DualStack => World::new(),
        Shape::Ipv4OnlyMinimumCaps => World::ipv4_only(),
    };
    let mut environment: Vec<String> = environment.iter().map(|e| e.to_string()).collect();
    environment.push(world.own_network_entries());
    let workspace = world.dir.join(format!("ws-{}", world.id));
    std::fs::create_dir_all(&workspace).unwrap();
    let name = world.name("claude");
    let base = format!("ws-{}", world.id);
    let (variable, secret) = match credential {
        Credential::ApiKeyThroughTheGateway => ("ANTHROPIC_API_KEY", E2E_API_KEY),
        Credential::OAuthTokenThroughTheGateway => ("CLAUDE_CODE_OAUTH_TOKEN", E2E_OAUTH_TOKEN),
        Credential::HeldByTheAgent => ("ANTHROPIC_API_KEY", "sk-ant-e2e-agent-held-key"),
    };
    let cordon_run = workspace_root().join("docker/cordon-run");
    let launcher = |dry_run: bool| {
        let mut cmd = if interactive && !dry_run {
            let mut at_a_terminal = Command::new("python3");
            at_a_terminal
                .arg(workspace_root().join("tests/e2e/pty-turn.py"))
                .args(["cordon-e2e-reply", "Say hello", "--"])
                .arg(&cordon_run);
            at_a_terminal
        } else {
            Command::new(&cordon_run)
        };
        cmd.current_dir(&workspace)
            .env("DOCKER", &world.s.docker)
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("CLAUDE_CODE_OAUTH_TOKEN")
            .env(variable, secret)
            .args(["--image", &world.s.image, "--name", &name])
            .args(environment.iter().flat_map(|e| ["-e", e.as_str()]))
            .arg(format!("--docker-arg=--network={}", world.net))
            .arg(format!("--docker-arg=--dns={}", world.dns_ip()));
        if shape == Shape::Ipv4OnlyMinimumCaps {
            cmd.arg("--docker-arg=--cap-drop=ALL");
            cmd.args(
                MINIMUM
                    .iter()
                    .map(|cap| format!("--docker-arg=--cap-add={cap}")),
            );
        }
        match credential {
            Credential::HeldByTheAgent => {
                cmd.args(["-e", "ANTHROPIC_BASE_URL=http://api.anthropic.com"])
                    .arg("--no-credential-gateway");
            }
            _ => {
                for arg in world.credential_upstream_args() {
                    cmd.arg(format!("--docker-arg={arg}"));
                }
            }
        }
        if dry_run {
            cmd.arg("--dry-run");
        }
        cmd.args(["claude", "--dangerously-skip-permissions"]);
        if !interactive {
            cmd.args(["-p", "Say hello"]);
        }
        cmd
    };
    // The credential never appears on a docker command line; by default it goes in as a file.
    let dry = must(launcher(true), MINUTE).stdout;
    assert!(!dry.contains(secret), "{dry}");
    match credential {
        Credential::HeldByTheAgent => {
            assert!(dry.contains(&format!(" -e {variable} ")), "{dry}")
        }
        _ => assert!(
            dry.contains(" create ") && dry.contains("/run/secrets/") && dry.contains(" start -a"),
            "{dry}"
        ),
    }
    eprintln!("cordon-run → {dry}");

    let out = run_for(launcher(false), 3 * MINUTE);
    // cordon-run's per-project ~/.claude volume.
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
    eprintln!(
        "claude exited {:?} after {:.1}s\n{}",
        out.code,
        out.elapsed.as_secs_f64(),
        out.stderr
    );
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    if interactive {
        // Everything the container printed went to the terminal; the driver saw the reply.
        assert!(out.stdout.contains("reply seen"), "{}", out.stdout);
    } else {
        assert_printed_turn(&out, &environment, credential, secret);
    }
    let (plain, tls) = (world.mock_log(), world.tls_mock_log());
    eprintln!("API mock (http):\n{plain}\nAPI mock (TLS, the gateway's upstream):\n{tls}");
    match credential {
        Credential::HeldByTheAgent => {
            assert!(plain.contains("POST /v1/messages"), "no request:\n{plain}");
            assert!(
                plain.contains(&format!("cred=x-api-key:{secret}")),
                "{plain}"
            );
        }
        _ => {
            let kind = match credential {
                Credential::ApiKeyThroughTheGateway => "x-api-key",
                _ => "bearer",
            };
            let messages: Vec<&str> = tls
                .lines()
                .filter(|l| l.starts_with("POST /v1/messages"))
                .collect();
            assert!(
                !messages.is_empty(),
                "no request through the gateway:\n{tls}"
            );
            for line in tls.lines().filter(|l| l.contains(" cred=")) {
                assert!(
                    line.ends_with(&format!("cred={kind}:{secret}")),
                    "the API got another credential: {line}"
                );
            }
            assert!(!tls.contains("placeholder"), "{tls}");
            if credential == Credential::OAuthTokenThroughTheGateway {
                assert!(
                    messages.iter().all(|l| l.contains("oauth-2025-04-20")),
                    "the OAuth beta: {tls}"
                );
            }
            assert!(
                !plain.contains("POST"),
                "the CLI reached the API another way:\n{plain}"
            );
        }
    }
    let volumes = world.volumes.lock().unwrap().clone();
    assert_eq!(volumes.len(), 1, "one HOME volume");
    if credential != Credential::HeldByTheAgent {
        // Nothing the agent wrote in its HOME (~/.claude, ~/.claude.json) holds the credential.
        let mut grep = world.docker();
        grep.args(["run", "--rm", "-v", &format!("{}:/h:ro", volumes[0])])
            .args(["--network", "none", "--entrypoint", "grep", &world.s.image])
            .args(["-rlF", secret, "/h"]);
        let found = run_for(grep, MINUTE);
        assert_eq!(
            found.code,
            Some(1),
            "the credential in HOME: {}",
            found.both()
        );
    }
}

/// What a `-p` turn printed: the reply, and cordon's start-up lines for this shape.
fn assert_printed_turn(out: &Out, environment: &[String], credential: Credential, secret: &str) {
    assert!(
        out.stdout.contains("cordon-e2e-reply"),
        "the mock's reply: {}",
        out.stdout
    );
    assert!(out.stderr.contains("cordon: fence ready"), "{}", out.stderr);
    assert!(!out.stderr.contains(secret), "{}", out.stderr);
    let gateway = out.stderr.contains("cordon: DNS gateway");
    let static_mode = environment.iter().any(|e| e == "CORDON_DNS=static");
    assert_eq!(gateway, !static_mode, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cordon: starting claude as node (uid 1000"),
        "{}",
        out.stderr
    );
    if credential != Credential::HeldByTheAgent {
        assert!(
            out.stderr
                .contains("cordon: credential gateway (uid 65054)"),
            "{}",
            out.stderr
        );
        // The CLI needs no Anthropic host of its own (measured: it asks the DNS gateway
        // for none of them): the default profile's are dropped in this mode.
        assert!(!out.stderr.contains("refused name"), "{}", out.stderr);
    }
}

#[test]
fn verdicts_hold_with_dockers_embedded_dns() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let c = world.start(
        "embedded",
        Dns::Embedded,
        &args(&[&CAPS, &[&world.s.image, "sleep", "infinity"]]),
    );
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let resolv = world.exec("node", &c, &["cat", "/etc/resolv.conf"]).stdout;
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    world.assert_fenced(&c, Dns::Embedded);
}

#[test]
fn verdicts_hold_with_a_resolv_conf_naming_the_resolver() {
    if !privileged() {
        return;
    }
    let world = World::new();
    let c = world.start(
        "mounted",
        Dns::Mounted,
        &args(&[&CAPS, &[&world.s.image, "sleep", "infinity"]]),
    );
    world.wait_log(&c, "cordon: starting sleep as node", 1);
    let resolv = world.exec("node", &c, &["cat", "/etc/resolv.conf"]).stdout;
    assert_eq!(resolv.trim(), format!("nameserver {}", world.dns_ip()));
    world.assert_fenced(&c, Dns::Mounted);
}

/// The shapes users bring, on Docker's ordinary IPv4-only network (disable_ipv6=1 in every
/// container): embedded DNS, the default bridge's resolv.conf, `--read-only` with the README's
/// tmpfs mounts, `--cap-drop ALL` with the README's minimum, `--init`, and the legacy backend.
/// Each must start the agent behind a verified fence that holds, with `cordon check` ok as node.
#[test]
fn every_container_shape_works_on_an_ipv4_only_network() {
    if !privileged() {
        return;
    }
    let world = World::ipv4_only();
    let image = world.s.image.as_str();
    let minimum: Vec<String> = ["--cap-drop".to_string(), "ALL".into()]
        .into_iter()
        .chain(cap_adds(&MINIMUM))
        .collect();
    let minimum: Vec<&str> = minimum.iter().map(String::as_str).collect();
    let cells: Vec<(&str, Dns, Vec<&str>)> = vec![
        ("embedded", Dns::Embedded, CAPS.to_vec()),
        ("default-bridge", Dns::Mounted, CAPS.to_vec()),
        (
            "read-only",
            Dns::Embedded,
            args(&[
                &CAPS,
                &["--read-only", "--tmpfs", "/run", "--tmpfs", "/tmp"],
            ]),
        ),
        ("cap-minimum", Dns::Embedded, minimum),
        ("init", Dns::Embedded, args(&[&CAPS, &["--init"]])),
        (
            "legacy",
            Dns::Embedded,
            args(&[&CAPS, &["-e", "CORDON_IPTABLES=legacy"]]),
        ),
    ];
    let started: Vec<(&str, Dns, String)> = cells
        .into_iter()
        .map(|(tag, dns, options)| {
            let command = [image, "sleep", "infinity"];
            let run = args(&[&options, &command]);
            (tag, dns, world.start(&format!("v4-{tag}"), dns, &run))
        })
        .collect();
    let mut failures = Vec::new();
    for (tag, dns, c) in &started {
        let logs = world.wait_log(c, "cordon: starting sleep as node", 1);
        if !logs.contains("IPv6 is off in this namespace") {
            failures.push(format!(
                "{tag}: the report does not say IPv6 is off:\n{logs}"
            ));
        }
        let mut problems = world.fence_problems(c, *dns);
        problems.extend(world.check_problems(c, "node"));
        problems.extend(world.check_problems(c, "root"));
        match *tag {
            "init" => {
                let procs = world.processes(c);
                let pid1 = procs.iter().find(|p| p.0 == 1).map(|p| p.1.as_str());
                if pid1 != Some("docker-init") || !procs.iter().any(|p| p.1 == "cordon") {
                    problems.push(format!(
                        "PID 1 is not docker-init with cordon below: {procs:#?}"
                    ));
                }
            }
            "legacy" if !logs.contains("(legacy iptables)") => {
                problems.push(format!("not loaded with iptables-legacy:\n{logs}"));
            }
            _ => {}
        }
        failures.extend(problems.into_iter().map(|p| format!("{tag}: {p}")));
    }
    // `docker stop` under --init: docker-init forwards SIGTERM to cordon, which forwards it on;
    // well before Docker's 10 s SIGKILL (the bound is loose: other suites run meanwhile).
    let init = &started.iter().find(|cell| cell.0 == "init").unwrap().2;
    let out = world.docker_must(&["stop", init.as_str()]);
    if out.elapsed > Duration::from_secs(5) || world.inspect(init, "{{.State.ExitCode}}") != "143" {
        failures.push(format!(
            "init: docker stop took {:?}, exit {}",
            out.elapsed,
            world.inspect(init, "{{.State.ExitCode}}")
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What cannot work is refused at once, in one line that names the fix, and the agent never
/// runs: `--network none`, `--cap-drop ALL` (alone, and with one capability short of the
/// minimum), a mistyped option, the legacy backend on a read-only /run.
#[test]
fn what_cannot_work_is_refused_at_once_with_the_fix() {
    if !privileged() {
        return;
    }
    let world = World::ipv4_only();
    let mark = format!("{}:/mark", world.dir.join("mark").display());
    let refused = |tag: &str, options: &[&str], cordon: &[&str]| -> Out {
        let name = world.name(tag);
        let mut cmd = world.docker();
        cmd.args(["run", "--rm", "--name", &name]);
        if !options.contains(&"--network") {
            cmd.args(world.dns_args(Dns::Embedded));
        }
        cmd.args(options)
            .args(["-v", &mark, &world.s.image])
            .args(cordon)
            .args(["--", "touch", &format!("/mark/{tag}")]);
        let out = run_for(cmd, MINUTE);
        eprintln!(
            "{tag}: {:?} in {:.2}s: {}",
            out.code,
            out.elapsed.as_secs_f64(),
            out.stderr
        );
        assert!(
            !world.dir.join("mark").join(tag).exists(),
            "{tag}: the agent ran"
        );
        assert!(
            out.elapsed < Duration::from_secs(5),
            "{tag}: took {:?}",
            out.elapsed
        );
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{tag}: one line: {}",
            out.stderr
        );
        out
    };

    let none = refused(
        "none",
        &["--network", "none", "--cap-add", "NET_ADMIN"],
        &[],
    );
    assert_eq!(none.code, Some(77));
    assert!(none.stderr.contains("--network none"), "{}", none.stderr);

    let all_dropped = refused("cap-drop-all", &["--cap-drop", "ALL"], &[]);
    assert_eq!(all_dropped.code, Some(77));
    let fix = cap_adds(&MINIMUM).join(" ");
    assert!(
        all_dropped
            .stderr
            .contains(&format!("run the container with {fix} (")),
        "the whole minimum, in one line: {}",
        all_dropped.stderr
    );

    let short: Vec<&str> = MINIMUM
        .iter()
        .copied()
        .filter(|c| *c != "SETPCAP")
        .collect();
    let short: Vec<String> = ["--cap-drop".to_string(), "ALL".into()]
        .into_iter()
        .chain(cap_adds(&short))
        .collect();
    let short: Vec<&str> = short.iter().map(String::as_str).collect();
    let one_short = refused("cap-one-short", &short, &[]);
    assert_eq!(one_short.code, Some(77));
    assert!(
        one_short
            .stderr
            .contains("SETPCAP (emptying the agent's capability sets")
            && one_short.stderr.contains("with --cap-add SETPCAP ("),
        "{}",
        one_short.stderr
    );

    let typo = refused("typo", &CAPS, &["--alow", "example.com"]);
    assert_eq!(typo.code, Some(64));
    assert!(typo.stderr.contains("'--allow'"), "{}", typo.stderr);

    let legacy_ro = refused(
        "legacy-read-only",
        &args(&[&CAPS, &["--read-only", "-e", "CORDON_IPTABLES=legacy"]]),
        &[],
    );
    assert_eq!(legacy_ro.code, Some(69));
    assert!(
        legacy_ro.stderr.contains("--tmpfs /run"),
        "{}",
        legacy_ro.stderr
    );
}
