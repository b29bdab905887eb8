#!/usr/bin/env bash
# autobahn.sh — RFC 6455 conformance: the Autobahn TestSuite's fuzzingclient
# (wstest 0.8.2) against wsgate's release binary, or against any running
# server. Installs the suite on first use; fails on any FAILED or NON-STRICT
# case.
#
#   scripts/autobahn.sh                                  # every case, examples/autobahn.toml, /echo
#   scripts/autobahn.sh --config my.toml --path /ws      # another configuration of the binary
#   scripts/autobahn.sh --url ws://127.0.0.1:9001/       # a server that is already running
#   scripts/autobahn.sh --cases '1.* 2.*' --exclude '9.*'
#   scripts/autobahn.sh --config examples/autobahn-deflate.toml --jobs 2
#
# Without --url it builds the release binary (`cargo build --release`),
# starts it with --config (default examples/autobahn.toml, which raises the
# message limits for the 9.* cases) on 127.0.0.1:0, runs the suite against
# ws://ADDR/PATH (--path, default /echo) and stops it with SIGINT.
#
# Prints per-section results and ends with
#   autobahn: OK=n NON-STRICT=n INFORMATIONAL=n UNIMPLEMENTED=n FAILED=n total=n
# Exit: 0 when FAILED=0 and NON-STRICT=0; 1 when not; 2 on a setup error.
#
# Install (once, about a minute, into AUTOBAHN_HOME, default
# ~/.cache/wsgate-autobahn): wstest needs Python 2.7, which Debian 12 no
# longer has, so the interpreter's packages are downloaded from Debian 11
# (bullseye) with a private apt configuration (the system's apt sources and
# packages are not touched) and unpacked there; a virtualenv gets the
# versions pinned in scripts/autobahn/requirements-py27.txt from PyPI. Needs
# apt-get, dpkg-deb, gcc, python3 (with venv), flock and sha256sum.
#
# --jobs N runs N fuzzingclients at once against the same server, each on
# every Nth selected case, and merges their reports: the 12.* and 13.*
# (permessage-deflate) cases are bound by the Python client's CPU, not the
# server's, so two clients on two cores halve their time.
#
# Environment: AUTOBAHN_HOME (install dir), REPORT_DIR (JSON/HTML report,
# default target/autobahn), AUTOBAHN_TIMEOUT (whole run, default 900 s),
# AUTOBAHN_DEBIAN_MIRROR (default: the mirror this machine's apt sources name).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="$ROOT/scripts/autobahn"
RECIPE=1 # bump to force a reinstall

log() { echo "autobahn: $*" >&2; }
die() { log "ERROR: $*"; exit 2; }
usage() { sed -n '2,37p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

CONFIG="$ROOT/examples/autobahn.toml"
WSPATH=/echo
URL=""
CASES="*"
EXCLUDE=""
JOBS=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
    --path) WSPATH=${2:?--path needs a path}; shift 2 ;;
    --url) URL=${2:?--url needs a ws:// URL}; shift 2 ;;
    --cases) CASES=${2:?--cases needs patterns}; shift 2 ;;
    --exclude) EXCLUDE=${2:?--exclude needs patterns}; shift 2 ;;
    --jobs) JOBS=${2:?--jobs needs a number}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
CASES="${CASES//,/ }"
EXCLUDE="${EXCLUDE//,/ }"
AB_HOME=${AUTOBAHN_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-autobahn}
REPORT_DIR=${REPORT_DIR:-$ROOT/target/autobahn}
TIMEOUT=${AUTOBAHN_TIMEOUT:-900}
command -v python3 >/dev/null || die "python3 is required"

# The Debian mirror named by this machine's apt sources (deb822 or one-line).
system_mirror() {
  local f u
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r "$f" ]] || continue
    u=$(grep -Eo '(https?://[^ ]+)/debian/?( |$)' "$f" | head -n1 | awk '{print $1}')
    [[ -n "$u" ]] && { echo "${u%/}" | sed 's#/debian$##'; return 0; }
  done
  echo "http://deb.debian.org"
}

