#!/usr/bin/env bash
# Every test of the workspace: `cargo test --workspace --all-features`, with
# the one service it needs that a machine does not run by itself. Unless
# REDIS_CLUSTER_URL names a cluster of your own, a six-node Redis Cluster is
# started on loopback (ports 7100-7105, scripts/redis-cluster.sh) and
# stopped again when the tests end, pass or fail; one already running is
# reused and left running. Redis (REDIS_URL) and PostgreSQL (DATABASE_URL)
# are the machine's own; the tests say how to start them when they do not
# answer. Arguments go to `cargo test`.
#
#   bash scripts/test.sh
#   bash scripts/test.sh -p mcp-authkit-store-redis
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${REDIS_CLUSTER_URL:-}" ] && command -v redis-server >/dev/null; then
    if ! bash scripts/redis-cluster.sh status >/dev/null 2>&1; then
        trap 'bash scripts/redis-cluster.sh stop' EXIT
    fi
    eval "$(bash scripts/redis-cluster.sh env)"
    echo "Redis Cluster for the tests: $REDIS_CLUSTER_URL" >&2
fi

if [ "$#" -eq 0 ]; then
    set -- --workspace
fi
cargo test --all-features "$@"
