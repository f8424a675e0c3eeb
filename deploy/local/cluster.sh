#!/usr/bin/env bash
# A local Tether cluster: one Redis, three nodes, HAProxy in front (no sticky sessions).
#
#   deploy/local/cluster.sh        (or: make cluster)   runs until Ctrl-C, then stops all
#
#   clients:    ws://127.0.0.1:8080/connection/websocket   (HAProxy, round-robin)
#   server API: http://127.0.0.1:9080/api/<method>         (HAProxy, round-robin)
#   nodes:      8081-8083 (clients), 9081-9083 (API, /health, /ready, /metrics)
#   Redis:      127.0.0.1:6390 (in memory: a restart loses the streams)
#
# Try a node failure: kill -9 "$(cat .cluster/node-2.pid)"; its clients reconnect through
# HAProxy to the others and recover what they missed. Logs: .cluster/*.log.
# Needs redis-server and haproxy (Debian: apt-get install -y redis-server haproxy).
set -euo pipefail
cd "$(dirname "$0")/../.."

export CLUSTER_DIR="$PWD/.cluster"
TETHER="${TETHER:-.venv/bin/tether}"
REDIS_PORT=6390
export TETHER_TOKEN_SECRET="${TETHER_TOKEN_SECRET:-local-cluster-secret-change-me-0123456789}"
export TETHER_API_KEY="${TETHER_API_KEY:-local-cluster-api-key}"

for tool in redis-server redis-cli haproxy; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
        echo "error: $tool is not installed (Debian: apt-get install -y redis-server haproxy)" >&2
        exit 2
    }
done
[ -x "$TETHER" ] || { echo "error: $TETHER not found (run: make setup)" >&2; exit 2; }
for port in 8080 9080 8081 8082 8083 9081 9082 9083 "$REDIS_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "error: port $port is in use (another cluster running?)" >&2
        exit 2
    fi
done
mkdir -p "$CLUSTER_DIR"

pids=()
redis_pid=""
stop() {
    trap - EXIT INT TERM
    echo "stopping the cluster..."
    # Nodes and balancer first (SIGTERM: the nodes drain), Redis last.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    echo "stopped"
    exit 0
}
trap stop EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no >"$CLUSTER_DIR/redis.log" 2>&1 &
redis_pid=$!
echo "$redis_pid" >"$CLUSTER_DIR/redis.pid"
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

for i in 1 2 3; do
    TETHER_NODE_NAME="node-$i" TETHER_PORT="808$i" TETHER_HTTP_PORT="908$i" \
        "$TETHER" serve --config deploy/local/tether.toml >"$CLUSTER_DIR/node-$i.log" 2>&1 &
    pids+=($!)
    echo $! >"$CLUSTER_DIR/node-$i.pid"
done
for i in 1 2 3; do
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:908$i/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:908$i/ready" >/dev/null || {
        echo "error: node-$i did not become ready; see $CLUSTER_DIR/node-$i.log" >&2
        exit 1
    }
done

haproxy -db -f deploy/local/haproxy.cfg >"$CLUSTER_DIR/haproxy.log" 2>&1 &
pids+=($!)
echo $! >"$CLUSTER_DIR/haproxy.pid"

cat <<MSG
Tether cluster up: 3 nodes over Redis :$REDIS_PORT, HAProxy in front.
  clients:    ws://127.0.0.1:8080/connection/websocket
  server API: http://127.0.0.1:9080/api/<method>   (X-API-Key: $TETHER_API_KEY)
  a token:    TETHER_TOKEN_SECRET=$TETHER_TOKEN_SECRET $TETHER token --user alice
  publish:    curl -sS -H 'X-API-Key: $TETHER_API_KEY' -d '{"channel":"chat:room","data":{"text":"hi"}}' http://127.0.0.1:9080/api/publish
  kill a node: kill -9 \$(cat .cluster/node-2.pid)
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" "$redis_pid" || true
echo "a cluster process exited; see $CLUSTER_DIR/*.log" >&2