install_wstest() {
  local mirror hash stamp py27 triplet pkgs sandbox=()
  mirror=${AUTOBAHN_DEBIAN_MIRROR:-$(system_mirror)}
  hash=$({ echo "$RECIPE $mirror"; cat "$KIT/requirements-py27.txt"; } | sha256sum | cut -c1-16)
  stamp="$AB_HOME/.stamp-$hash"
  WSTEST="$AB_HOME/bin/wstest"
  [[ -f "$stamp" && -x "$WSTEST" ]] && return 0
  mkdir -p "$AB_HOME" || die "cannot create $AB_HOME"
  exec 9>"$AB_HOME/.lock"
  flock 9
  [[ -f "$stamp" && -x "$WSTEST" ]] && { exec 9>&-; return 0; }
  log "installing the Autobahn TestSuite 0.8.2 and Python 2.7 into $AB_HOME (once, about a minute)"
  for c in apt-get dpkg-deb gcc flock sha256sum; do
    command -v "$c" >/dev/null || die "$c is required to install wstest"
  done
  triplet=$(gcc -dumpmachine)
  py27="$AB_HOME/py27"
  rm -rf "$AB_HOME/apt" "$py27" "$AB_HOME/boot" "$AB_HOME/venv27" "$AB_HOME/bin" "$AB_HOME"/.stamp-*
  mkdir -p "$AB_HOME/apt/lists/partial" "$AB_HOME/apt/cache/archives/partial" "$AB_HOME/apt/debs" "$py27" "$AB_HOME/bin"
  cat >"$AB_HOME/apt/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror/debian-security bullseye-security main
SOURCES
  # apt drops privileges to _apt for downloads; that user cannot write here.
  [[ "$(id -u)" == 0 ]] && sandbox=(-o APT::Sandbox::User=root)
  local apt=(apt-get -q -o Dir::Etc::SourceList="$AB_HOME/apt/sources.list"
    -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists="$AB_HOME/apt/lists"
    -o Dir::Cache="$AB_HOME/apt/cache" -o Dir::State::status=/dev/null
    -o Debug::NoLocking=1 "${sandbox[@]}")
  pkgs=(python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib libpython2.7 libpython2.7-dev libssl1.1 libffi7)
  "${apt[@]}" update >"$AB_HOME/install.log" 2>&1 ||
    die "apt-get update (Debian bullseye lists from $mirror) failed; see $AB_HOME/install.log"
  (cd "$AB_HOME/apt/debs" && "${apt[@]}" download "${pkgs[@]}") >>"$AB_HOME/install.log" 2>&1 ||
    die "downloading the Python 2.7 packages from bullseye failed; see $AB_HOME/install.log"
  for deb in "$AB_HOME"/apt/debs/*.deb; do
    dpkg-deb -x "$deb" "$py27" || die "dpkg-deb -x $deb"
  done
  rm -rf "$AB_HOME/apt/cache" "$AB_HOME/apt/lists"
  export LD_LIBRARY_PATH="$py27/usr/lib/$triplet${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  "$py27/usr/bin/python2.7" -c 'import ssl, ctypes, zlib, hashlib' >>"$AB_HOME/install.log" 2>&1 ||
    die "the unpacked python2.7 does not run; see $AB_HOME/install.log"
  # virtualenv 20.21 is the last that creates Python 2.7 environments.
  {
    python3 -m venv "$AB_HOME/boot" &&
      "$AB_HOME/boot/bin/pip" install -q --disable-pip-version-check "virtualenv==20.21.1" &&
      VIRTUALENV_OVERRIDE_APP_DATA="$AB_HOME/virtualenv-appdata" "$AB_HOME/boot/bin/virtualenv" \
        -q --no-periodic-update -p "$py27/usr/bin/python2.7" "$AB_HOME/venv27" &&
      CFLAGS="-I$py27/usr/include -I$py27/usr/include/python2.7" "$AB_HOME/venv27/bin/pip" install \
        --disable-pip-version-check --no-input -r "$KIT/requirements-py27.txt"
  } >>"$AB_HOME/install.log" 2>&1 || die "virtualenv or pip install failed; see $AB_HOME/install.log"
  cat >"$WSTEST" <<WRAPPER
#!/bin/sh
export LD_LIBRARY_PATH="$py27/usr/lib/$triplet\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PYTHONWARNINGS=ignore
exec "$AB_HOME/venv27/bin/wstest" "\$@"
WRAPPER
  chmod +x "$WSTEST"
  "$WSTEST" -a >>"$AB_HOME/install.log" 2>&1 || die "wstest does not start; see $AB_HOME/install.log"
  touch "$stamp"
  exec 9>&-
  log "installed: $("$WSTEST" -a 2>/dev/null | tr -s '\n' ' ')"
}

install_wstest

# ---------------------------------------------------------------- the server
server=""
server_out=""
stop_server() {
  if [[ -n "$server" ]] && kill -0 "$server" 2>/dev/null; then
    kill -INT "$server" 2>/dev/null
    wait "$server" 2>/dev/null
  fi
  [[ -n "$server_out" ]] && rm -f "$server_out"
}
trap stop_server EXIT

if [[ -z "$URL" ]]; then
  [[ -f "$CONFIG" ]] || die "no configuration file $CONFIG"
  (cd "$ROOT" && cargo build --release --quiet --bin wsgate) || die "cargo build --release failed"
  server_out=$(mktemp)
  "$ROOT/target/release/wsgate" --config "$CONFIG" --listen 127.0.0.1:0 --stats-interval 0s \
    >"$server_out" 2>/dev/null &
  server=$!
  for _ in $(seq 1 100); do
    grep -q '^wsgate listening on ' "$server_out" && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  addr=$(sed -n 's/^wsgate listening on //p' "$server_out" | head -n1)
  [[ -n "$addr" ]] || die "wsgate --config $CONFIG did not start"
  URL="ws://$addr$WSPATH"
fi

# ---------------------------------------------------------------- the run
mkdir -p "$REPORT_DIR" || die "cannot create REPORT_DIR=$REPORT_DIR"
REPORT_DIR=$(cd "$REPORT_DIR" && pwd)
rm -rf "$REPORT_DIR"/*.json "$REPORT_DIR"/*.html "$REPORT_DIR"/engine.log "$REPORT_DIR"/summary.txt \
  "$REPORT_DIR"/part-*
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number, not $JOBS"
# One spec per job: job k takes every JOBS-th selected case from the k-th on
# (with one job, the patterns as given).
python3 - "$URL" "$REPORT_DIR" "$CASES" "$EXCLUDE" "$JOBS" "$KIT" <<'SPEC' || die "bad URL $URL"
import json, os, sys
from urllib.parse import urlsplit
url, outdir, cases, exclude, jobs, kit = sys.argv[1:]
jobs = int(jobs)
if urlsplit(url).scheme not in ("ws", "wss"):
    sys.exit("not a ws:// URL: %s" % url)
def spec(path, out, cases, exclude):
    with open(path, "w") as f:
        json.dump({"outdir": out, "servers": [{"agent": "wsgate", "url": url}],
                   "cases": cases, "exclude-cases": exclude,
                   "exclude-agent-cases": {}}, f, indent=1)
if jobs == 1:
    spec(os.path.join(outdir, "spec.json"), outdir, cases.split(), exclude.split())
else:
    sys.path.insert(0, kit)
    from summarize import case_key, resolve
    all_cases = [l.strip() for l in open(os.path.join(kit, "cases.txt")) if l.strip()]
    chosen = set(resolve(cases.split() or ["*"], all_cases)) - set(resolve(exclude.split(), all_cases))
    chosen = sorted(chosen, key=case_key)
    for k in range(jobs):
        part = os.path.join(outdir, "part-%d" % k)
        os.makedirs(part, exist_ok=True)
        spec(os.path.join(part, "spec.json"), part, chosen[k::jobs], [])
SPEC
log "running against $URL (cases '$CASES'${EXCLUDE:+, excluding '$EXCLUDE'}; $JOBS client(s)); report in $REPORT_DIR"
start=$(date +%s)
if [[ "$JOBS" == 1 ]]; then
  (cd "$REPORT_DIR" && timeout -k 10 "$TIMEOUT" "$WSTEST" -m fuzzingclient -s "$REPORT_DIR/spec.json" \
    >"$REPORT_DIR/engine.log" 2>&1)
  rc=$?
else
  pids=()
  for ((k = 0; k < JOBS; k++)); do
    part="$REPORT_DIR/part-$k"
    (cd "$part" && timeout -k 10 "$TIMEOUT" "$WSTEST" -m fuzzingclient -s "$part/spec.json" \
      >"$part/engine.log" 2>&1) &
    pids+=($!)
  done
  rc=0
  for p in "${pids[@]}"; do
    wait "$p" || rc=$?
  done
  # One report from the parts: their index.json merged, the case files beside it.
  python3 - "$REPORT_DIR" "$JOBS" <<'MERGE'
import glob, json, os, shutil, sys
outdir, jobs = sys.argv[1], int(sys.argv[2])
index = {}
with open(os.path.join(outdir, "engine.log"), "w") as log:
    for k in range(jobs):
        part = os.path.join(outdir, "part-%d" % k)
        try:
            with open(os.path.join(part, "index.json")) as f:
                for agent, results in json.load(f).items():
                    index.setdefault(agent, {}).update(results)
        except (OSError, ValueError) as e:
            log.write("part-%d: no index.json (%s)\n" % (k, e))
        for path in glob.glob(os.path.join(part, "*_case_*.json")):
            shutil.copy(path, outdir)
        try:
            log.write(open(os.path.join(part, "engine.log")).read())
        except OSError:
            pass
if index:
    with open(os.path.join(outdir, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
MERGE
fi
[[ $rc == 124 || $rc == 137 ]] && log "ERROR: the run took longer than AUTOBAHN_TIMEOUT=${TIMEOUT} s and was stopped"
if [[ -n "$server" ]] && ! kill -0 "$server" 2>/dev/null; then
  log "ERROR: wsgate exited during the run"
fi

python3 "$KIT/summarize.py" --report-dir "$REPORT_DIR" --all-cases "$KIT/cases.txt" \
  --cases "$CASES" --exclude "$EXCLUDE" --url "$URL" --seconds "$(($(date +%s) - start))" --rc "$rc"
