"""Shared fixtures: the cluster the cluster-side tests run against, over real HTTP, and the real kubernetes client.

`kubeapi` runs each test on two backends (`--backend emulator|real|both`, default both; or $KATALYST_TEST_BACKEND):
our API emulator, and the real control plane of sandbox/kube (skipped with the reason when it is not built). A test
that needs what only the emulator has (its store, fault injection) says so with
`@pytest.mark.emulator_only("why")`; where the two disagree, the real one is right.

With $KATALYST_KUBEAPI_REQUEST_LOG set, every emulator appends each request it receives (User-Agent, verb, group,
resource, namespace, name) to that file (test_rbac_calls.py reads it to check the daemons' calls against their RBAC).
"""

import os

import pytest

kubernetes = pytest.importorskip("kubernetes")

from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig  # noqa: E402
from tests.integration import backends, realnode  # noqa: E402
from tests.integration.backends import BACKENDS, REQUEST_LOG_VARIABLE, RealBackend, RealControlPlane, real_build_missing  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--backend", choices=BACKENDS + ("both",), default=os.environ.get("KATALYST_TEST_BACKEND", "both"),
                     help="the cluster the cluster-side integration tests run against (default: both)")


def pytest_configure(config):
    config.addinivalue_line("markers", "emulator_only(reason): runs on the API emulator only, for the reason given")


def pytest_collection_modifyitems(config, items):
    wanted = BACKENDS if config.getoption("--backend") == "both" else (config.getoption("--backend"),)
    missing = real_build_missing()
    if missing and "real" in wanted and os.environ.get("KATALYST_REQUIRE_REAL_BACKEND"):
        raise pytest.UsageError("KATALYST_REQUIRE_REAL_BACKEND is set (make test) but " + missing)
    node_missing = realnode.skip_reason()
    # as root (CI) the real node must run; without root it is skipped, as the molecule tiers are
    wants_node = any("real_node" in getattr(item, "fixturenames", ()) for item in items)
    if node_missing and wants_node and os.geteuid() == 0 and os.environ.get("KATALYST_REQUIRE_REAL_BACKEND"):
        raise pytest.UsageError("KATALYST_REQUIRE_REAL_BACKEND is set (make test) but " + node_missing)
    keep, dropped = [], []
    for item in items:
        backend = getattr(item, "callspec", None) and item.callspec.params.get("kubeapi")
        if backend and backend not in wanted:
            dropped.append(item)
            continue
        keep.append(item)
        if backend != "real":
            continue
        only = item.get_closest_marker("emulator_only")
        if only:
            item.add_marker(pytest.mark.skip(reason="emulator only: " + (only.args[0] if only.args else only.kwargs.get("reason", ""))))
        elif missing:
            item.add_marker(pytest.mark.skip(reason=missing))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def real_control_plane(tmp_path_factory):
    """The real control plane of this session (of this xdist worker), started at the first test that needs it."""
    plane = RealControlPlane(tmp_path_factory.mktemp("real-control-plane"))
    try:
        yield plane.start()
    finally:  # also when it failed to start: what did start stops
        plane.stop()


@pytest.fixture(params=BACKENDS)
def kubeapi(request, tmp_path):
    """The cluster of this test (``.url``, ``.kubeconfig``, ``.backend``; the emulator also has ``.api`` and
    ``.store``), empty at the start; the emulator is stopped after the test, the real control plane reset."""
    if request.param == "real":
        plane = request.getfixturevalue("real_control_plane")
        yield RealBackend(plane)
        plane.reset()
        return
    server = KubeAPIServer(bookmark_interval=0.3, request_log=os.environ.get(REQUEST_LOG_VARIABLE) or None).start()
    server.backend = "emulator"
    server.kubeconfig = str(tmp_path / "kubeconfig")
    write_kubeconfig(server.kubeconfig, server.url)
    yield server
    server.stop()


@pytest.fixture
def kube_client(kubeapi):
    """A ``kubernetes.client.ApiClient`` pointed at the test's cluster."""
    api_client = backends.api_client(kubeapi)
    yield api_client
    api_client.close()


@pytest.fixture(scope="session")
def real_node(tmp_path_factory):
    """The real kubelet node (sandbox/kube/node.py) with a control plane of its own, for the session; the tests that
    use it carry `realnode.marks` (one xdist group, skipped with the reason where no node can run)."""
    reason = realnode.skip_reason()
    if reason:
        pytest.skip(reason)
    with realnode.real_node(tmp_path_factory.mktemp("real-node")) as node:
        yield node


@pytest.fixture
def sandbox_state(tmp_path):
    """A sandbox state directory (``python -m sandbox ... --state DIR``), the sandbox always taken down at the end."""
    # a test module: imported when the fixture is used
    from tests.integration.test_site_demo import sandbox  # pylint: disable=import-outside-toplevel
    state = tmp_path / "sandbox"
    try:
        yield state
    finally:
        sandbox(state, "down", timeout=120)
