#!/usr/bin/env bash
# cluster-bench.sh — what the Redis broker costs across nodes. Starts a
# redis-server (Unix socket, persistence off) and two release `wsgate`
# nodes on it (A and B, each with a `broadcast` room declared cluster-wide),
# plus a third node C with the in-process broker, then runs the load
# generator's broadcast scenario with SUBS subscribers on B:
#
#   memory, local   publisher and subscribers on C (no Redis: the reference)
#   redis, local    publisher and subscribers on B (the broker's own cost)
#   redis, cross    publisher on A, subscribers on B (cross-node)
#
# each twice: with one message in flight (WINDOW_LAT: publish → delivery
# latency p50/p99 without queueing) and with many (WINDOW_TPUT: deliveries
# per second). The publishing node's CPU per publish comes from /proc
# (--pub-pid). One JSON line per run on stdout (and in OUT).
#
#   scripts/cluster-bench.sh
#   SUBS=100 DURATION=2 scripts/cluster-bench.sh          # a quick look
#
# Environment (defaults in brackets): SUBS [1000]  SIZE [32]  DURATION [5]
#   WARMUP [1]  REPS [1]  WINDOW_LAT [1]  WINDOW_TPUT [64]  HISTORY [0]
#   (history_size of the Redis nodes)  OUT [target/bench/cluster-<UTC>.jsonl]
# Needs redis-server (apt-get install redis-server) and python3. Nothing is
# pinned to a core: the two cores are shared by the three nodes, Redis and
# the load generator, as they would be on a small machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
for tool in redis-server python3; do
  command -v "$tool" >/dev/null || { echo "cluster-bench.sh: $tool is required" >&2; exit 1; }
done

SUBS="${SUBS:-1000}"
SIZE="${SIZE:-32}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
REPS="${REPS:-1}"
WINDOW_LAT="${WINDOW_LAT:-1}"
WINDOW_TPUT="${WINDOW_TPUT:-64}"
HISTORY="${HISTORY:-0}"
OUT="${OUT:-$ROOT/target/bench/cluster-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"
mkdir -p "$(dirname "$OUT")"

echo "cluster-bench.sh: cargo build --release (wsgate, bench/loadgen)" >&2
(cd "$ROOT" && cargo build --release --bin wsgate)
cargo build --release --manifest-path "$ROOT/bench/Cargo.toml" -p loadgen
WSGATE="$ROOT/target/release/wsgate"
LOADGEN="$ROOT/bench/target/release/loadgen"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

redis-server --port 0 --unixsocket "$work/redis.sock" --unixsocketperm 700 \
  --save "" --appendonly no --daemonize no --loglevel warning --dir "$work" \
  >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do [[ -S "$work/redis.sock" ]] && break; sleep 0.05; done

# node NAME PORT BROKER_TOML: writes its config, starts it; its pid is in
# $node_pid (not printed: a command substitution would start it in a
# subshell, out of reach of the cleanup).
node() {
  local name=$1 port=$2 broker=$3
  cat >"$work/$name.toml" <<EOF
$broker

[[vhost]]
name = "default"
listen = ["127.0.0.1:$port"]

[[vhost.mount]]
path = "/room"
protocol = "broadcast"

[vhost.options.broadcast]
cluster = true
EOF
  "$WSGATE" --config "$work/$name.toml" --stats-interval 0s >/dev/null 2>&1 &
  node_pid=$!
  pids+=("$node_pid")
}

redis_broker() {
  printf '[broker]\ntype = "redis"\nurl = "unix://%s"\nnode = "%s"\nhistory_size = %s\n' \
    "$work/redis.sock" "$1" "$HISTORY"
}

port_a=$(free_port); port_b=$(free_port); port_c=$(free_port)
node a "$port_a" "$(redis_broker a)"; pid_a=$node_pid
node b "$port_b" "$(redis_broker b)"; pid_b=$node_pid
node c "$port_c" ""; pid_c=$node_pid
for port in "$port_a" "$port_b" "$port_c"; do
  for _ in $(seq 1 200); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
    sleep 0.05
  done
done

# run LABEL PUB_PORT PUB_PID SUB_PORT SUB_PID WINDOW
run() {
  local label=$1 pub_port=$2 pub_pid=$3 sub_port=$4 sub_pid=$5 window=$6
  "$LOADGEN" broadcast --url "ws://127.0.0.1:$sub_port/room" \
    --pub-url "ws://127.0.0.1:$pub_port/room" --pid "$sub_pid" --pub-pid "$pub_pid" \
    --subs "$SUBS" --size "$SIZE" --window "$window" --settle 1 \
    --duration "$DURATION" --warmup "$WARMUP" --label "$label" | tee -a "$OUT"
}

for rep in $(seq 1 "$REPS"); do
  for window in "$WINDOW_LAT" "$WINDOW_TPUT"; do
    run "memory-local-w$window" "$port_c" "$pid_c" "$port_c" "$pid_c" "$window"
    run "redis-local-w$window" "$port_b" "$pid_b" "$port_b" "$pid_b" "$window"
    run "redis-cross-w$window" "$port_a" "$pid_a" "$port_b" "$pid_b" "$window"
  done
done
echo "cluster-bench.sh: $OUT" >&2
