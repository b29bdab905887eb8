#!/usr/bin/env bash
# bench.sh — build the release binary, the load generator and the anchor
# servers (bench/, a cargo workspace of its own), then measure wsgate
# interleaved with the anchors and print the tables of README's Performance
# section.
#
#   scripts/bench.sh                                                   # the README's table (about 12 minutes)
#   REPS=1 DURATION=1 WARMUP=1 SCENARIOS=echo_c100 ONLY=fastwebsockets scripts/bench.sh   # a quick look
#
# Environment (all optional; defaults in brackets):
#   REPS [3]  DURATION [5]  WARMUP [1]   repetitions, measured and warm-up seconds per run
#   SCENARIOS [echo_c1,echo_c100,echo_c1000,echo_c100_16k,pipe16_c100,idle_10k,bcast_m100,bcast_m1000]
#             (also idle_10k_touch; see bench/bench.py)
#   ANCHORS [1]   0 measures wsgate alone
#   ONLY [tokio-tungstenite,fastwebsockets,libwebsockets]   the anchors (also
#                 smol-tungstenite, smol-tungstenite-rb4k)
#   ECHO_PATH [/echo]  BCAST_PATH [/broadcast]   wsgate's endpoints
#   SERVER_CORE [0]  CLIENT_CORE [1]             taskset cores
#   OUT [target/bench/<UTC timestamp>.jsonl]     one JSON line per run
#   NAME [wsgate]  label of wsgate's rows
#   BASELINE        another wsgate binary (an earlier build) measured in the
#                   same interleaved run, for before/after tables
#   BASELINE_NAME [wsgate-before]  label of its rows
#   WSGATE_ARGS, BASELINE_ARGS     extra arguments for wsgate's and the
#                   baseline's command lines (e.g. BASELINE=target/release/wsgate
#                   BASELINE_ARGS="--config budget-off.toml" compares two
#                   configurations of one build)
#   SERVERS         more servers in the same run, "NAME=CMD;NAME=CMD" (CMD with
#                   {port}, serving ECHO_PATH and BCAST_PATH like wsgate):
#                   wsgate with another --config, or a server built elsewhere
#
# The permessage-deflate scenarios (echo_c100_deflate, bcast_m1000_deflate and
# their plain _json twins) are not in the default list; docs/BENCHMARKS.md
# shows the run that compares wsgate's modes with uWebSockets'.
#
# The libwebsockets anchor needs `apt-get install libwebsockets-dev
# pkg-config` and is skipped, with a warning, without it. Needs python3,
# taskset (util-linux) and ss (iproute2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,37p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi

for tool in python3 taskset ss; do
  command -v "$tool" >/dev/null || { echo "bench.sh: $tool is required" >&2; exit 1; }
done

REPS="${REPS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
SCENARIOS="${SCENARIOS:-echo_c1,echo_c100,echo_c1000,echo_c100_16k,pipe16_c100,idle_10k,bcast_m100,bcast_m1000}"
ANCHORS="${ANCHORS:-1}"
ONLY="${ONLY:-tokio-tungstenite,fastwebsockets,libwebsockets}"
export ECHO_PATH="${ECHO_PATH:-/echo}"
export BCAST_PATH="${BCAST_PATH:-/broadcast}"
NAME="${NAME:-wsgate}"
OUT="${OUT:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ).jsonl}"
[[ "$OUT" == /* ]] || OUT="$PWD/$OUT"
mkdir -p "$(dirname "$OUT")"

anchors=""
[[ "$ANCHORS" == "1" ]] && anchors="$ONLY"
# The cargo packages to build: the load generator and the Rust anchors asked for.
packages=(-p loadgen)
for anchor in ${anchors//,/ }; do
  case "$anchor" in
    tokio-tungstenite) packages+=(-p tokio-echo) ;;
    fastwebsockets) packages+=(-p fws-echo) ;;
    smol-tungstenite*) packages+=(-p smol-echo) ;;
  esac
done

echo "bench.sh: cargo build --release (wsgate, then bench/: ${packages[*]})" >&2
(cd "$ROOT" && cargo build --release --bin wsgate)
cargo build --release --manifest-path "$BENCH/Cargo.toml" "${packages[@]}"
if [[ ",$anchors," == *,libwebsockets,* ]]; then
  if command -v pkg-config >/dev/null && pkg-config --exists libwebsockets; then
    make -s -C "$BENCH/anchors/lws-echo" >&2
  else
    echo "bench.sh: warning: libwebsockets-dev not found; the libwebsockets anchor is skipped" >&2
    echo "bench.sh:          (apt-get install libwebsockets-dev pkg-config)" >&2
    anchors=$(tr ',' '\n' <<<"$anchors" | grep -vx libwebsockets | paste -sd, - || true)
  fi
fi

# idle_10k holds 10,000 sockets on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "bench.sh: scenarios=$SCENARIOS reps=$REPS anchors=${anchors:-none} out=$OUT" >&2
servers=(--server "$NAME=$ROOT/target/release/wsgate ${WSGATE_ARGS:-} --listen 127.0.0.1:{port} --stats-interval 0s")
if [[ -n "${BASELINE:-}" ]]; then
  [[ -x "$BASELINE" ]] || { echo "bench.sh: BASELINE $BASELINE is not an executable" >&2; exit 1; }
  servers+=(--server "${BASELINE_NAME:-wsgate-before}=$BASELINE ${BASELINE_ARGS:-} --listen 127.0.0.1:{port} --stats-interval 0s")
fi
IFS=';' read -r -a extra <<<"${SERVERS:-}"
for spec in "${extra[@]}"; do
  [[ -n "$spec" ]] && servers+=(--server "$spec")
done
rc=0
python3 "$BENCH/bench.py" run --reps "$REPS" --duration "$DURATION" --warmup "$WARMUP" \
  --scenarios "$SCENARIOS" --anchors "$anchors" --out "$OUT" "${servers[@]}" || rc=$?

if [[ -s "$OUT" ]]; then
  echo
  echo "## scripts/bench.sh, $(date -u +%Y-%m-%d), REPS=$REPS DURATION=$DURATION ($(basename "$OUT"))"
  echo
  python3 "$BENCH/bench.py" table "$OUT"
  echo
  echo "JSON lines: $OUT"
else
  echo "bench.sh: no results in $OUT" >&2
  [[ $rc -eq 0 ]] && rc=1
fi
exit "$rc"
