"""Where the API benchmarks run: the sandbox emulator (in this process) or the real control plane of sandbox/kube.

    with emulator(history_limit) as api_client: ...
    with real_control_plane(state_dir, up_args) as plane: plane.api_client ...

The real control plane is the pinned kube-apiserver + etcd (and, when asked, controller-manager and scheduler)
started by `python -m sandbox.kube.cluster up` in a state directory of its own, always stopped (`down`) at the end and
its directory removed unless it was given. Also: a thread pool for bulk writes (the setup of a benchmark is not what
it measures), the wait for CRDs to be served, and the machine's load average, which every figure is printed with.
"""

import collections
import datetime
import concurrent.futures
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _path in (REPO, os.path.join(REPO, ".build", "collections")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from kubernetes import client, config  # noqa: E402  pylint: disable=wrong-import-position

from sandbox.kube import cluster as kube_cluster  # noqa: E402  pylint: disable=wrong-import-position

BACKENDS = ("emulator", "real")
WRITE_WORKERS = 16
# Writers for the bulk setup: the emulator's HTTP server (a listen backlog of 5) resets connections when many
# clients connect at once, so it is written to by one; the real apiserver takes many.
SETUP_WRITERS = {"emulator": 1, "real": WRITE_WORKERS}


def load_average():
    one, five, fifteen = os.getloadavg()
    return "load average %.1f / %.1f / %.1f (1/5/15 min), %d cores" % (one, five, fifteen, os.cpu_count())


def real_build_missing():
    """Why the real backend cannot run (None when it can)."""
    binary = os.path.join(kube_cluster.default_bin_dir(), "kube")
    if os.access(binary, os.X_OK):
        return None
    return "the pinned Kubernetes release is not built (%s is missing): run `make kube-build`" % binary


def parallel(func, items, workers=WRITE_WORKERS):
    """``func(item)`` for every item on a thread pool (bulk setup writes); the results in order, first error raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(func, items))


def bulk_write(label, func, items, backend):
    """The setup's writes (not what a benchmark measures), as fast as the backend takes them; prints how long."""
    def write(item):
        # a _preload_content=False response holds its connection (a file descriptor) until it is read; thousands of
        # them kept by the pool's result list ran out of descriptors under a 1,024 limit
        response = func(item)
        if hasattr(response, "release_conn"):
            response.drain_conn()
            response.release_conn()
    timed_step(label, parallel, write, items, SETUP_WRITERS[backend])


def timed_step(label, func, *args):
    started = time.monotonic()
    result = func(*args)
    print("%s in %.1fs" % (label, time.monotonic() - started), flush=True)
    return result


@contextlib.contextmanager
def emulator(history_limit=10000, pool_size=WRITE_WORKERS):
    """The sandbox API emulator in this process; yields an ApiClient."""
    from sandbox.kubeapi.server import KubeAPIServer  # pylint: disable=import-outside-toplevel
    server = KubeAPIServer(history_limit=history_limit).start()
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        configuration.connection_pool_maxsize = pool_size
        api_client = client.ApiClient(configuration)
        yield api_client
        api_client.close()
    finally:
        server.stop()


class RealControlPlane:
    """`python -m sandbox.kube.cluster up/down` on one state directory, with the options every `up` must repeat
    (an `up` with other options restarts the components whose command line changed)."""

    def __init__(self, state_dir, base_args=(), pool_size=WRITE_WORKERS):
        self.state_dir = state_dir
        self.base_args = list(base_args)
        self.pool_size = pool_size
        self._api_client = None

    @property
    def kubeconfig(self):
        return os.path.join(self.state_dir, "admin.kubeconfig")

    def up(self, *extra_args):
        """Start (or re-configure) the control plane; prints its last progress line (`control plane up in ...`)."""
        command = [sys.executable, "-m", "sandbox.kube.cluster", "up", "--state-dir", self.state_dir] + self.base_args + list(extra_args)
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=900)
        if result.returncode != 0:
            raise RuntimeError("cluster up failed (%d):\n%s\n%s" % (result.returncode, result.stdout[-3000:], result.stderr[-3000:]))
        lines = result.stdout.strip().splitlines()
        print(lines[-1] if lines else "cluster up", flush=True)

    def down(self):
        subprocess.run([sys.executable, "-m", "sandbox.kube.cluster", "down", "--state-dir", self.state_dir], cwd=REPO,
                       capture_output=True, text=True, check=False, timeout=300)

    @property
    def api_client(self):
        """The admin's ApiClient (client certificate), with one kept connection per bulk-write worker."""
        if self._api_client is None:
            configuration = client.Configuration()
            config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
            configuration.connection_pool_maxsize = self.pool_size
            self._api_client = client.ApiClient(configuration)
        return self._api_client

    def close(self):
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None


