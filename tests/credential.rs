//! The credential gateway, as root, in network namespaces: the agent's API requests go out with
//! the user's credential whatever they carry, the agent holds only a placeholder and cannot
//! reach the upstream itself, responses stream through as they are sent, the upstream's
//! certificate is verified, a secret file the agent could read is refused, and a killed gateway
//! comes back.

mod support;

use std::time::{Duration, Instant};

use support::world::*;
use support::{cordon, privileged, testkit};

const CREDENTIAL_UID: &str = "65054";
const DNS_GATEWAY_UID: &str = "65053";
const REAL_KEY: &str = "sk-ant-api03-REAL-user-key-0123456789";
const PLACEHOLDER: &str = "cordon-credential-gateway-placeholder";
const AGENTS_OWN_KEY: &str = "sk-ant-api03-attackers-own-key";

/// A world whose DNS answers api.anthropic.com with `SERVICE`, where a TLS mock of the API
/// (certificate from a test CA) takes only `expect` as credential.
fn api_world(expect: &str) -> World {
    let mut world = World::new(WorldOpts {
        records: vec![format!("api.anthropic.com={SERVICE}")],
        ..WorldOpts::default()
    });
    let pki = world.path("pki");
    // In a file only root reads: this host's processes share one PID namespace, and the agent
    // may read every command line.
    let expected = world.path("expected-credential");
    std::fs::write(&expected, expect).unwrap();
    std::fs::set_permissions(
        &expected,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    support::run(testkit(), &["pki", "--dir", &pki, "api.anthropic.com"]);
    let args = [
        "mock-api",
        "--listen",
        &format!("{SERVICE}:443"),
        "--tls-cert",
        &format!("{pki}/server.pem"),
        "--tls-key",
        &format!("{pki}/server-key.pem"),
        "--expect-credential-file",
        &expected,
        "--log",
        &world.path("api.log"),
    ]
    .map(String::from)
    .to_vec();
    world.spawn_in_world(args, "api.ready");
    std::fs::write(world.path("agent_http.py"), HTTP_CLIENT).unwrap();
    world
}

/// Requests as the agent would send them, from inside the sandbox: `req METHOD PATH [BYTES]
/// [HEADER: VALUE]...` prints the status and the body; `sse PATH` prints, per event, the
/// microseconds between the mock sending it and its arrival here. `sse-direct PATH ADDRESS CA`:
/// the same straight to the mock over TLS (from the world, for comparison).
const HTTP_CLIENT: &str = r#"
import http.client, os, socket, ssl, sys, time
mode, path = sys.argv[1], sys.argv[2]
conn = http.client.HTTPConnection("127.0.0.1", 10080, timeout=60)
if mode == "sse-direct":
    context = ssl.create_default_context(cafile=sys.argv[4])
    raw = socket.create_connection((sys.argv[3], 443), timeout=60)
    conn = http.client.HTTPConnection("api.anthropic.com", 443, timeout=60)
    conn.sock = context.wrap_socket(raw, server_hostname="api.anthropic.com")
    mode = "sse"
if mode == "req":
    method, size, headers = path, int(sys.argv[4]), {}
    for h in sys.argv[5:]:
        k, v = h.split(": ", 1)
        headers[k] = v
    conn.request(method, sys.argv[3], body=b"y" * size if size else None, headers=headers)
    r = conn.getresponse()
    print(r.status, r.read().decode())
    # Keep-alive: a second request on the same connection.
    conn.request("GET", "/v1/models", headers=headers)
    r = conn.getresponse()
    print("again", r.status, r.read().decode())
else:
    # The direct request carries the key itself (from the environment: a command line is
    # readable by every process).
    key = os.environ.get("DIRECT_KEY")
    conn.request("GET", path, headers={"x-api-key": key} if key else {})
    r = conn.getresponse()
    print("status", r.status, flush=True)
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            n, sent = line[6:].split()
            print(n.decode(), int(time.time() * 1e6) - int(sent), flush=True)
"#;

/// cordon with the credential in `env`, `/bin/sleep` as the agent.
fn start_sandbox(world: &World, env: &[(&str, String)]) -> SleepingAgent {
    let mut command = world.sandbox_command(cordon());
    command
        .args([
            "--no-harden",
            "--no-default-profile",
            "--allow",
            "allowed.test",
        ])
        .args(["--user", AGENT_UID, "--", "/bin/sleep", "300"])
        .env("SSL_CERT_FILE", world.path("pki/ca.pem"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    SleepingAgent::start(command, world.path("cordon.log"))
}

/// The agent's pid once it runs `/bin/sleep` (its uid changes before the exec, and until the
/// exec /proc shows cordon's environment).
fn agent_after_exec(sandbox: &SleepingAgent) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = sandbox.child_of_uid(AGENT_UID) {
            if status_field(pid, "Name").as_deref() == Some("sleep") {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent never ran: {}",
            sandbox.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `line` in the sandbox as the agent's uid; its stdout (its stderr goes to the test's).
fn as_agent(world: &World, line: &str) -> String {
    let output = world.sandbox_sh(&format!(
        "setpriv --reuid {AGENT_UID} --regid {AGENT_UID} --clear-groups {line}"
    ));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The agent's HTTP client (`HTTP_CLIENT`) with these arguments.
fn http(world: &World, args: &str) -> String {
    as_agent(
        world,
        &format!("/usr/bin/python3 {} {args}", world.path("agent_http.py")),
    )
}

/// Whether a process's writable memory (heap, stacks, data) holds `needle` (read as root).
fn memory_holds(pid: u32, needle: &str) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    for line in maps
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("rw-p"))
    {
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let mut bytes = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut bytes).is_err() {
            continue;
        }
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return true;
        }
    }
    false
}

fn api_log(world: &World) -> String {
    std::fs::read_to_string(world.path("api.log")).unwrap_or_default()
}

/// The whole promise with an API key in the environment: the agent gets the gateway's URL and
/// a placeholder, its requests (with the placeholder, a key of its own, or none; a 1 MB body;
/// two on one connection) reach the API with the user's key and nothing else, it cannot reach
/// the API itself, and no process it can read holds the key.
#[test]
fn the_agent_uses_the_api_only_through_the_gateway_and_never_holds_the_key() {
    if !privileged() {
        return;
    }
    let world = api_world(REAL_KEY);
    let sandbox = start_sandbox(&world, &[("ANTHROPIC_API_KEY", REAL_KEY.into())]);
    let log = sandbox.log();
    assert!(log.contains("credential gateway (uid 65054)"), "{log}");
    assert!(!log.contains(REAL_KEY), "the key in cordon's log");
    // The start-up report's line of what is open names the API as the gateway's alone.
    let opened = log.lines().find(|l| l.starts_with("cordon: opened: "));
    assert!(
        opened.is_some_and(
            |l| l.ends_with("; api.anthropic.com:443 through the credential gateway only")
        ),
        "{log}"
    );

    let agent = agent_after_exec(&sandbox);
    let environ = std::fs::read(format!("/proc/{agent}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains(&format!("ANTHROPIC_AUTH_TOKEN={PLACEHOLDER}")),
        "{environ}"
    );
    assert!(!environ.contains("ANTHROPIC_API_KEY="), "{environ}");
    assert!(
        environ.contains("ANTHROPIC_BASE_URL=http://127.0.0.1:10080"),
        "{environ}"
    );
    // cordon's own environment block no longer holds it either (wiped after reading), nor
    // that of the gateway forked from it.
    for pid in [
        sandbox.pid(),
        sandbox.wait_child_of_uid(CREDENTIAL_UID).unwrap(),
    ] {
        let own = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !String::from_utf8_lossy(&own).contains(REAL_KEY),
            "pid {pid}'s environment holds the key"
        );
    }
    // In memory: the credential gateway holds it (which shows the search finds it); the DNS
    // gateway, forked from the same cordon and parsing the agent's DNS, has forgotten it.
    let credential_gateway = sandbox.wait_child_of_uid(CREDENTIAL_UID).unwrap();
    let dns_gateway = sandbox.wait_child_of_uid(DNS_GATEWAY_UID).unwrap();
    assert!(
        memory_holds(credential_gateway, REAL_KEY),
        "the search finds nothing"
    );
    assert!(
        !memory_holds(dns_gateway, REAL_KEY),
        "the DNS gateway's memory holds the key"
    );
    // Nothing the agent's uid can read holds it: every process's environment and command line,
    // and the files under /proc it may open.
    let needle = world.path("needle");
    std::fs::write(&needle, REAL_KEY).unwrap();
    let search = as_agent(
        &world,
        &format!(
            "sh -c 'grep -l -a -F -f {needle} /proc/[0-9]*/environ /proc/[0-9]*/cmdline \
             2>/dev/null; echo searched'"
        ),
    );
    assert_eq!(search.trim(), "searched", "readable by the agent: {search}");

    let own_key = format!("x-api-key: {AGENTS_OWN_KEY}");
    let placeholder = format!("x-api-key: {PLACEHOLDER}");
    for headers in [
        placeholder.as_str(),
        own_key.as_str(),
        "anthropic-version: 2023-06-01",
    ] {
        let out = http(
            &world,
            &format!("req POST /v1/messages/count_tokens 0 '{headers}'"),
        );
        assert!(
            out.starts_with("200 {\"input_tokens\":1,\"bytes\":0}"),
            "{headers}: {out}"
        );
        assert!(out.contains("again 200"), "keep-alive: {out}");
    }
    let out = http(&world, "req POST /v1/messages/count_tokens 1048576");
    assert!(
        out.starts_with("200 {\"input_tokens\":1,\"bytes\":1048576}"),
        "{out}"
    );
    // Nothing but the Messages API: an OAuth token's own endpoints (which hand out keys), the
    // account's files, a path that climbs out of a prefix never leave.
    for path in [
        "/api/oauth/claude_cli/create_api_key",
        "/v1/files",
        "/v1/models/../../api/oauth",
    ] {
        let out = http(&world, &format!("req POST {path} 0"));
        assert!(out.starts_with("403 "), "{path}: {out}");
    }
    let seen = api_log(&world);
    assert!(
        !seen.contains("/api/") && !seen.contains("/v1/files"),
        "{seen}"
    );
    assert!(seen.lines().count() >= 8, "{seen}");
    for line in seen.lines().filter(|l| l.contains(" cred=")) {
        assert!(
            line.ends_with(&format!("cred=x-api-key:{REAL_KEY}")),
            "the API got another credential: {line}"
        );
    }
    assert!(
        !seen.contains(PLACEHOLDER) && !seen.contains(AGENTS_OWN_KEY),
        "{seen}"
    );

    // The agent cannot reach the API itself, with any key: the fence resets its connection
    // (the mock listens there, and took the gateway's).
    let direct = world.probe(&[&format!("tcp:{SERVICE}:443")]);
    assert_eq!(
        direct[&format!("tcp:{SERVICE}:443")],
        "refused",
        "{direct:?}"
    );
}

/// An OAuth token from a secret file named by CLAUDE_CODE_OAUTH_TOKEN_FILE travels as a bearer
/// token with the OAuth beta; the agent's own Authorization header is replaced.
#[test]
fn an_oauth_token_from_a_secret_file_goes_as_a_bearer_token() {
    if !privileged() {
        return;
    }
    let token = "sk-ant-oat01-REAL-oauth-token";
    let world = api_world(token);
    let file = world.path("oauth_token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let sandbox = start_sandbox(&world, &[("CLAUDE_CODE_OAUTH_TOKEN_FILE", file)]);
    let agent = agent_after_exec(&sandbox);
    let environ =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{agent}/environ")).unwrap())
            .into_owned();
    assert!(
        environ.contains(&format!("ANTHROPIC_AUTH_TOKEN={PLACEHOLDER}")),
        "{environ}"
    );
    assert!(
        !environ.contains("CLAUDE_CODE_OAUTH_TOKEN_FILE"),
        "{environ}"
    );
    let out = http(
        &world,
        &format!(
            "req POST /v1/messages/count_tokens 0 'authorization: Bearer {PLACEHOLDER}' \
             'anthropic-beta: claude-code-20250219'"
        ),
    );
    assert!(out.starts_with("200 "), "{out}");
    let seen = api_log(&world);
    // The OAuth beta the API wants with such a token, added by the gateway.
    assert!(
        seen.contains(&format!(
            "beta=claude-code-20250219,oauth-2025-04-20 cred=bearer:{token}"
        )),
        "{seen}"
    );
    assert!(!seen.contains(PLACEHOLDER), "{seen}");
}

/// Server-sent events arrive one by one as the API sends them, nothing held back: over a 30 s
/// stream every event arrives within 100 ms of being sent (they are 1 s apart), and the
/// gateway's median delay is within 5 ms of the same stream's straight to the API.
#[test]
fn a_stream_arrives_event_by_event() {
    if !privileged() {
        return;
    }
    let world = api_world(REAL_KEY);
    let _sandbox = start_sandbox(&world, &[("ANTHROPIC_API_KEY", REAL_KEY.into())]);
    let stream = "'/v1/models/testkit-sse?events=31&interval_ms=1000'";
    let script = world.path("agent_http.py");
    // Straight to the mock, at the same time, from the world (the fence keeps the sandbox out).
    let mut direct = std::process::Command::new("ip");
    direct
        .args(["netns", "exec", &world.world_ns, "sh", "-c"])
        .env("DIRECT_KEY", REAL_KEY)
        .arg(format!(
            "/usr/bin/python3 {script} sse-direct {stream} {SERVICE} {}",
            world.path("pki/ca.pem")
        ));
    let through = std::thread::spawn(move || direct.output());
    let gateway = http(&world, &format!("sse {stream}"));
    let direct = through.join().unwrap().unwrap();
    let direct = String::from_utf8_lossy(&direct.stdout).into_owned();
    let delays = |out: &str| -> Vec<i64> {
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("status 200"), "{out}");
        lines
            .map(|line| line.split_whitespace().nth(1).unwrap().parse().unwrap())
            .collect()
    };
    let (gateway, direct) = (delays(&gateway), delays(&direct));
    eprintln!("event delays in µs, through the gateway: {gateway:?}\ndirect: {direct:?}");
    assert_eq!((gateway.len(), direct.len()), (31, 31));
    let median = |delays: &[i64]| {
        let mut sorted = delays.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    // Each event as it comes: none waits for the next (1 s later) or for a buffer to fill.
    assert!(
        gateway.iter().all(|us| *us < 100_000),
        "through the gateway: {gateway:?}"
    );
    // And the latency added is within 5 ms of direct (medians: this machine's scheduling
    // jitter, with other tests running, reaches a few ms on single events either way).
    assert!(
        median(&gateway) <= median(&direct) + 5_000,
        "through the gateway: {gateway:?}; direct: {direct:?}"
    );
}

/// The upstream's certificate is verified: a server whose certificate no trusted CA signed gets
/// nothing, and the agent an error that says why.
#[test]
fn an_upstream_with_an_untrusted_certificate_gets_nothing() {
    if !privileged() {
        return;
    }
    let world = api_world(REAL_KEY);
    let other_ca = world.path("other");
    support::run(testkit(), &["pki", "--dir", &other_ca, "api.anthropic.com"]);
    // The other CA's bundle is the store the gateway trusts (last SSL_CERT_FILE wins).
    let _sandbox = start_sandbox(
        &world,
        &[
            ("ANTHROPIC_API_KEY", REAL_KEY.into()),
            ("SSL_CERT_FILE", format!("{other_ca}/ca.pem")),
        ],
    );
    let out = http(&world, "req POST /v1/messages 0");
    assert!(out.starts_with("502 "), "{out}");
    assert!(out.contains("TLS"), "{out}");
    assert!(!api_log(&world).contains("cred="), "{}", api_log(&world));
}

/// A secret file the agent's uid could read is refused, with the fix, and nothing starts.
#[test]
fn a_secret_file_the_agent_could_read_is_refused() {
    if !privileged() {
        return;
    }
    let world = World::new(WorldOpts::default());
    let file = world.path("api_key");
    std::fs::write(&file, REAL_KEY).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let output = world.cordon_with(
        &cordon(),
        &["--no-harden", "--user", AGENT_UID, "--", "/bin/true"],
        &[("ANTHROPIC_API_KEY_FILE", &file)],
    );
    assert_eq!(output.status.code(), Some(65));
    let text = stderr(&output);
    assert!(text.contains("could read this secret file"), "{text}");
    assert!(text.contains("chmod 600"), "{text}");
    assert!(!text.contains(REAL_KEY), "{text}");
}

/// The gateway runs as its own uid with no capabilities, no_new_privs, not dumpable; the agent
/// cannot signal it or take its port; killed, it is started again and requests go through.
#[test]
fn the_gateway_runs_confined_and_comes_back() {
    if !privileged() {
        return;
    }
    let world = api_world(REAL_KEY);
    let sandbox = start_sandbox(&world, &[("ANTHROPIC_API_KEY", REAL_KEY.into())]);
    let pid = sandbox
        .wait_child_of_uid(CREDENTIAL_UID)
        .expect("the gateway");
    let field = |key: &str| status_field(pid, key).unwrap();
    assert_eq!(field("Name"), "cordon-cred");
    assert!(field("Gid").split_whitespace().all(|g| g == CREDENTIAL_UID));
    assert_eq!(field("Groups"), "");
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(field(set), "0000000000000000", "{set}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(format!("/proc/{pid}/environ")).unwrap(),
    );
    assert_eq!(owner, 0, "the gateway is dumpable");
    let out = as_agent(
        &world,
        &format!(
            "sh -c 'kill -9 {pid}; echo kill=$?; /usr/bin/python3 -c \"import socket; \
             socket.socket().bind((\\\"127.0.0.1\\\", 10080))\" 2>/dev/null; echo bind=$?'"
        ),
    );
    assert!(out.contains("kill=1") && out.contains("bind=1"), "{out}");

    // SAFETY: killing the gateway this test's cordon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while sandbox
        .child_of_uid(CREDENTIAL_UID)
        .is_none_or(|p| p == pid)
    {
        assert!(
            Instant::now() < deadline,
            "not started again: {}",
            sandbox.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sandbox
        .log()
        .contains("the credential gateway was started again"));
    let out = http(&world, "req POST /v1/messages/count_tokens 0");
    assert!(out.starts_with("200 "), "{out}");
    // `cordon check` (as root: this harness keeps /run/cordon root's alone; as node in a
    // container, tests/e2e/devcontainer.rs) names it running.
    let check = world
        .sandbox_command(cordon())
        .arg("check")
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.contains("credential gateway: running as uid 65054"),
        "{check}"
    );
}
