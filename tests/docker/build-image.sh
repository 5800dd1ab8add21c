#!/usr/bin/env bash
# Build the public Dockerfile offline: local Debian base, prebuilt cordon, locally installed CLI.
#
#   eval "$(tests/docker/build-image.sh)"                 # sets IMAGE (and BASE_IMAGE, TOOLS_IMAGE)
#   tests/docker/build-image.sh --binary PATH --tag NAME
#
# Steps (each cached by the script it calls):
#   ensure-docker.sh  -> a daemon and a BuildKit-capable client
#   base-image.sh     -> cordon-test/base:bookworm (stands in for node:22-slim)
#   claude-cli.sh     -> the pinned Claude Code CLI under .cache/claude-cli
#   cordon binary     -> --binary PATH / CORDON_BIN, else `cargo build --release --locked
#                        --target x86_64-unknown-linux-musl --bin cordon` (CARGO_TARGET_DIR honoured)
#   staging           -> .cache/docker-context/{cordon,claude-code/} (hardlinks when possible)
#   docker build -f Dockerfile --build-arg BASE_IMAGE=... --build-arg CORDON_BINARY=context
#                --build-arg CLAUDE_SOURCE=context .cache/docker-context
# The staging directory is the build context, so nothing else of the work tree is sent and no
# .dockerignore games are needed. The build log is .cache/docker-build.log (shown on failure).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${CORDON_CACHE:-$ROOT/.cache}
TAG=${CORDON_IMAGE:-cordon-test/cordon:latest}
BIN=${CORDON_BIN:-}

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) BIN=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { printf 'build-image: %s\n' "$*" >&2; }

# shellcheck source=tests/docker/ensure-docker.sh
. "$HERE/ensure-docker.sh"
eval "$("$HERE/base-image.sh")"
CLAUDE_BIN=$("$HERE/claude-cli.sh")
CLAUDE_PKG=$(cd "$(dirname "$CLAUDE_BIN")/.." && pwd)

if [ -z "$BIN" ]; then
    target=x86_64-unknown-linux-musl
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        rustup target add "$target" >/dev/null 2>&1 || { log "rustup target add $target failed"; exit 1; }
    fi
    if ! (cd "$ROOT" && cargo build --quiet --release --locked --target "$target" --bin cordon) \
        >"$CACHE/cargo-musl.log" 2>&1; then
        log "cargo build failed; last lines of $CACHE/cargo-musl.log:"
        tail -n 30 "$CACHE/cargo-musl.log" >&2
        exit 1
    fi
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$target/release/cordon
fi
if [ ! -f "$BIN" ] || [ ! -x "$BIN" ]; then
    log "no executable cordon binary at $BIN"
    exit 1
fi

# One build at a time: the staging directory and the tag are shared.
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-image.lock"
flock 9

# Stage the build context. Hardlinks keep this instant for the ~380 MB CLI; fall back to copies
# across file systems.
CTX=$CACHE/docker-context
rm -rf "$CTX"
mkdir -p "$CTX/claude-code"
link_or_copy() { ln -f "$1" "$2" 2>/dev/null || cp -p "$1" "$2"; }
link_or_copy "$BIN" "$CTX/cordon"
(
    cd "$CLAUDE_PKG"
    # npm's package layout without node_modules (the platform package holding a second copy).
    find . -path ./node_modules -prune -o -type d -print | while read -r d; do mkdir -p "$CTX/claude-code/$d"; done
    find . -path ./node_modules -prune -o -type f -print | while read -r f; do link_or_copy "$f" "$CTX/claude-code/$f"; done
)
version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$CTX/claude-code/package.json" | head -n 1)

if ! DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain \
    -f "$ROOT/Dockerfile" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg CORDON_BINARY=context \
    --build-arg CLAUDE_SOURCE=context \
    --build-arg "CLAUDE_CODE_VERSION=$version" \
    -t "$TAG" "$CTX" >"$CACHE/docker-build.log" 2>&1; then
    log "docker build failed; last lines of $CACHE/docker-build.log:"
    tail -n 40 "$CACHE/docker-build.log" >&2
    exit 1
fi

printf 'IMAGE=%q\nBASE_IMAGE=%q\nTOOLS_IMAGE=%q\n' "$TAG" "$BASE_IMAGE" "$TOOLS_IMAGE"
