#!/usr/bin/env python3
"""Mutation testing with Strata's own catalogue (tests/mutants.toml): plants one realistic one-line
bug at a time in the source tree, rebuilds what it touches, runs the tests meant to catch it and
counts it killed when they fail. The score is killed / (mutants that compiled).

  scripts/mutate.py                 # every mutant, build/ as the build folder
  scripts/mutate.py --only ID ...   # some of them
  scripts/mutate.py --list          # the catalogue
  scripts/mutate.py --check         # every mutant still matches its code (the test command runs this)

Each source file is restored after its mutant (also on Ctrl-C). It edits the tree it runs in: run
it in a clone of its own if you keep working meanwhile. Progress on stderr, the table on stdout;
exit 1 below --min (percent, default 90) or when a mutant's text is no longer in its file (the
catalogue has drifted from the code: update it).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, timeout):
    try:
        p = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b"").decode(errors="replace")


def build(build_dir, targets):
    return run(["cmake", "--build", build_dir, "--target", *targets], timeout=1800)


def ctest(build_dir, regex, timeout):
    # Tests stop at the first failure: one is enough to kill the mutant.
    return run(["ctest", "--test-dir", build_dir, "-R", regex, "-j2", "--timeout", str(timeout),
                "--stop-on-failure", "--no-tests=error"], timeout=timeout * 20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="the configured build folder (default build)")
    ap.add_argument("--catalogue", default="tests/mutants.toml")
    ap.add_argument("--only", nargs="*", help="mutant ids to run")
    ap.add_argument("--list", action="store_true", help="print the catalogue and exit")
    ap.add_argument("--check", action="store_true",
                    help="only check that every mutant's text is still in its file, once (fast; a test runs it)")
    ap.add_argument("--min", type=float, default=90.0, help="lowest acceptable score in percent")
    ap.add_argument("--timeout", type=int, default=300, help="per test, seconds")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()

    with open(os.path.join(ROOT, a.catalogue), "rb") as f:
        mutants = tomllib.load(f)["mutant"]
    ids = [m["id"] for m in mutants]
    if len(set(ids)) != len(ids):
        sys.exit("mutate: duplicate mutant ids in " + a.catalogue)
    if a.only:
        unknown = set(a.only) - set(ids)
        if unknown:
            sys.exit("mutate: unknown mutant ids: " + ", ".join(sorted(unknown)))
        mutants = [m for m in mutants if m["id"] in a.only]
    if a.list:
        for m in mutants:
            print(f"{m['id']:32} {m['file']:28} {m['why']}")
        return 0

    # Every mutant's text must occur exactly once, or the catalogue no longer matches the code.
    stale = []
    for m in mutants:
        if "(" in m["tests"]:
            stale.append(f"{m['id']}: its tests regex has parentheses (CMake's regex engine runs out of groups)")
        text = open(os.path.join(ROOT, m["file"])).read()
        if text.count(m["find"]) != 1:
            stale.append(f"{m['id']}: {m['file']} has its text {text.count(m['find'])} times, not once")
    if stale:
        for s in stale:
            log("mutate: stale: " + s)
        return 1
    if a.check:
        print(f"mutate: all {len(mutants)} mutants of {a.catalogue} match their code")
        return 0

    # The tests must pass on the code as it is, or a failure says nothing about a mutant.
    targets = sorted({t for m in mutants for t in m["targets"]})
    log(f"mutate: building {' '.join(targets)} and running the catalogue's tests on the unmutated code")
    rc, out = build(a.build, targets)
    if rc:
        sys.stderr.write(out[-4000:])
        sys.exit("mutate: the unmutated code does not build")
    regexes = sorted({m["tests"] for m in mutants})
    rc, out = ctest(a.build, "|".join(regexes), a.timeout)
    if rc:
        sys.stderr.write(out[-4000:])
        sys.exit("mutate: the catalogue's tests fail on the unmutated code")

    results = []
    current = {}

    def restore(*_):
        for path, text in current.items():
            with open(path, "w") as f:
                f.write(text)
        current.clear()

    def interrupted(*_):
        restore()
        sys.exit("mutate: interrupted; sources restored")

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    t_all = time.monotonic()
    for i, m in enumerate(mutants):
        path = os.path.join(ROOT, m["file"])
        text = open(path).read()
        current[path] = text
        with open(path, "w") as f:
            f.write(text.replace(m["find"], m["replace"]))
        t0 = time.monotonic()
        try:
            rc, out = build(a.build, m["targets"])
            if rc:
                verdict, detail = "no-build", out.strip().splitlines()[-1:] or [""]
            else:
                rc, out = ctest(a.build, m["tests"], a.timeout)
                failed = [l.strip() for l in out.splitlines() if "(Failed)" in l or "(Timeout)" in l
                          or "***Failed" in l or "***Timeout" in l or "Exception" in l]
                verdict = "killed" if rc else "survived"
                detail = failed[:1] if rc else ["its tests pass with the bug in place"]
        finally:
            restore()
        secs = time.monotonic() - t0
        results.append({"id": m["id"], "file": m["file"], "why": m["why"], "verdict": verdict,
                        "detail": detail[0] if detail else "", "seconds": round(secs, 1)})
        log(f"mutate: [{i + 1}/{len(mutants)}] {m['id']}: {verdict} in {secs:.0f} s")

    log("mutate: rebuilding the unmutated code")
    build(a.build, targets)

    compiled = [r for r in results if r["verdict"] != "no-build"]
    killed = [r for r in compiled if r["verdict"] == "killed"]
    score = 100.0 * len(killed) / max(1, len(compiled))
    print(f"{'mutant':32} {'verdict':9} {'s':>5}  what it plants")
    for r in results:
        print(f"{r['id']:32} {r['verdict']:9} {r['seconds']:5.0f}  {r['why']}")
    print(f"\nmutation score: {len(killed)}/{len(compiled)} killed = {score:.1f}% (limit {a.min:.0f}%), "
          f"{len(results) - len(compiled)} did not build, {time.monotonic() - t_all:.0f} s")
    for r in compiled:
        if r["verdict"] == "survived":
            print(f"  SURVIVED {r['id']} ({r['file']}): {r['why']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"score": score, "results": results}, f, indent=1)
    return 0 if score >= a.min else 1


if __name__ == "__main__":
    sys.exit(main())
