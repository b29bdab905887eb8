#!/usr/bin/env bash
# bench.sh — build the release binary and measure it with the shared load
# generator (../shared/bench/run.sh), interleaved with the anchor servers.
#
#   scripts/bench.sh                       # every default scenario, 3 reps, all anchors
#   REPS=1 DURATION=1 WARMUP=1 SCENARIOS=echo_c100 ONLY=fastwebsockets scripts/bench.sh
#
# Environment (all optional; defaults in brackets):
#   REPS [3]  DURATION [run.sh's: 5]  WARMUP [run.sh's: 1]
#   SCENARIOS [echo_c1,echo_c100,echo_c1000,echo_c100_16k,pipe16_c100,idle_10k,bcast_m100,bcast_m1000]
#   ANCHORS [1]       0 measures wsgate alone
#   ONLY              with ANCHORS=1: keep only these anchors (comma list, e.g. fastwebsockets)
#   ECHO_PATH [/echo]  BCAST_PATH [/broadcast]   wsgate's endpoints
#   OUT [target/bench/<UTC timestamp>.jsonl]      JSON lines are appended here
#   NAME [wsgate]     label of wsgate's rows
#
# Prints run.sh's JSON lines and summary while it runs, then the compact
# tables of ../shared/bench/table.py for OUT. The anchors are built on first
# use; the libwebsockets one needs `apt-get install libwebsockets-dev pkg-config`
# and is skipped (with a warning) without it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$(cd "$ROOT/.." && pwd)/shared/bench"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi

if [[ ! -x "$BENCH/run.sh" || ! -f "$BENCH/table.py" ]]; then
  echo "bench.sh: $BENCH/run.sh and table.py not found." >&2
  echo "bench.sh: the shared benchmark kit must sit beside the repository (../shared/bench)." >&2
  exit 1
fi

export REPS="${REPS:-3}"
export ANCHORS="${ANCHORS:-1}"
export ECHO_PATH="${ECHO_PATH:-/echo}"
export BCAST_PATH="${BCAST_PATH:-/broadcast}"
export SCENARIOS="${SCENARIOS:-echo_c1,echo_c100,echo_c1000,echo_c100_16k,pipe16_c100,idle_10k,bcast_m100,bcast_m1000}"
export NAME="${NAME:-wsgate}"
[[ -n "${DURATION:-}" ]] && export DURATION
[[ -n "${WARMUP:-}" ]] && export WARMUP
[[ -n "${ONLY:-}" ]] && export ONLY

OUT="${OUT:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ).jsonl}"
[[ "$OUT" == /* ]] || OUT="$PWD/$OUT"
mkdir -p "$(dirname "$OUT")"
export OUT

if [[ "$ANCHORS" == "1" ]] && ! { command -v pkg-config >/dev/null && pkg-config --exists libwebsockets; }; then
  echo "bench.sh: warning: libwebsockets-dev not found; the libwebsockets anchor is skipped" >&2
  echo "bench.sh:          (apt-get install libwebsockets-dev pkg-config)" >&2
fi

echo "bench.sh: cargo build --release" >&2
(cd "$ROOT" && cargo build --release)

echo "bench.sh: scenarios=$SCENARIOS reps=$REPS anchors=$ANCHORS${ONLY:+ only=$ONLY} out=$OUT" >&2
rc=0
(cd "$ROOT" && "$BENCH/run.sh" "$ROOT/target/release/wsgate --listen 127.0.0.1:{port} --stats-interval 0s") || rc=$?

if [[ -s "$OUT" ]]; then
  echo
  echo "## $(basename "$OUT")"
  echo
  # Anchors without a broadcast endpoint report 0 deliveries, which
  # table.py cannot summarise: leave those lines out of the tables.
  TABLE_IN="$(mktemp)"
  python3 - "$OUT" "$TABLE_IN" <<'PY'
import json, sys
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as dst:
    for line in src:
        row = json.loads(line) if line.strip() else None
        if row and not (row.get("scenario") == "broadcast" and not row.get("deliveries")):
            dst.write(line)
PY
  python3 "$BENCH/table.py" "$TABLE_IN" || rc=$?
  rm -f "$TABLE_IN"
  echo
  echo "JSON lines: $OUT"
else
  echo "bench.sh: no results in $OUT" >&2
  [[ $rc -eq 0 ]] && rc=1
fi
exit "$rc"
