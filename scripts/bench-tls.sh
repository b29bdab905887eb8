#!/usr/bin/env bash
# bench-tls.sh — plain ws:// against wss:// on the same wsgate binary,
# interleaved in one run (bench/bench.py), with ECDSA P-256 and RSA 2048
# certificates, then `openssl s_time` against the same certificates for the
# handshake rate a C TLS client gets.
#
#   scripts/bench-tls.sh                                   # about 4 minutes
#   REPS=1 DURATION=2 SCENARIOS=echo_c100 scripts/bench-tls.sh
#
# Environment (defaults in brackets): REPS [3] DURATION [5] WARMUP [1]
# SCENARIOS [echo_c100,echo_c100_16k,idle_10k] STIME [5] (seconds of s_time
# per certificate) SERVER_CORE [0] CLIENT_CORE [1]
# OUT [target/bench/tls-<UTC timestamp>.jsonl]. Needs python3, taskset, ss
# and openssl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
REPS="${REPS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
SCENARIOS="${SCENARIOS:-echo_c100,echo_c100_16k,idle_10k}"
STIME="${STIME:-5}"
export SERVER_CORE="${SERVER_CORE:-0}" CLIENT_CORE="${CLIENT_CORE:-1}"
OUT="${OUT:-$ROOT/target/bench/tls-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"
for tool in python3 taskset ss openssl; do
  command -v "$tool" >/dev/null || { echo "bench-tls.sh: $tool is required" >&2; exit 1; }
done
mkdir -p "$(dirname "$OUT")"

(cd "$ROOT" && cargo build --release --bin wsgate)
cargo build --release --manifest-path "$BENCH/Cargo.toml" -p loadgen
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK="$ROOT/target/bench/tls"
mkdir -p "$WORK"
"$ROOT/scripts/make-cert.sh" "$WORK/ec" localhost >&2
KEY=rsa "$ROOT/scripts/make-cert.sh" "$WORK/rsa" localhost >&2
# One config per server: the echo endpoint only, plain or TLS.
conf() { # NAME [CERTDIR]
  {
    printf '[[vhost]]\nname = "bench"\nlisten = ["127.0.0.1:0"]\n'
    [[ -n "${2:-}" ]] && printf '[vhost.tls]\ncert = "%s/server.pem"\nkey = "%s/server.key"\n' "$2" "$2"
    printf '[[vhost.mount]]\npath = "/"\nprotocol = "echo"\n[[vhost.mount]]\npath = "/echo"\nprotocol = "echo"\n'
  } >"$WORK/$1.toml"
}
conf plain
conf tls-ec "$WORK/ec"
conf tls-rsa "$WORK/rsa"
GW="$ROOT/target/release/wsgate"
cmd() { echo "$GW --config $WORK/$1.toml --listen 127.0.0.1:{port} --threads 1 --stats-interval 0s"; }

python3 "$BENCH/bench.py" run --reps "$REPS" --duration "$DURATION" --warmup "$WARMUP" \
  --scenarios "$SCENARIOS" --anchors "" --out "$OUT" \
  --server "wsgate-plain=$(cmd plain)" \
  --server "wsgate-tls-ecdsa=wss:$(cmd tls-ec)" \
  --server "wsgate-tls-rsa=wss:$(cmd tls-rsa)" >/dev/null
python3 "$BENCH/bench.py" table "$OUT"

# openssl s_time: new TLS 1.3 handshakes per second, no request, against the
# same binary and certificates (server and client pinned as above).
echo
echo "| certificate | openssl s_time handshakes/s (TLS 1.3, new sessions) |"
echo "|---|---|"
for kind in ec rsa; do
  port=$((20000 + RANDOM % 10000))
  taskset -c "$SERVER_CORE" "$GW" --config "$WORK/tls-$kind.toml" --listen "127.0.0.1:$port" \
    --threads 1 --stats-interval 0s >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do ss -ltnH "sport = :$port" | grep -q . && break; sleep 0.05; done
  line=$(taskset -c "$CLIENT_CORE" openssl s_time -connect "127.0.0.1:$port" -new -time "$STIME" 2>/dev/null \
    | grep -m1 "real seconds" || true)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # "N connections in T real seconds, ..."
  rate=$(awk '{ if ($4 > 0) printf "%.0f", $1 / $4 }' <<<"$line")
  echo "| $([[ $kind == ec ]] && echo "ECDSA P-256" || echo "RSA 2048") | ${rate:-?} ($line) |"
done
