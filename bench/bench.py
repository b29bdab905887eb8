#!/usr/bin/env python3
"""Interleaved WebSocket server benchmark (stdlib only); scripts/bench.sh runs it.

  bench.py run --server 'wsgate=CMD with {port}' [--anchors a,b] [--scenarios ..] [--reps N] --out FILE
  bench.py table FILE.jsonl [...]

`run`: for every repetition, every scenario, every server (the order rotated
and reversed between repetitions, so that drift on a shared machine spreads
over all servers): start a fresh server pinned to the server core on a free
port, wait until its pid listens there, run the load generator pinned to the
client core with --pid, stop the server. One JSON line per run (stdout and
--out).

`table`: the markdown tables that README.md shows, medians over the runs:
server CPU microseconds per message (per delivery for broadcast) with the
idle scenario's bytes per connection and handshakes/s, then messages/s with
latency p50 / p99.

A server command must contain {port} and listen on 127.0.0.1:{port}; a
command written `wss:CMD` is measured over TLS (the load generator's
wss:// mode: full handshakes, the certificate not verified). The
anchors echo on every path and relay on /bcast (those that have no relay are
left out of the broadcast scenarios); the measured server's paths are
ECHO_PATH and BCAST_PATH.
"""
import argparse
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RELEASE = os.path.join(HERE, "target", "release")
# LOADGEN= runs another build of the load generator (same flags and JSON),
# e.g. to compare two versions of it against the same server.
LOADGEN = os.environ.get("LOADGEN") or os.path.join(RELEASE, "loadgen")

# name -> (command with {port}, has a /bcast relay)
ANCHORS = {
    "tokio-tungstenite": (f"{RELEASE}/tokio-echo {{port}}", True),
    "fastwebsockets": (f"{RELEASE}/fws-echo {{port}}", False),
    "libwebsockets": (f"{HERE}/anchors/lws-echo/lws-echo {{port}}", False),
    "smol-tungstenite": (f"{RELEASE}/smol-echo {{port}}", True),
    "smol-tungstenite-rb4k": (f"{RELEASE}/smol-echo {{port}} --rbuf 4096", True),
}

# scenario -> loadgen arguments (duration and warm-up are added for echo and broadcast)
SCENARIOS = {
    "echo_c1": ["echo", "-c", "1", "-s", "32"],
    "echo_c100": ["echo", "-c", "100", "-s", "32"],
    "echo_c1000": ["echo", "-c", "1000", "-s", "32"],
    "echo_c100_16k": ["echo", "-c", "100", "-s", "16384"],
    "pipe16_c100": ["echo", "-c", "100", "-s", "32", "-k", "16"],
    "idle_10k": ["idle", "-n", "10000"],
    "idle_10k_touch": ["idle", "-n", "10000", "--touch"],
    "bcast_m100": ["broadcast", "-m", "100", "-s", "32", "--window", "16"],
    "bcast_m1000": ["broadcast", "-m", "1000", "-s", "32", "--window", "4"],
    # permessage-deflate (docs/BENCHMARKS.md): 1 KiB JSON messages (64 distinct
    # ones in turn), plain (_json) or compressed by the client, with the
    # browser's offer (_deflate). The server's compression mode is its own
    # configuration's.
    "echo_c100_json": ["echo", "-c", "100", "-s", "1024", "--json"],
    "echo_c100_deflate": ["echo", "-c", "100", "-s", "1024", "--deflate"],
    "bcast_m1000_json": ["broadcast", "-m", "1000", "-s", "1024", "--window", "4", "--json"],
    "bcast_m1000_deflate": ["broadcast", "-m", "1000", "-s", "1024", "--window", "4", "--deflate"],
}

# server name -> URL scheme ("ws", or "wss" for a server given as wss:CMD)
SCHEMES = {}

SERVER_CORE = os.environ.get("SERVER_CORE", "0")
CLIENT_CORE = os.environ.get("CLIENT_CORE", "1")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pick_port():
    # Below the ephemeral range (32768 and up), so no client socket takes it.
    for _ in range(200):
        port = random.randint(20000, 31999)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    raise RuntimeError("no free port")


def listens(pid, port):
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return f"pid={pid}," in out


def start_server(template, port):
    argv = ["taskset", "-c", SERVER_CORE] + shlex.split(template.replace("{port}", str(port)))
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 15
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"server exited early ({p.returncode}): {argv}")
        if listens(p.pid, port):
            return p
        time.sleep(0.05)
    stop_server(p)
    raise RuntimeError(f"server did not listen on {port} within 15 s: {argv}")


