#!/usr/bin/env python3
"""Summarize an Autobahn|Testsuite fuzzingclient report (index.json).

Called by scripts/autobahn.sh; prints details and a final one-line summary:
  autobahn: OK=n NON-STRICT=n INFORMATIONAL=n UNIMPLEMENTED=n FAILED=n total=n
Exit status: 0 when FAILED=0 and NON-STRICT=0, 1 when a case failed or was
non-strict, 2 when there is no report.

Verdict per case, mirroring the colours of Autobahn's own HTML report:
  FAILED        behavior not in {OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED}
                (FAILED, NO CLOSE, ...), or behaviorClose in {FAILED, UNCLEAN}
                (red close cell), or a selected case that has no result
                (server died / run aborted).
  NON-STRICT    behavior NON-STRICT, or behavior OK with behaviorClose
                WRONG CODE / FAILED BY CLIENT (yellow close cell).
  otherwise     the behavior itself (OK, INFORMATIONAL, UNIMPLEMENTED).
"""
import argparse
import json
import os
import re
import sys
from collections import Counter, OrderedDict

CATS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def case_key(cid):
    return [int(p) for p in cid.split(".")]


def resolve(patterns, all_cases):
    """Autobahn's own pattern semantics (caseset.resolveCasePatternList)."""
    out = []
    for pat in patterns:
        if "*" in pat:
            rx = re.compile(pat.replace(".", r"\.").replace("*", ".*"))
            out.extend(c for c in all_cases if rx.match(c))
        else:
            out.append(pat)
    return out


def verdict(res):
    b, bc = res.get("behavior"), res.get("behaviorClose")
    if b not in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"):
        return "FAILED"
    if b == "UNIMPLEMENTED":
        return b
    if bc in ("FAILED", "UNCLEAN"):
        return "FAILED"
    if b == "OK" and bc in ("WRONG CODE", "FAILED BY CLIENT"):
        return "NON-STRICT"
    return b


def compress(ids):
    """'12.1.1 .. 12.5.18' style: collapse whole top-level sections."""
    by_sec = OrderedDict()
    for c in ids:
        by_sec.setdefault(c.split(".")[0], []).append(c)
    return by_sec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report-dir", required=True)
    ap.add_argument("--all-cases", required=True)
    ap.add_argument("--cases", default="*")
    ap.add_argument("--exclude", default="")
    ap.add_argument("--url", default="")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--rc", type=int, default=0, help="exit status of the engine")
    a = ap.parse_args()

    all_cases = [l.strip() for l in open(a.all_cases) if l.strip()]
    inc_pats = a.cases.replace(",", " ").split() or ["*"]
    exc_pats = a.exclude.replace(",", " ").split()
    included = resolve(inc_pats, all_cases)
    excluded_set = set(resolve(exc_pats, all_cases))
    selected = sorted(set(included) - excluded_set, key=case_key)
    excluded = sorted(set(included) & excluded_set, key=case_key)

    p = print
    p("autobahn: cases=%s -> %d selected; excluded=%s -> %d cases%s" % (
        " ".join(inc_pats), len(selected), " ".join(exc_pats) or "none", len(excluded),
        (" (" + ", ".join("%s.*: %d" % (s, len(v)) for s, v in compress(excluded).items()) + ")")
        if excluded else ""))

    index_path = os.path.join(a.report_dir, "index.json")
    try:
        index = json.load(open(index_path))
    except (OSError, ValueError) as e:
        p("autobahn: ERROR: no usable report at %s (%s); engine exit status %d; see %s" % (
            index_path, e, a.rc, os.path.join(a.report_dir, "engine.log")))
        p("autobahn: OK=0 NON-STRICT=0 INFORMATIONAL=0 UNIMPLEMENTED=0 FAILED=%d total=%d"
          % (len(selected), len(selected)))
        return 2
    results = {}
    for agent_results in index.values():  # one agent per run
        results.update(agent_results)

    counts = Counter()
    per_cat = {c: [] for c in CATS}
    sections = OrderedDict()
    detail = []
    not_run = []
    for cid in selected:
        res = results.get(cid)
        if res is None:
            v = "FAILED"
            not_run.append(cid)
        else:
            v = verdict(res)
            if v == "FAILED" or (v == "NON-STRICT" and res.get("behavior") == "OK"):
                why = ""
                rf = res.get("reportfile")
                if rf:
                    try:
                        cj = json.load(open(os.path.join(a.report_dir, rf)))
                        why = (cj.get("result") or "") + " / " + (cj.get("resultClose") or "")
                    except (OSError, ValueError):
                        pass
                detail.append("  %-8s %-8s behavior=%s close=%s code=%s  %s" % (
                    cid, v, res.get("behavior"), res.get("behaviorClose"),
                    res.get("remoteCloseCode"), why))
        counts[v] += 1
        per_cat[v].append(cid)
        sections.setdefault(cid.split(".")[0], Counter())[v] += 1
    extra = sorted(set(results) - set(selected), key=case_key)

    p("autobahn: per section (%s):" % "/".join(CATS))
    for sec, c in sections.items():
        p("  %-3s %s" % (sec + ".*", " ".join("%s=%d" % (k, c[k]) for k in CATS if c[k])))
    for cat in ("NON-STRICT", "INFORMATIONAL"):
        if per_cat[cat]:
            p("autobahn: %s: %s" % (cat, " ".join(per_cat[cat])))
    if per_cat["UNIMPLEMENTED"]:
        p("autobahn: UNIMPLEMENTED: %s" % ", ".join(
            "%s.* x%d" % (s, len(v)) for s, v in compress(per_cat["UNIMPLEMENTED"]).items()))
    if not_run:
        detail.append("  %d cases not run (no result: server stopped accepting connections, or the run "
                      "was aborted; see engine.log): %s" % (len(not_run), " ".join(not_run[:8]) +
                                                           (" ... %s" % not_run[-1] if len(not_run) > 8 else "")))
    if detail:
        p("autobahn: FAILED / downgraded cases:")
        for d in detail:
            p(d)
    if extra:
        p("autobahn: note: %d results outside the selection ignored" % len(extra))
    if a.seconds is not None:
        p("autobahn: url=%s run time %.1f s; report %s" % (
            a.url, a.seconds, os.path.join(a.report_dir, "index.html")))

    line = "autobahn: " + " ".join("%s=%d" % (k, counts[k]) for k in CATS) + " total=%d" % len(selected)
    summary = {
        "url": a.url, "seconds": a.seconds,
        "cases": inc_pats, "exclude": exc_pats, "excluded_cases": excluded,
        "counts": {k: counts[k] for k in CATS}, "total": len(selected),
        "by_verdict": per_cat, "not_run": not_run,
    }
    with open(os.path.join(a.report_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(a.report_dir, "summary.txt"), "w") as f:
        f.write(line + "\n")
    p(line)
    return 0 if counts["FAILED"] == 0 and counts["NON-STRICT"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
