#!/usr/bin/env bash
# Install the real Claude Code CLI (pinned) under .cache/claude-cli when not cached there, and
# print the path of its native binary.
#
#   CLAUDE_BIN=$(tests/docker/claude-cli.sh)
#
# What the npm package is (checked with 2.1.330): @anthropic-ai/claude-code is a thin wrapper
# whose optionalDependencies are per-platform packages (@anthropic-ai/claude-code-linux-x64 etc.)
# each holding one native executable `claude` (~380 MB, glibc, dynamically linked against only
# libc/libm/librt/libpthread/libdl and ld-linux-x86-64.so.2; no Node.js needed at run time). Its
# postinstall (install.cjs) hardlinks or copies that executable over the stub bin/claude.exe, and
# npm links PREFIX/bin/claude -> ../lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe.
# So the one file an image needs is bin/claude.exe after postinstall (the Dockerfile copies the
# package directory without node_modules, to keep npm's layout). If the postinstall did not run
# (npm configured to block install scripts), this script performs the same copy itself.
#
# The pinned version is the Dockerfile's `ARG CLAUDE_CODE_VERSION=` (one source of truth);
# CLAUDE_CODE_VERSION in the environment overrides it.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [ -z "${CLAUDE_CODE_VERSION:-}" ]; then
    CLAUDE_CODE_VERSION=$(sed -n 's/^ARG CLAUDE_CODE_VERSION=//p' "$ROOT/Dockerfile" | head -n 1)
fi
if [ -z "$CLAUDE_CODE_VERSION" ]; then
    echo "claude-cli: no ARG CLAUDE_CODE_VERSION= in $ROOT/Dockerfile and CLAUDE_CODE_VERSION unset" >&2
    exit 1
fi
PREFIX=${CLAUDE_CLI_PREFIX:-${CORDON_CACHE:-$ROOT/.cache}/claude-cli}
PKG=$PREFIX/lib/node_modules/@anthropic-ai/claude-code
BIN=$PKG/bin/claude.exe

log() { printf 'claude-cli: %s\n' "$*" >&2; }

is_elf() { [ -f "$1" ] && [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }

cached_ok() {
    is_elf "$BIN" || return 1
    grep -q "\"version\": *\"$CLAUDE_CODE_VERSION\"" "$PKG/package.json" 2>/dev/null || return 1
    local v
    v=$("$BIN" --version 2>/dev/null) || return 1
    [ "${v%% *}" = "$CLAUDE_CODE_VERSION" ]
}

if cached_ok; then
    echo "$BIN"
    exit 0
fi

case "$(uname -m)" in
x86_64) plat=linux-x64 ;;
aarch64) plat=linux-arm64 ;;
*)
    log "unsupported architecture $(uname -m)"
    exit 1
    ;;
esac
if [ -e /lib/ld-musl-x86_64.so.1 ] || [ -e /lib/ld-musl-aarch64.so.1 ]; then
    if ! [ -e /lib64/ld-linux-x86-64.so.2 ] && ! [ -e /lib/ld-linux-aarch64.so.1 ]; then
        plat=$plat-musl
    fi
fi

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        log "npm is missing and installing it needs root"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq npm || { apt-get update -qq && apt-get install -y -qq npm; }; } \
        >/tmp/claude-cli-apt.log 2>&1 || {
        log "apt-get install npm failed; see /tmp/claude-cli-apt.log"
        exit 1
    }
fi

rm -rf "$PREFIX"
mkdir -p "$PREFIX"
if ! npm install -g --no-fund --no-audit --loglevel=error --prefix "$PREFIX" \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >"$PREFIX.npm.log" 2>&1; then
    log "npm install failed; last lines of $PREFIX.npm.log:"
    tail -n 30 "$PREFIX.npm.log" >&2
    exit 1
fi

if ! is_elf "$BIN"; then
    # postinstall did not run: do its copy.
    native=$PKG/node_modules/@anthropic-ai/claude-code-$plat/claude
    [ -f "$native" ] || native=$PREFIX/lib/node_modules/@anthropic-ai/claude-code-$plat/claude
    if ! is_elf "$native"; then
        log "no native binary for $plat in the installed package (see $PREFIX.npm.log)"
        exit 1
    fi
    rm -f "$BIN"
    cp "$native" "$BIN"
    chmod 755 "$BIN"
fi

if ! cached_ok; then
    log "$BIN does not run or is not version $CLAUDE_CODE_VERSION: $("$BIN" --version 2>&1 | head -n 3)"
    exit 1
fi
echo "$BIN"
