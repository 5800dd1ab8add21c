# cordon: an image that fences its own egress, drops privileges and runs Claude Code.
#
#   docker build -t cordon .
#   docker run --rm -it --cap-add NET_ADMIN --cap-add NET_RAW \
#       -e ANTHROPIC_API_KEY -v "$PWD:/workspace" cordon
#
# Only the binary, for `COPY --from=` in another image (e.g. an existing devcontainer):
#   docker build --target binary -t cordon:binary .
#   COPY --from=cordon:binary /usr/local/bin/cordon /usr/local/bin/init-firewall.sh
#
# Build arguments (the defaults build everything from source and registries):
#   BASE_IMAGE      final stage's base (default: node:22-slim, pinned by digest)
#   RUST_IMAGE      toolchain for the `build` binary source
#   CORDON_BINARY   build   - compile cordon from this context (Cargo.toml, Cargo.lock, src/, testkit/)
#                   context - copy a prebuilt static binary named `cordon` from the build context
#   CLAUDE_SOURCE   npm     - `npm install -g @anthropic-ai/claude-code@CLAUDE_CODE_VERSION`
#                   context - copy an installed package directory `claude-code/` from the build
#                             context (npm's lib/node_modules/@anthropic-ai/claude-code after its
#                             postinstall, without node_modules)
#   CLAUDE_CODE_VERSION  the pinned CLI version
#
# With both sources set to `context`, the context is a small staging directory holding just
# `cordon` and `claude-code/` (tests/docker/build-image.sh makes it), and with a local base image
# that already has iptables, ipset and ca-certificates the build needs no registry at all:
#   docker build -f Dockerfile --build-arg BASE_IMAGE=cordon-test/base:bookworm \
#       --build-arg CORDON_BINARY=context --build-arg CLAUDE_SOURCE=context .cache/docker-context
#
# Needs BuildKit (DOCKER_BUILDKIT=1 or buildx): it selects stages by argument and skips the
# unused ones. No `# syntax=` line on purpose: that would fetch a frontend image from a registry.

# node:22-slim (Node 22.23.2, Debian bookworm) as published on 2026-09-19 (multi-arch index digest).
ARG BASE_IMAGE=node:22-slim@sha256:48e4b67d85f87bd551df43704e24d252f56cc5f8e9718841aace50f19948f0f9
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082
ARG CORDON_BINARY=build
ARG CLAUDE_SOURCE=npm
ARG CLAUDE_CODE_VERSION=2.1.330

# ---- cordon from source: a static musl binary --------------------------------------------------
FROM ${RUST_IMAGE} AS cordon-build
# musl-gcc: ring (TLS for the credential gateway) has C and assembly parts.
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY testkit ./testkit
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin cordon \
    && install -D -m 0755 target/x86_64-unknown-linux-musl/release/cordon /out/cordon

FROM scratch AS cordon-from-build
COPY --from=cordon-build --chmod=0755 /out/cordon /usr/local/bin/cordon

# ---- cordon prebuilt, from the build context ----------------------------------------------------
FROM scratch AS cordon-from-context
COPY --chmod=0755 cordon /usr/local/bin/cordon

# ---- the binary alone (FROM scratch): `docker build --target binary`, then COPY --from= it --------
FROM cordon-from-${CORDON_BINARY} AS binary

# ---- Claude Code CLI from npm --------------------------------------------------------------------
FROM ${BASE_IMAGE} AS claude-from-npm
ARG CLAUDE_CODE_VERSION
# The package's postinstall replaces bin/claude.exe with the native executable of this platform
# (a hardlink into the platform package). Drop the platform packages afterwards so that only one
# copy of the ~380 MB executable is carried over to the final stage.
RUN npm install -g --no-fund --no-audit --prefix /out/usr/local "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
    && cd /out/usr/local/lib/node_modules/@anthropic-ai/claude-code \
    && head -c 4 bin/claude.exe | grep -q ELF \
    && rm -rf node_modules \
    && { npm cache clean --force >/dev/null 2>&1 || true; }
RUN /out/usr/local/lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe --version

# ---- Claude Code CLI from the build context -----------------------------------------------------
FROM scratch AS claude-from-context
COPY claude-code /out/usr/local/lib/node_modules/@anthropic-ai/claude-code

FROM claude-from-${CLAUDE_SOURCE} AS claude

# ---- the image -----------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS image
ARG CLAUDE_CODE_VERSION
# iptables, ipset, ca-certificates: installed only when the base lacks them, so a base that has
# them builds without a package mirror.
RUN set -eu; missing=; \
    for p in iptables ipset ca-certificates; do \
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=claude /out/usr/local/lib/node_modules/@anthropic-ai/claude-code /usr/local/lib/node_modules/@anthropic-ai/claude-code
# Its mode is set here, not by a later chmod (which would copy the binary into a second layer).
COPY --from=binary --chmod=0755 /usr/local/bin/cordon /usr/local/bin/cordon
# npm's own layout (bin/claude -> ../lib/node_modules/...), whichever source the CLI came from.
# /home/node/.claude exists owned by node so that a fresh named volume mounted there is node's.
# `cordon harden` strips setuid/setgid bits, file capabilities and sudo now, so that the start
# finds nothing to strip: the image also runs with `docker run --read-only`.
RUN ln -sf ../lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe /usr/local/bin/claude \
    && ln -sf cordon /usr/local/bin/init-firewall.sh \
    && mkdir -p /workspace /etc/cordon/allowlist.d /home/node/.claude \
    && chown node:node /workspace /home/node/.claude \
    && claude --version \
    && /usr/local/bin/cordon harden
ENV DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
LABEL org.opencontainers.image.title="cordon" \
      org.opencontainers.image.description="Claude Code behind a verified egress allowlist" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.cordon.claude-code.version="${CLAUDE_CODE_VERSION}"
WORKDIR /workspace
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/cordon", "check", "--quiet"]
ENTRYPOINT ["/usr/local/bin/cordon"]
CMD ["claude", "--dangerously-skip-permissions"]
