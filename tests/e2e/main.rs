//! End to end, in real Docker: the image built from the public Dockerfile (offline: local Debian
//! base, this tree's static binary, the pinned Claude Code CLI installed locally), run the ways
//! users run it, on internal networks where the only other host is the test's own world.
//!
//! Setup, once per test process: tests/docker/ensure-docker.sh, base-image.sh, claude-cli.sh and
//! build-image.sh (the public Dockerfile with the offline build arguments), then the two example
//! devcontainer images (docker/devcontainer, docker/devcontainer-dropin) built on top of it.
//!
//! Each test gets its own `--internal --ipv6` network (tests/docker/test-net.sh, which also
//! isolates IPv6 on the host) and its own world container (tests/e2e/world.sh): DNS without
//! upstream, listeners, the Messages API mock, a LAN peer. Every container gets `--dns <world>`
//! (Docker's embedded DNS then forwards to the world, never to this machine's resolver) or a
//! read-only resolv.conf naming the world; nothing leaves the test network.
//!
//! World layout on P4.0/24 and P6::/64 (see tests/e2e/world.sh):
//!   P4.1 / P6::1        the network's gateway (the Docker host's bridge)
//!   P4.2 / P6::2        the world: the sandboxes' DNS server, listeners on :8080
//!   P4.3                a LAN peer (tcp 22, 80)
//!   P4.10 / P6::ff10    every allowlisted name: the Messages API mock on :80, a listener on :443
//!   P4.11               the Messages API mock over TLS on :443 (test CA): the credential
//!                       gateway's upstream for sandboxes given `--add-host api.anthropic.com:P4.11`
//!   P4.20 / P6::ff20    example.com, evil.test, ...: names no allowlist names (tcp 80, 443)
//!   P4.53               a DNS server that is not the sandboxes' resolver
//!   P4.128/25           where Docker puts the sandboxes

#[path = "../support/mod.rs"]
mod support;

mod run;
mod setup;
mod world;

mod check;
mod devcontainer;
mod fence;
mod gateway;
mod launcher;
mod lifecycle;
mod podman;
mod readme;
