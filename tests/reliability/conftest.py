"""The reliability suite: seeded hypothesis settings sized by $KATALYST_RELIABILITY_EXAMPLES, the figures recorder, and
one API emulator per module for the CRD fuzzing (hypothesis runs many examples in one test: a per-test fixture would be
shared across them anyway).

$KATALYST_RELIABILITY_REPORT names a file each pytest process appends its figures to (one JSON object per line:
``{figure: {"tried": n, "expected": n, "failures": n, "outcomes": {outcome: n}}}``); tests/benchmarks/reliability.py
sums and prints them.
"""

import collections
import json
import os

import pytest
from hypothesis import HealthCheck, settings

from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig

EXAMPLES = int(os.environ.get("KATALYST_RELIABILITY_EXAMPLES", "100"))
# The chaos figures (kills, failovers, faults) run at full size from tests/benchmarks/reliability.py and reduced in CI.
FULL_SIZE = os.environ.get("KATALYST_RELIABILITY_SIZE", "ci") == "full"


def sized(full, ci):
    """How many rounds a chaos figure runs: ``full`` from the reliability script, ``ci`` in the test suite."""
    return full if FULL_SIZE else ci


REPORT_VARIABLE = "KATALYST_RELIABILITY_REPORT"

settings.register_profile("reliability", max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
FUZZ = settings.get_profile("reliability")

_FIGURES = collections.defaultdict(lambda: {"tried": 0, "expected": 0, "failures": 0, "outcomes": collections.Counter()})


def record(figure, outcome, expected=True):
    """Count one case of ``figure``: how it ended (``outcome``) and whether that is an expected end."""
    entry = _FIGURES[figure]
    entry["tried"] += 1
    entry["expected" if expected else "failures"] += 1
    entry["outcomes"][outcome] += 1


def pytest_sessionfinish(session):
    del session
    path = os.environ.get(REPORT_VARIABLE)
    if path and _FIGURES:
        with open(path, "a", encoding="utf-8") as report:
            report.write(json.dumps({name: dict(entry, outcomes=dict(entry["outcomes"])) for name, entry in _FIGURES.items()}) + "\n")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """An API emulator with our CRDs installed (``.url``, ``.kubeconfig``, ``.client``: a kubernetes ApiClient)."""
    kubernetes = pytest.importorskip("kubernetes")
    from tests.integration import backends  # pylint: disable=import-outside-toplevel
    server = KubeAPIServer().start()
    server.backend = "emulator"
    server.kubeconfig = str(tmp_path_factory.mktemp("reliability") / "kubeconfig")
    write_kubeconfig(server.kubeconfig, server.url)
    server.client = backends.api_client(server)
    backends.install_crds(server.client)
    server.custom = kubernetes.client.CustomObjectsApi(server.client)
    yield server
    server.client.close()
    server.stop()