@contextlib.contextmanager
def real_control_plane(state_dir=None, base_args=(), up_args=()):
    """A real control plane for the length of the block; always `down` afterwards, and a temporary state directory
    (the default) removed."""
    reason = real_build_missing()
    if reason:
        raise SystemExit("real backend: " + reason)
    owned = state_dir is None
    state_dir = state_dir or tempfile.mkdtemp(prefix="katalyst-bench-")
    plane = RealControlPlane(os.path.abspath(state_dir), base_args)
    try:
        timed_step("real control plane (kube-apiserver %s + etcd) started" % kube_cluster.pinned_version(), plane.up, *up_args)
        yield plane
    finally:
        plane.close()
        plane.down()
        if owned:
            shutil.rmtree(state_dir, ignore_errors=True)


def create_crds(api_client, crds, timeout=120.0):
    """Create CRDs and wait until each is Established (the real apiserver serves a new CRD a moment later)."""
    extensions = client.ApiextensionsV1Api(api_client)
    for crd in crds:
        extensions.create_custom_resource_definition(crd)
    deadline = time.monotonic() + timeout
    for crd in crds:
        name = crd["metadata"]["name"]
        while True:
            conditions = extensions.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("CRD %s not Established after %.0fs" % (name, timeout))
            time.sleep(0.2)


def ensure_default_service_account(api_client, namespace="default"):
    """Pods need their namespace's `default` ServiceAccount (admission refuses them otherwise); the controller-manager
    makes it, and a control plane without one gets it here."""
    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except client.exceptions.ApiException as err:
            if err.status != 404:
                raise
        try:
            core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
            return
        except client.exceptions.ApiException as err:
            if err.status != 409 or time.monotonic() > deadline:
                raise


def request_kind(method, url):
    """A request as the API server's audit log names its verb: list, get, create, update, patch, delete, or discovery."""
    parts = url.split("?", 1)[0].split("://", 1)[-1].split("/")[1:]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if not rest:
        return "discovery"
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    method = method.upper()
    if method == "GET":
        return "list" if len(rest) == 1 else "get"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


class RequestCounter:
    """Counts the HTTP requests an ApiClient sends, by verb (``request_kind``): a figure that does not depend on the
    machine. ``reset()`` between passes; ``str()`` prints them as ``5000 patch, 2 get``."""

    def __init__(self, api_client):
        self.counts = collections.Counter()
        call_api = api_client.call_api

        def counted(method, url, *args, **kwargs):
            self.counts[request_kind(method, url)] += 1
            return call_api(method, url, *args, **kwargs)
        api_client.call_api = counted

    def reset(self):
        self.counts.clear()

    def get(self, kind):
        return self.counts.get(kind, 0)

    def __str__(self):
        return ", ".join("%d %s" % (count, kind) for kind, count in sorted(self.counts.items())) or "none"


def run_backends(backend, run_emulator, run_real, print_side_by_side):
    """Run the measurement on the chosen backend(s) (`emulator`, `real` or `both`); side by side when both ran."""
    rows = []
    if backend in ("emulator", "both"):
        rows += run_emulator()
    if backend in ("real", "both"):
        rows += run_real()
    if backend == "both":
        print_side_by_side(rows)
    return rows


class PassContext:
    """What the controller hands its reconcilers (controller.ControllerContext): caches filled by the controller's own
    Informers for ``informer_names`` (relisted on demand, standing in for the watch), the KubeClient, the options."""

    def __init__(self, api_client, informer_names, options=None):
        # imported here: this module is also used by benchmarks that never touch the controller
        from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import controller  # pylint: disable=import-outside-toplevel
        from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.informer import Informer  # pylint: disable=C0415
        from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient  # pylint: disable=import-outside-toplevel
        self.kube = KubeClient(api_client=api_client)
        self.informers = {name: Informer(controller.INFORMERS[name](api_client), name=name) for name in informer_names}
        self.options = dict(options or {})
        self.registry = None

    @staticmethod
    def now():
        return datetime.datetime.now(datetime.timezone.utc)

    def relist(self):
        for informer in self.informers.values():
            informer._list()  # pylint: disable=protected-access  # the informer's own LIST, without its watch thread
