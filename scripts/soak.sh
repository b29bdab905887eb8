#!/usr/bin/env bash
# soak.sh — the 10,000-connection soak (tests/soak.rs): the wsgate binary
# serves SOAK_CONNS echo sessions from the test process for SOAK_SECS
# seconds, one message per session per second, then drains them on SIGINT.
#
#   scripts/soak.sh                                  # 10000 sessions, 60 s
#   SOAK_CONNS=2000 SOAK_SECS=10 bash scripts/soak.sh
#
# Environment: SOAK_CONNS [10000], SOAK_SECS [60], SOAK_THREADS [2] (client
# threads). The descriptor soft limit is raised to the hard limit first: each
# side (the server is its own process) holds one socket per session.
# Ends with one `soak: N connections, ...` summary line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$(( ${SOAK_CONNS:-10000} + 256 ))
if (( $(ulimit -n) < need )); then
  echo "soak.sh: the descriptor limit is $(ulimit -n) (hard $(ulimit -Hn)); ${SOAK_CONNS:-10000} sessions need $need." >&2
  echo "soak.sh: raise the hard limit (e.g. in /etc/security/limits.conf) or lower SOAK_CONNS." >&2
  exit 1
fi

echo "soak.sh: ulimit -n $(ulimit -n); SOAK_CONNS=${SOAK_CONNS:-10000} SOAK_SECS=${SOAK_SECS:-60}" >&2
cd "$ROOT"
exec cargo test --release --test soak -- --ignored --nocapture
