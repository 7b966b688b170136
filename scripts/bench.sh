#!/usr/bin/env bash
# Every benchmark of the project, printed as one table: each backend's
# operations beside their raw baseline measured in the same run (memory vs
# a locked map, SQLite vs raw sqlx, Redis vs raw redis-rs, encryption vs the
# bare store), the cross-process wake latencies, the require_token hot
# path, and the client-side providers' token() with a valid token. The Redis rows need a Redis at REDIS_URL (default
# redis://127.0.0.1:6379).
#
#   bash scripts/bench.sh            # prints the table (and notes) to stdout
set -euo pipefail
cd "$(dirname "$0")/.."

raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

echo "building and running the benchmarks (release mode; this takes a few minutes)..." >&2
cargo bench -q -p mcp-authkit-bench 2>/dev/null >>"$raw"
cargo bench -q -p mcp-authkit-providers --features rmcp --bench server_require_token 2>/dev/null >>"$raw"
cargo bench -q -p mcp-authkit-providers --bench client_token 2>/dev/null >>"$raw"

cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || true)
echo "mcp-authkit benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores${cpu:+ ($cpu)}, $(uname -sr)"
echo
# One header, then every row of every benchmark's table.
grep -m1 '^| backend' "$raw"
grep -m1 '^|---' "$raw"
grep '^| ' "$raw" | grep -v '^| backend' || true
echo
# What the benchmarks printed besides their tables (how to read the rows).
grep -v '^|' "$raw" | grep -v '^running\|^test result\|^$\|^test \|^[.i]*$' || true
