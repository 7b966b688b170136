#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback for the tests and benchmarks:
# six redis-server processes in cluster mode (three masters, three
# replicas), each on its own port and folder, joined with
# `redis-cli --cluster create`.
#
#   scripts/redis-cluster.sh start   # starts it (if not running), prints
#                                    # REDIS_CLUSTER_URL=redis+cluster://...
#   scripts/redis-cluster.sh stop    # stops it, by the pids it wrote
#   scripts/redis-cluster.sh status  # exits 0 when all six answer
#   eval "$(scripts/redis-cluster.sh env)"   # exports REDIS_CLUSTER_URL
#
# REDIS_CLUSTER_BASE_PORT (default 7100) picks the ports (base .. base+5);
# REDIS_CLUSTER_DIR (default ${TMPDIR:-/tmp}/mcp-authkit-redis-cluster-$PORT)
# holds each node's folder, config, log and pid file. Nothing is saved to
# disk (no RDB, no AOF): a stopped cluster is gone.
set -euo pipefail

BASE_PORT="${REDIS_CLUSTER_BASE_PORT:-7100}"
DIR="${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/mcp-authkit-redis-cluster-$BASE_PORT}"
PORTS=()
for i in 0 1 2 3 4 5; do PORTS+=("$((BASE_PORT + i))"); done

url() {
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    local IFS=,
    echo "redis+cluster://${nodes[*]}"
}

answers() { redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1; }

healthy() {
    for port in "${PORTS[@]}"; do answers "$port" || return 1; done
    redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster info 2>/dev/null |
        grep -q '^cluster_state:ok'
}

start() {
    if healthy; then
        echo "REDIS_CLUSTER_URL=$(url)"
        return
    fi
    for tool in redis-server redis-cli; do
        command -v "$tool" >/dev/null || {
            echo "redis-cluster.sh: $tool not found; install Redis 7 (apt-get install redis-server)" >&2
            exit 1
        }
    done
    # A half-started cluster from an earlier run (a node killed by a test,
    # a crash) is not repaired: it is replaced.
    stop >/dev/null 2>&1 || true
    for port in "${PORTS[@]}"; do
        if answers "$port"; then
            echo "redis-cluster.sh: port $port is taken by another Redis; set REDIS_CLUSTER_BASE_PORT" >&2
            exit 1
        fi
        local node="$DIR/$port"
        rm -rf "$node"
        mkdir -p "$node"
        chmod 700 "$DIR" "$node"
        redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes \
            --cluster-enabled yes --cluster-config-file "$node/nodes.conf" \
            --cluster-node-timeout 2000 \
            --save "" --appendonly no --dir "$node" \
            --daemonize yes --pidfile "$node/redis.pid" --logfile "$node/redis.log" 9>&-
    done
    for port in "${PORTS[@]}"; do
        for _ in $(seq 1 100); do
            answers "$port" && break
            sleep 0.05
        done
        answers "$port" || {
            echo "redis-cluster.sh: node $port did not start; see $DIR/$port/redis.log" >&2
            exit 1
        }
    done
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log" 2>&1 || {
        cat "$DIR/create.log" >&2
        exit 1
    }
    # `create` returns once the slots are assigned; wait until every node
    # agrees and every replica is attached, so tests start on a settled
    # cluster.
    for _ in $(seq 1 200); do
        if healthy && [ "$(replicas)" = 3 ]; then
            echo "REDIS_CLUSTER_URL=$(url)"
            return
        fi
        sleep 0.05
    done
    echo "redis-cluster.sh: the cluster did not settle; see $DIR/*/redis.log" >&2
    exit 1
}

replicas() {
    local count=0
    for port in "${PORTS[@]}"; do
        if redis-cli -h 127.0.0.1 -p "$port" info replication 2>/dev/null |
            grep -q '^master_link_status:up'; then
            count=$((count + 1))
        fi
    done
    echo "$count"
}

stop() {
    local stopped=0
    for port in "${PORTS[@]}"; do
        local pidfile="$DIR/$port/redis.pid"
        [ -f "$pidfile" ] || continue
        local pid
        pid="$(cat "$pidfile")"
        # Only our own process: the pid must still be a redis-server on our port.
        if [ -n "$pid" ] && grep -q "redis-server" "/proc/$pid/cmdline" 2>/dev/null &&
            tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q ":$port"; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.05
            done
            kill -9 "$pid" 2>/dev/null || true
            stopped=$((stopped + 1))
        fi
        rm -f "$pidfile"
    done
    rm -rf "$DIR"
    echo "stopped $stopped redis cluster node(s)"
}

# One start or stop at a time: test processes that start at once share one
# cluster instead of racing to create six.
locked() {
    exec 9>"${TMPDIR:-/tmp}/mcp-authkit-redis-cluster-$BASE_PORT.lock"
    flock 9
    "$@"
}

case "${1:-}" in
start) locked start ;;
stop) locked stop ;;
status) healthy ;;
env)
    locked start >/dev/null
    echo "export REDIS_CLUSTER_URL=$(url)"
    ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
