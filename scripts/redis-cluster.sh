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
# REDIS_CLUSTER_BASE_PORT (default 7100) picks the ports (base .. base+5).
# The nodes' folders (config, log, pid file each) live in
# ${TMPDIR:-/tmp}/mcp-authkit-redis-cluster-$BASE_PORT, or in
# $REDIS_CLUSTER_DIR/mcp-authkit-redis-cluster-$BASE_PORT when that is set.
# `stop` removes only the per-port folders this script made (each holds a
# marker file) and then the folder above them if it is empty: never
# anything else in a folder the user named. Nothing is saved to disk (no
# RDB, no AOF): a stopped cluster is gone.
set -euo pipefail

BASE_PORT="${REDIS_CLUSTER_BASE_PORT:-7100}"
DIR="${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}}/mcp-authkit-redis-cluster-$BASE_PORT"
# Present in every node folder this script made; nothing else is removed.
MARKER=".made-by-mcp-authkit-redis-cluster"

# Whether the node folder $1 is ours to remove: it holds the marker, or it
# sits in the default folder (named after this script, under TMPDIR), where
# an earlier version of this script left node folders without a marker.
ours() {
    [ -f "$1/$MARKER" ] || [ -z "${REDIS_CLUSTER_DIR:-}" ]
}
PORTS=()
for i in 0 1 2 3 4 5; do PORTS+=("$((BASE_PORT + i))"); done

url() {
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    local IFS=,
    echo "redis+cluster://${nodes[*]}"
}

# A failed start stops the nodes it launched (by their pid files) and
# removes their folders; the message says what went wrong.
fail() {
    echo "redis-cluster.sh: $1" >&2
    stop >/dev/null 2>&1 || true
    exit 1
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
            fail "port $port is taken by another Redis; set REDIS_CLUSTER_BASE_PORT"
        fi
        local node="$DIR/$port"
        if [ -e "$node" ]; then
            if ours "$node"; then
                rm -rf "$node"
            else
                fail "$node exists and was not made by this script; remove it or choose another REDIS_CLUSTER_DIR"
            fi
        fi
        mkdir -p "$node"
        touch "$node/$MARKER"
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
            # The log goes with the folder: show its end first.
            tail -n 20 "$DIR/$port/redis.log" >&2 2>/dev/null || true
            fail "node $port did not start (its log is above)"
        }
    done
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    local created
    created="$(redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes 2>&1)" || {
        echo "$created" >&2
        fail "redis-cli --cluster create failed (its output is above)"
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
    for port in "${PORTS[@]}"; do
        echo "--- node $port" >&2
        tail -n 5 "$DIR/$port/redis.log" >&2 2>/dev/null || true
    done
    fail "the cluster did not settle (the end of each node's log is above)"
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
    for port in "${PORTS[@]}"; do
        if [ -d "$DIR/$port" ] && ours "$DIR/$port"; then rm -rf "${DIR:?}/$port"; fi
    done
    # Written there by earlier versions of this script.
    if [ -z "${REDIS_CLUSTER_DIR:-}" ]; then rm -f "$DIR/create.log"; fi
    rmdir "$DIR" 2>/dev/null || true
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