def stop_server(p):
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def loadgen(scenario, port, pid, name, is_anchor, a):
    args = SCENARIOS[scenario]
    kind = args[0]
    if is_anchor:
        path = "/bcast" if kind == "broadcast" else "/"
    else:
        path = os.environ.get("BCAST_PATH", "/bcast") if kind == "broadcast" else os.environ.get("ECHO_PATH", "/")
    argv = ["taskset", "-c", CLIENT_CORE, LOADGEN] + args + [
        "--url", f"{SCHEMES.get(name, 'ws')}://127.0.0.1:{port}{path}", "--label", name, "--pid", str(pid)]
    if kind != "idle":
        argv += ["-d", str(a.duration), "-w", str(a.warmup)]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120 + a.duration + a.warmup)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "loadgen timed out"}
    try:
        return json.loads((r.stdout.strip().splitlines() or [""])[-1])
    except json.JSONDecodeError:
        return {"ok": False, "error": f"loadgen exit {r.returncode}: {r.stdout[-300:]} {r.stderr[-300:]}"}


def derive(res):
    """Server and client CPU microseconds per message, and the noise: CPU time
    on the two cores used by anything but the server and the client."""
    rate = res.get("msgs_per_s") or res.get("deliveries_per_s")
    cpu, ccpu = res.get("server_cpu_pct"), res.get("client_cpu_pct")
    if rate and cpu is not None:
        res["server_us_per_msg"] = round(cpu / 100.0 / rate * 1e6, 3)
    if rate and ccpu is not None:
        res["client_us_per_msg"] = round(ccpu / 100.0 / rate * 1e6, 3)
    busy = res.get("cores_busy_pct")
    s, c = int(SERVER_CORE), int(CLIENT_CORE)
    if busy and cpu is not None and ccpu is not None and len(busy) > max(s, c):
        res["noise_pct"] = round(max(busy[s] - cpu, busy[c] - ccpu, 0.0), 1)


def run(a):
    if not os.path.exists(LOADGEN):
        sys.exit(f"bench.py: {LOADGEN} is not built (cargo build --release --manifest-path {HERE}/Cargo.toml)")
    servers = {}
    for spec in a.server:
        name, _, cmd = spec.partition("=")
        if "{port}" not in cmd:
            sys.exit(f"bench.py: --server needs NAME=CMD with {{port}}: {spec}")
        scheme = "ws"
        if cmd.startswith("wss:"):
            scheme, cmd = "wss", cmd[len("wss:"):]
        SCHEMES[name] = scheme
        servers[name] = (cmd, True, False)
    for name in filter(None, a.anchors.split(",")):
        if name not in ANCHORS:
            sys.exit(f"bench.py: unknown anchor {name} (known: {', '.join(ANCHORS)})")
        cmd, relays = ANCHORS[name]
        if not os.path.exists(shlex.split(cmd)[0]):
            log(f"bench.py: skipping {name}: {shlex.split(cmd)[0]} is not built")
            continue
        servers[name] = (cmd, relays, True)
    scenarios = [s for s in a.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"bench.py: unknown scenario {s} (known: {', '.join(SCENARIOS)})")
    names = list(servers)
    log(f"bench.py: servers {names}, scenarios {scenarios}, {a.reps} reps, {a.duration} s + {a.warmup} s warm-up; "
        f"server on core {SERVER_CORE}, load generator on core {CLIENT_CORE}")
    out = open(a.out, "a") if a.out else None
    failures = 0
    for rep in range(a.reps):
        # Rotated, so that every server takes every position (the first run
        # after another scenario's teardown is the one that pays for its
        # sockets in TIME_WAIT). Reversing too would cancel the rotation for
        # two servers.
        order = names[rep % len(names):] + names[:rep % len(names)]
        for sc in scenarios:
            for name in order:
                cmd, relays, is_anchor = servers[name]
                if SCENARIOS[sc][0] == "broadcast" and not relays:
                    continue
                port = pick_port()
                try:
                    p = start_server(cmd, port)
                except RuntimeError as e:
                    res = {"ok": False, "error": str(e)}
                else:
                    time.sleep(0.2)
                    res = loadgen(sc, port, p.pid, name, is_anchor, a)
                    if p.poll() is not None and res.get("ok"):
                        res = {"ok": False, "error": f"the server died during the run ({p.returncode})"}
                    stop_server(p)
                res.update({"server": name, "scenario_id": sc, "rep": rep, "ts": round(time.time(), 1)})
                derive(res)
                failures += not res.get("ok")
                line = json.dumps(res, separators=(",", ":"))
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()
                time.sleep(0.3)
    return 1 if failures else 0


