"""The benchmarks on the real control plane (tests/benchmarks/), each in its smallest mode: they run to the end against
the pinned kube-apiserver + etcd and print their figure lines. No timing is asserted: the figures are for people.

Skipped when the pinned release is not built (`make kube-build`). Each script starts and stops its own control plane in
a state directory under tmp_path, which is stopped again here whatever happened.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.integration.realcluster import cluster_down, needs_build

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
REPO = os.path.dirname(os.path.dirname(BENCHMARKS))
TIMEOUT = 1800  # a loaded 2-core machine: the control plane alone may take a minute to start


def run_benchmark(tmp_path, script, *args):
    state = tmp_path / "cluster"
    try:
        result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), "--quick", "--state-dir", str(state)] + list(args),
                                capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=REPO)
    finally:
        cluster_down(state)
    assert result.returncode == 0, "%s failed (%d):\n%s\n%s" % (script, result.returncode, result.stdout[-4000:], result.stderr[-4000:])
    return result.stdout


@pytest.mark.slow
@needs_build
def test_overcommit_resync_on_the_real_apiserver(tmp_path):
    output = run_benchmark(tmp_path, "overcommit_reconcile.py", "--backend", "real")
    # one PATCH per node and no GET on the first pass; no request and no node planned again on the incremental no-op pass
    assert re.search(r"^real +first pass \(writes\) +[\d.]+s +200 nodes planned +200 patched +requests: .*\b201 patch$", output, re.M), output
    assert not re.search(r"^real +first pass .*requests: .*\bget\b", output, re.M), output
    assert re.search(r"^real +no-op pass \(incremental\) +[\d.]+s +0 nodes planned +0 patched +requests: none$", output, re.M), output
    assert re.search(r"^real +no-op pass, previous \(every node planned\) +[\d.]+s +200 nodes planned +0 patched", output, re.M), output


@pytest.mark.slow
@needs_build
def test_tide_pass_on_the_real_apiserver(tmp_path):
    output = run_benchmark(tmp_path, "tide_pass.py", "--backend", "real")
    for label in ("first pass", "quiet", "pending"):
        assert re.search(r"^real +%s +relist +[\d.]+s +pass \(plan \+ writes\) +[\d.]+s +\d+ API calls +\d+ writes" % label, output, re.M), output


@pytest.mark.slow
@needs_build
def test_scheduler_throughput_with_and_without_the_extender(tmp_path):
    output = run_benchmark(tmp_path, "real_scheduler.py")
    assert re.search(r"^without extender +\d+/20 pods bound: [\d.na]+ pods/s", output, re.M), output
    assert re.search(r"^with extender +\d+/20 pods bound: [\d.na]+ pods/s", output, re.M), output
    assert re.search(r"^with extender +extender filter +\d+ requests, mean +[\d.]+ ms, p50 +[\d.]+ ms, p99 +[\d.]+ ms", output, re.M), output
