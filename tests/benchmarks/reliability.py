"""Reliability figures: the reliability suite (tests/reliability: fuzzing, kills, failovers, faults) at full size.

    python tests/benchmarks/reliability.py [--examples 500]

Runs pytest on tests/reliability with $KATALYST_RELIABILITY_EXAMPLES set (hypothesis examples per test; seeded, so a
run is repeatable) and prints one line per figure: what was tried, how many cases, how many ended as expected
(refused with a clear reason, or handled), the failures, and how the cases ended.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="hypothesis examples per test (default 500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "figures.jsonl")
        env = dict(os.environ, KATALYST_RELIABILITY_EXAMPLES=str(args.examples), KATALYST_RELIABILITY_REPORT=report,
                   KATALYST_RELIABILITY_SIZE="full")
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/reliability"], cwd=REPO, env=env, check=False)
        elapsed = time.monotonic() - started
        figures = collections.OrderedDict()
        if os.path.exists(report):
            with open(report, encoding="utf-8") as lines:
                for line in lines:
                    for name, entry in json.loads(line).items():
                        total = figures.setdefault(name, {"tried": 0, "expected": 0, "failures": 0, "outcomes": collections.Counter()})
                        for key in ("tried", "expected", "failures"):
                            total[key] += entry[key]
                        total["outcomes"].update(entry["outcomes"])
    width = max((len(name) for name in figures), default=0)
    for name, entry in figures.items():
        ends = ", ".join("%s %d" % (outcome, count) for outcome, count in sorted(entry["outcomes"].items()))
        print("%s  tried %5d  as expected %5d  failures %d  (%s)" % (name.ljust(width), entry["tried"], entry["expected"], entry["failures"], ends))
    tried = sum(entry["tried"] for entry in figures.values())
    print("%s  tried %5d  as expected %5d  failures %d  pytest exit %d in %.1fs (%d examples per test)"
          % ("all figures, total".ljust(width), tried, sum(e["expected"] for e in figures.values()),
             sum(e["failures"] for e in figures.values()) + (run.returncode != 0), run.returncode, elapsed, args.examples))
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