def short(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def table(paths):
    rows = [json.loads(l) for p in paths for l in open(p) if l.strip()]
    servers, scenarios, by, failed = [], [], {}, []
    for r in rows:
        s, c = r["server"], r["scenario_id"]
        servers += [s] if s not in servers else []
        scenarios += [c] if c not in scenarios else []
        if r.get("ok"):
            by.setdefault((s, c), []).append(r)
        else:
            failed.append(f"{s} / {c} (rep {r.get('rep')}): {r.get('error', '?')[:160]}")
    traffic = [c for c in scenarios if not c.startswith("idle")]
    idle = [c for c in scenarios if c.startswith("idle")]

    def med(s, c, key):
        v = [r[key] for r in by.get((s, c), []) if r.get(key) is not None]
        return statistics.median(v) if v else None

    def best(c, key, low):
        v = [x for x in (med(s, c, key) for s in servers) if x is not None]
        return (min(v) if low else max(v)) if v else None

    def cell(s, c, key, text, low):
        v = med(s, c, key)
        if v is None:
            return "–"
        return f"**{text(v)}**" if v == best(c, key, low) and len(servers) > 1 else text(v)

    def grid(head, cells):
        out = ["| server | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        out += [f"| {s} | " + " | ".join(cells(s)) + " |" for s in servers]
        return out

    reps = max((len(v) for v in by.values()), default=0)
    out = [f"Server CPU per message in microseconds (per delivery for bcast_*), lower is better; "
           f"idle: server memory per idle connection and handshakes/s. Medians of {reps} runs.", ""]
    head = traffic + [f"{c} B/conn" for c in idle] + [f"{c} handshakes/s" for c in idle]
    out += grid(head, lambda s: [cell(s, c, "server_us_per_msg", lambda v: f"{v:.2f}", True) for c in traffic]
                + [cell(s, c, "server_bytes_per_conn", lambda v: f"{v:,.0f}", True) for c in idle]
                + [cell(s, c, "handshakes_per_s", short, False) for c in idle])
    if traffic:
        out += ["", "Messages per second (deliveries for bcast_*), higher is better; "
                "echo latency p50 / p99 in milliseconds.", ""]

        def rate(s, c):
            key = "deliveries_per_s" if c.startswith("bcast") else "msgs_per_s"
            text = cell(s, c, key, short, False)
            p50, p99 = med(s, c, "lat_us_p50"), med(s, c, "lat_us_p99")
            return text + (f" ({p50 / 1000:.2f} / {p99 / 1000:.1f})" if p50 is not None else "")
        out += grid(traffic, lambda s: [rate(s, c) for c in traffic])
    deflated = [c for c in traffic if any(r.get("deflate") for r in by.get((s, c), []) for s in servers)]
    if deflated:
        out += ["", "permessage-deflate: compression ratio of what the server sent (payload bytes "
                "before / on the wire) and the extension it agreed to.", ""]

        def ratio(s, c):
            v = med(s, c, "ratio_server_to_client")
            agreed = next((r.get("deflate_agreed") for r in by.get((s, c), []) if r.get("deflate_agreed")), "")
            return "–" if v is None else f"{v:.2f} (`{agreed}`)"
        out += grid(deflated, lambda s: [ratio(s, c) for c in deflated])
    noise = [r["noise_pct"] for r in rows if r.get("noise_pct") is not None]
    if noise:
        out += ["", f"Noise (CPU on the two cores used by other processes): median {statistics.median(noise):.1f} %, "
                f"max {max(noise):.1f} % over {len(noise)} runs."]
    if failed:
        out += ["", "Failed runs:"] + [f"- {f}" for f in failed]
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--server", action="append", default=[], metavar="NAME=CMD")
    r.add_argument("--anchors", default="", help="comma list: " + ",".join(ANCHORS))
    r.add_argument("--scenarios", default="echo_c100", help="comma list: " + ",".join(SCENARIOS))
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--duration", type=float, default=5.0)
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--out", default="")
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    a = ap.parse_args()
    if a.cmd == "run":
        sys.exit(run(a))
    table(a.files)


if __name__ == "__main__":
    main()
