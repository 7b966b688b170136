#!/usr/bin/env bash
# Every benchmark of the project, printed as one table: each backend's
# operations beside their raw baseline measured in the same run (memory vs
# a locked map, SQLite vs raw sqlx, Redis vs raw redis-rs, PostgreSQL vs
# raw sqlx on the same pool, encryption vs the bare store), the cross-process wake latencies, the require_token hot
# path, and the client-side providers' token() with a valid token. The
# Redis rows need a Redis at REDIS_URL (default
# redis://127.0.0.1:6379); the Redis Cluster rows a cluster at
# REDIS_CLUSTER_URL, else one started (and stopped) with
# scripts/redis-cluster.sh; the PostgreSQL rows a PostgreSQL at DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/test).
#
#   bash scripts/bench.sh              # prints the table (and notes) to stdout
#   bash scripts/bench.sh --scale      # and then the scale section: costs at
#                                      # 1k-100k tokens and flows, 10-10k
#                                      # waiters, writer stalls during a purge
#   bash scripts/bench.sh --scale-only # the scale section alone
#   bash scripts/bench.sh --callgrind  # instructions per SQLite token read:
#                                      # the store's get beside a raw sqlx SELECT;
#                                      # per require_token (metrics off / on)
#                                      # beside a raw memory read
set -euo pipefail
cd "$(dirname "$0")/.."

main=yes scale=no callgrind=no
for arg in "$@"; do
    case "$arg" in
        --scale) scale=yes ;;
        --scale-only) main=no scale=yes ;;
        --callgrind) main=no callgrind=yes ;;
        *) echo "unknown argument: $arg (see the top of $0)" >&2; exit 2 ;;
    esac
done

raw=$(mktemp)
trap 'rm -f "$raw"' EXIT

if [ "$main" = yes ]; then
    if [ -z "${REDIS_CLUSTER_URL:-}" ] && command -v redis-server >/dev/null; then
        if ! bash scripts/redis-cluster.sh status; then
            trap 'rm -f "$raw"; bash scripts/redis-cluster.sh stop >/dev/null' EXIT
        fi
        eval "$(bash scripts/redis-cluster.sh env)"
    fi
    echo "building and running the benchmarks (release mode; this takes a few minutes)..." >&2
    cargo bench -q -p mcp-authkit-bench --bench memory --bench encrypted --bench sqlite \
        --bench redis --bench postgres 2>/dev/null >>"$raw"
    # metrics: the require_token rows with metrics compiled in but off, and
    # on (a Prometheus recorder), each interleaved with the raw read.
    cargo bench -q -p mcp-authkit-providers --features rmcp,metrics --bench server_require_token \
        --bench server_sign_in 2>/dev/null >>"$raw"
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
fi

if [ "$scale" = yes ]; then
    echo "running the scale benchmark (release mode; about five minutes)..." >&2
    echo
    # Its tables have their own columns (one per size), so they print as
    # they are.
    cargo bench -q -p mcp-authkit-bench --bench scale 2>/dev/null \
        | grep -v '^running\|^test result\|^test '
fi

if [ "$callgrind" = yes ]; then
    command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
    echo "building the sqlite benchmark and counting instructions under callgrind..." >&2
    cargo bench -q -p mcp-authkit-bench --bench sqlite --no-run 2>/dev/null
    bin=$(cargo bench -q -p mcp-authkit-bench --bench sqlite --no-run --message-format=json 2>/dev/null \
        | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    count() { # what reads -> instructions of the whole run
        MCP_AUTHKIT_BENCH_PROFILE=$1 MCP_AUTHKIT_BENCH_READS=$2 \
            valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --bench 2>&1 >/dev/null \
            | grep -o 'Collected : [0-9]*' | grep -o '[0-9]*$'
    }
    for what in get sqlx; do
        low=$(count "$what" 1000)
        high=$(count "$what" 3000)
        echo "$what: $(( (high - low) / 2000 )) instructions per read"
    done | sed 's/^get:/store get (decode included):/; s/^sqlx:/raw sqlx SELECT (no decode):/'

    echo "building the require_token benchmark and counting instructions under callgrind..." >&2
    # The benchmark runs itself under callgrind, counting only its call loop.
    MCP_AUTHKIT_BENCH_CALLGRIND=only cargo bench -q -p mcp-authkit-providers --features rmcp,metrics \
        --bench server_require_token 2>/dev/null
fi
