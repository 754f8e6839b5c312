"""Our CRDs, tide flips with real taint eviction, the controller's Lease election, kubernetes.core and kubectl: on the REAL
control plane of sandbox/kube/cluster.py (kube-apiserver + kube-controller-manager + kube-scheduler, pinned release).

One control plane and six kwok-style fake nodes (sandbox/kube/fakenodes.py: Lease renewals + status heartbeats, so the
node lifecycle controller keeps them Ready) are shared by the module; each test uses its own nodes, objects and names and
cleans up after itself, so the tests run alone or in any order. Skipped with the reason when the release is not built.

Nodes have no kubelet: pods bound with `spec.nodeName` stay Pending on them. The taint-eviction controller still evicts
such pods (it deletes every pod bound to the node that does not tolerate a NoExecute taint). What "evicted" then means:
- `terminationGracePeriodSeconds: 0` (or a pod already Succeeded/Failed): the apiserver deletes it at once, it is gone;
- a grace period > 0: the apiserver only sets `deletionTimestamp` (Terminating) and waits for the kubelet to confirm,
  which never comes here, so the pod stays Terminating past its deadline until someone force-deletes it (as on a real
  cluster whose kubelet is down). The test checks exactly that, and the DisruptionTarget condition the eviction writes.
"""

import datetime
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import yaml

from plugins.module_utils import crd_manifests, tide
from tests.integration.ansible_runner import REPO, run_playbook
from tests.integration.test_crds_module import PLAY as CRDS_PLAY  # the crds module, state from `st` (present)
from tests.integration.realcluster import KUBECTL, cluster_cli, cluster_down, kubectl, needs_build, wait_for

kubernetes = pytest.importorskip("kubernetes")

pytestmark = [pytest.mark.slow, needs_build]

NODE_COUNT = 6
NODE_PREFIX = "rt-"
POOL_LABEL = "katalyst-e2e/pool"
ONLINE_TOLERATION = {"key": tide.TAINT_EVICT_OFFLINE_POD, "operator": "Exists", "effect": "NoExecute"}
OFFLINE_TOLERATION = {"key": tide.TAINT_EVICT_ONLINE_POD, "operator": "Exists", "effect": "NoExecute"}
# client-go's defaults, which katalyst-controller uses unless configured (ARCHITECTURE.md, "Scale and high availability")
LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0
LOAD_SLACK = 8.0        # seconds a loaded 2-core machine may add to a protocol bound (process wake-up, API latency)
CONTROLLER_MODULE = "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.controller"


# -- the shared control plane --------------------------------------------------------------------------------------
class ControlPlane:
    """The started cluster: state dir, admin kubeconfig, API clients."""

    def __init__(self, state):
        self.state = state
        self.kubeconfig = str(state / "admin.kubeconfig")
        self.api_client = kubernetes.config.new_client_from_config(config_file=self.kubeconfig)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.coordination = kubernetes.client.CoordinationV1Api(self.api_client)
        self.extensions = kubernetes.client.ApiextensionsV1Api(self.api_client)

    def log(self, name):
        return self.state / "logs" / name


def node_ready(node):
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def fake_node_names():
    return ["%s%d" % (NODE_PREFIX, index) for index in range(NODE_COUNT)]


@pytest.fixture(name="plane", scope="module")
def fixture_plane(tmp_path_factory):
    """One control plane + fake nodes kept Ready for the whole module; always brought down."""
    state = tmp_path_factory.mktemp("real-tide") / "cluster"
    try:
        cluster_cli(state, "up")
        plane = ControlPlane(state)
        with open(plane.log("fakenodes.log"), "wb") as log, \
                subprocess.Popen([sys.executable, "-m", "sandbox.kube.fakenodes", "--kubeconfig", plane.kubeconfig, "--count",
                                  str(NODE_COUNT), "--prefix", NODE_PREFIX], stdout=log, stderr=subprocess.STDOUT, cwd=REPO) as fakenodes:
            try:
                wait_for("%d fake nodes Ready" % NODE_COUNT,
                         lambda: sum(node_ready(n) for n in plane.core.list_node().items) == NODE_COUNT)
                yield plane
            finally:
                fakenodes.terminate()
                fakenodes.wait(timeout=60)
                plane.api_client.close()
    finally:
        cluster_down(state)


def crd_established(plane, name):
    conditions = plane.extensions.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def ensure_crds(plane):
    """Our CRDs installed and Established (whichever test comes first installs them)."""
    for manifest in crd_manifests.crds():
        try:
            plane.extensions.create_custom_resource_definition(manifest)
        except kubernetes.client.exceptions.ApiException as err:
            if err.status != 409:
                raise
    for manifest in crd_manifests.crds():
        name = manifest["metadata"]["name"]
        wait_for("CRD %s Established" % name, lambda name=name: crd_established(plane, name))


# -- small helpers -------------------------------------------------------------------------------------------------
def pool_body(name, selector_value, reserve, **spec_extra):
    spec = {"nodeConfigs": {"nodeSelector": {POOL_LABEL: selector_value}, "reserve": reserve}}
    spec.update(spec_extra)
    return {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": name}, "spec": spec}


def read_pool(plane, name):
    return plane.custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, name)


def pool_gone(plane, name):
    try:
        read_pool(plane, name)
    except kubernetes.client.exceptions.ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


def drop_pool(plane, name):
    """For a finally: remove the finalizer (no controller may be left to do it) and delete the pool."""
    if pool_gone(plane, name):
        return
    plane.custom.patch_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, name, {"metadata": {"finalizers": None}})
    if not pool_gone(plane, name):
        plane.custom.delete_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, name)


def label_nodes(plane, names, value):
    """Put (value) or take off (None) the label our test pools select on."""
    for name in names:
        plane.core.patch_node(name, {"metadata": {"labels": {POOL_LABEL: value}}})


def tide_view(plane, pool, name):
    """A node's role in `pool` and its tide evict taints."""
    node = plane.api_client.sanitize_for_serialization(plane.core.read_node(name))
    role = tide.PoolConfig({"metadata": {"name": pool}, "spec": {}}).role(node["metadata"].get("labels") or {})
    taints = [(t["key"], t["effect"]) for t in node["spec"].get("taints") or [] if t["key"].startswith(tide.GROUP)]
    return role, taints


def has_no_tide_marks(plane, name):
    node = plane.core.read_node(name)
    labels = node.metadata.labels or {}
    return not [k for k in labels if k.startswith(tide.GROUP)] and not [t for t in node.spec.taints or [] if t.key.startswith(tide.GROUP)]


def ensure_namespace(plane, name):
    """A namespace whose default ServiceAccount exists (the ServiceAccount admission needs it before pods are admitted)."""
    try:
        plane.core.create_namespace({"metadata": {"name": name}})
    except kubernetes.client.exceptions.ApiException as err:
        if err.status != 409:
            raise
    wait_for("the default ServiceAccount of %s" % name, lambda: plane.core.read_namespaced_service_account("default", name))


def bound_pod(name, node, cpu="100m", grace=0, tolerations=(), pod_type="online"):
    """A pod bound to `node` by nodeName (no scheduler, no kubelet: it stays Pending there)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {tide.LABEL_POD_TYPE: pod_type}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": grace, "tolerations": list(tolerations),
                     "containers": [{"name": "c", "image": "registry.invalid/none", "resources": {"requests": {"cpu": cpu}}}]}}


def read_pod_or_none(plane, namespace, name):
    try:
        return plane.core.read_namespaced_pod(name, namespace)
    except kubernetes.client.exceptions.ApiException as err:
        if err.status == 404:
            return None
        raise


def force_delete_pods(plane, namespace):
    """What an operator does for pods whose kubelet is gone: grace period 0 (the apiserver removes them at once)."""
    for pod in plane.core.list_namespaced_pod(namespace).items:
        plane.core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    wait_for("the pods of %s gone" % namespace, lambda: not plane.core.list_namespaced_pod(namespace).items)


# -- katalyst-controller processes ---------------------------------------------------------------------------------
class Replica:
    """One katalyst-controller process (the real daemon, as systemd runs it) with its own config, log and metrics port."""

    def __init__(self, plane, identity, **settings):
        self.identity = identity
        config = {"kubeconfig": plane.kubeconfig, "controllers": ["tide"], "port": 0, "identity": identity,
                  "tide": {"period_seconds": 2}}
        config.update(settings)
        self.config_path = plane.state / ("controller-%s.yaml" % identity)
        self.config_path.write_text(json.dumps(config))
        self.log_path = plane.log("controller-%s.log" % identity)
        self.log = open(self.log_path, "ab")  # pylint: disable=consider-using-with
        env = dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO)
        self.process = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-m", CONTROLLER_MODULE, "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self._port = None

    def port(self):
        """The metrics port it chose (port 0), from its startup line."""
        if self._port is None:
            found = re.search(r"/metrics on 127\.0\.0\.1:(\d+)", self.log_path.read_text(errors="replace"))
            assert self.process.poll() is None, "%s exited (%s): %s" % (self.identity, self.process.returncode, self.log_path.read_text())
            self._port = int(found.group(1)) if found else None
        return self._port

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port(), timeout=10) as response:
            return response.read().decode()

    def sample(self, metric):
        """The sum of a metric's samples (0 when it has none yet)."""
        pattern = re.compile(r"^%s(\{[^}]*\})? ([0-9.e+-]+)$" % re.escape(metric), re.M)
        return sum(float(value) for _labels, value in pattern.findall(self.metrics()))

    def serving(self):
        return self.port() is not None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.log.close()

    def kill_if_running(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)
        self.log.close()


class Watch:
    """`kubectl get -w` in the background; its lines, read by a thread so a wait never blocks on the pipe."""

    def __init__(self, kubeconfig, *args):
        self.process = subprocess.Popen([KUBECTL, "--kubeconfig", kubeconfig, "get", "-w"] + list(args),  # pylint: disable=consider-using-with
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, what, predicate, timeout=240.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError("kubectl get -w never showed %s; it printed: %s" % (what, self.seen))

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


# -- 1. CRDs -------------------------------------------------------------------------------------------------------

# (what, plural, object, field path the apiserver must name): each refused by a constraint our schemas state.
SCHEMA_REFUSALS = [
    ("negative cooldown", tide.PLURAL, pool_body("bad-cooldown", "x", {"online": 1, "offline": 0}, cooldownSeconds=-5),
     "spec.cooldownSeconds"),
    ("reserve of a wrong type", tide.PLURAL, pool_body("bad-reserve", "x", {"online": True, "offline": 0}), "spec.nodeConfigs.reserve.online"),
    ("spec without nodeConfigs", tide.PLURAL, {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": "bad-spec"}, "spec": {}},
     "spec.nodeConfigs"),
    ("evictStrategy without type", tide.PLURAL, pool_body("bad-evict", "x", {"online": 1, "offline": 0}, evictStrategy={"watermark": {}}),
     "spec.evictStrategy.type"),
    ("taint option without value", tide.PLURAL,
     pool_body("bad-taint", "x", {"online": 1, "offline": 0},
               evictStrategy={"type": "watermark", "watermark": {"evictOnlinePodTaint": {"key": "k"}}}),
     "spec.evictStrategy.watermark.evictOnlinePodTaint.value"),
    ("ratio given as a number", "nodeovercommitconfigs",
     {"apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig", "metadata": {"name": "bad-ratio"},
      "spec": {"resourceOvercommitRatio": {"cpu": 1.5}}}, "spec.resourceOvercommitRatio.cpu"),
    ("force not a boolean", "nodeovercommitconfigs",
     {"apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig", "metadata": {"name": "bad-force"},
      "spec": {"force": "yes"}}, "spec.force"),
    ("unknown QoS level", "customnoderesources",
     {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource", "metadata": {"name": "bad-qos"},
      "spec": {"taints": [{"key": "k", "effect": "NoSchedule", "qosLevel": "bogus_cores"}]}}, "spec.taints[0].qosLevel"),
]


def group_of(plural):
    return next(c["spec"]["group"] for c in crd_manifests.crds() if c["spec"]["names"]["plural"] == plural)


def refusal(plane, plural, body):
    """The apiserver's Status for a create that must fail."""
    with pytest.raises(kubernetes.client.exceptions.ApiException) as caught:
        plane.custom.create_cluster_custom_object(group_of(plural), "v1alpha1", plural, body)
    return caught.value.status, json.loads(caught.value.body)


def served_crd(plane, name):
    return plane.api_client.sanitize_for_serialization(plane.extensions.read_custom_resource_definition(name))


def test_crds_module_installs_structural_crds_the_real_apiserver_serves(plane, tmp_path):
    rc, tasks, out = run_playbook(CRDS_PLAY, tmp_path, extra_vars={"kc": plane.kubeconfig})
    assert rc == 0, out
    rc, tasks, out = run_playbook(CRDS_PLAY, tmp_path, extra_vars={"kc": plane.kubeconfig})
    assert rc == 0 and tasks["crds"]["changed"] is False, out        # the server's defaults are not a difference
    for manifest in crd_manifests.crds():
        served = served_crd(plane, manifest["metadata"]["name"])
        conditions = {c["type"]: c["status"] for c in served["status"]["conditions"]}
        assert conditions["Established"] == conditions["NamesAccepted"] == "True", conditions
        assert "NonStructuralSchema" not in conditions, conditions   # structural: pruning and defaulting apply
        version = served["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert version.get("additionalPrinterColumns") == manifest["spec"]["versions"][0].get("additionalPrinterColumns")
        assert served["status"]["acceptedNames"]["shortNames"] == manifest["spec"]["names"]["shortNames"]


@pytest.mark.parametrize("what,plural,body,field", SCHEMA_REFUSALS, ids=[case[0] for case in SCHEMA_REFUSALS])
def test_bad_objects_are_refused_with_422_and_the_field_path(plane, what, plural, body, field):
    ensure_crds(plane)
    status, document = refusal(plane, plural, body)
    assert status == 422 and document["reason"] == "Invalid", (what, document)
    fields = [cause.get("field") for cause in document["details"]["causes"]]
    assert field in fields, (what, document["message"])


def test_what_the_schemas_leave_to_the_controllers_is_accepted(plane):
    """Katalyst's CRDs constrain neither the reserve's sign nor a ratio's text; neither do ours (objects move between the
    two unchanged). The controllers refuse them instead, with a condition (the tide test shows InvalidReserve)."""
    ensure_crds(plane)
    pool = pool_body("negative-reserve", "nothing", {"online": -1, "offline": 0})
    noc = {"apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig", "metadata": {"name": "text-ratio"},
           "spec": {"resourceOvercommitRatio": {"cpu": "abc"}}}
    try:
        assert plane.custom.create_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, pool)["spec"]["nodeConfigs"]["reserve"]["online"] == -1
        assert plane.custom.create_cluster_custom_object(group_of("nodeovercommitconfigs"), "v1alpha1", "nodeovercommitconfigs", noc)
    finally:
        drop_pool(plane, "negative-reserve")
        plane.custom.delete_cluster_custom_object(group_of("nodeovercommitconfigs"), "v1alpha1", "nodeovercommitconfigs", "text-ratio")


def test_status_is_a_subresource_and_its_schema_applies_there(plane):
    ensure_crds(plane)
    name = "status-split"
    body = dict(pool_body(name, "nothing", {"online": 1, "offline": 0}), status={"tideNodes": {"nodes": ["ignored"]}})
    try:
        created = plane.custom.create_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, body)
        assert "status" not in created                                           # the main resource ignores status
        after = plane.custom.patch_cluster_custom_object_status(tide.GROUP, "v1alpha1", tide.PLURAL, name,
                                                                {"spec": {"cooldownSeconds": 9}, "status": {"tideNodes": {"nodes": ["n1"]}}})
        assert after["status"] == {"tideNodes": {"nodes": ["n1"]}} and "cooldownSeconds" not in after["spec"]   # /status ignores spec
        assert after["metadata"]["generation"] == 1
        after = plane.custom.patch_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, name,
                                                         {"spec": {"cooldownSeconds": 7}, "status": {"tideNodes": {"nodes": []}}})
        assert after["metadata"]["generation"] == 2 and after["status"] == {"tideNodes": {"nodes": ["n1"]}}
        cnr = {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource", "metadata": {"name": name}}
        plane.custom.create_cluster_custom_object("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources", cnr)
        with pytest.raises(kubernetes.client.exceptions.ApiException) as caught:
            plane.custom.patch_cluster_custom_object_status("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources", name,
                                                            {"status": {"resources": {"allocatable": {"cpu": "2x"}}}})
        assert caught.value.status == 422 and "status.resources.allocatable.cpu" in caught.value.body
        written = plane.custom.patch_cluster_custom_object_status("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources", name,
                                                                  {"status": {"resources": {"allocatable": {"cpu": "2"}}}})
        assert written["status"] == {"resources": {"allocatable": {"cpu": "2"}}, "topologyPolicy": "none"}   # structural defaulting
    finally:
        drop_pool(plane, name)
        try:
            plane.custom.delete_cluster_custom_object("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources", name)
        except kubernetes.client.exceptions.ApiException as err:
            if err.status != 404:
                raise


# -- 2. tide flip + the real taint-eviction controller ------------------------------------------------------------
TIDE_POOL = "tide-e2e"
TIDE_NAMESPACE = "tide-e2e"
TIDE_NODES = ("rt-0", "rt-1")       # rt-0 carries the big online pod and stays online; rt-1 (least loaded) flips offline


def tide_pods():
    """rt-1's pods: which the offline flip's online-not-used:NoExecute taint evicts, and which stay."""
    return [
        bound_pod("big-online", "rt-0", cpu="16", tolerations=[ONLINE_TOLERATION]),                    # keeps rt-0 the loaded one
        bound_pod("online-now", "rt-1", tolerations=[ONLINE_TOLERATION]),                              # evicted, gone at once
        bound_pod("online-graceful", "rt-1", grace=3, tolerations=[ONLINE_TOLERATION]),                # evicted, stays Terminating
        bound_pod("online-for-a-while", "rt-1", tolerations=[ONLINE_TOLERATION, dict(OFFLINE_TOLERATION, tolerationSeconds=5)]),
        bound_pod("offline-batch", "rt-1", tolerations=[OFFLINE_TOLERATION], pod_type="offline"),       # tolerates: stays
    ]


def tainted_offline(plane, name):
    return tide_view(plane, TIDE_POOL, name) == (tide.ROLE_TIDE_OFFLINE, [(tide.TAINT_EVICT_ONLINE_POD, "NoExecute")])


def disruption(pod):
    return next(((c.status, c.reason, c.message) for c in pod.status.conditions or [] if c.type == "DisruptionTarget"), None)


def eviction_events(plane, name):
    events = plane.core.list_namespaced_event(TIDE_NAMESPACE, field_selector="involvedObject.name=%s" % name).items
    return [e for e in events if e.reason == "TaintManagerEviction"]


def terminating(plane, name):
    """The pod when it has a deletionTimestamp (Terminating), else None."""
    pod = read_pod_or_none(plane, TIDE_NAMESPACE, name)
    return pod if pod is not None and pod.metadata.deletion_timestamp else None


def server_time_past(stamp, seconds):
    return datetime.datetime.now(datetime.timezone.utc) > stamp + datetime.timedelta(seconds=seconds)


def check_evictions(plane, tainted_at):
    """The taint manager's work after the flip; the seconds from the taint to each pod's eviction."""
    timings = {}
    wait_for("online-now deleted", lambda: read_pod_or_none(plane, TIDE_NAMESPACE, "online-now") is None, interval=0.2)
    timings["online-now gone"] = time.monotonic() - tainted_at
    assert wait_for("its TaintManagerEviction event", lambda: eviction_events(plane, "online-now"))
    graceful = wait_for("online-graceful marked for deletion", lambda: terminating(plane, "online-graceful"), interval=0.2)
    timings["online-graceful Terminating"] = time.monotonic() - tainted_at
    assert disruption(graceful)[:2] == ("True", "DeletionByTaintManager"), graceful.status.conditions
    assert graceful.metadata.deletion_grace_period_seconds == 3
    wait_for("online-for-a-while deleted after its tolerationSeconds",
             lambda: read_pod_or_none(plane, TIDE_NAMESPACE, "online-for-a-while") is None, interval=0.2)
    timings["online-for-a-while gone"] = time.monotonic() - tainted_at
    assert timings["online-for-a-while gone"] >= 5 - 1.5, timings       # tolerated for 5 s (less our poll's lag)
    # No kubelet confirms the graceful one's termination: it is still there past its deadline.
    wait_for("online-graceful's deletion deadline + 5 s", lambda: server_time_past(graceful.metadata.deletion_timestamp, 5))
    still = read_pod_or_none(plane, TIDE_NAMESPACE, "online-graceful")
    assert still is not None and still.metadata.deletion_timestamp, "a Terminating pod without a kubelet went away by itself"
    for name in ("big-online", "offline-batch"):
        pod = read_pod_or_none(plane, TIDE_NAMESPACE, name)
        assert pod is not None and pod.metadata.deletion_timestamp is None and disruption(pod) is None, name
    return timings


def apply_pool_with_kubectl(plane, tmp_path, body):
    path = tmp_path / ("%s.yaml" % body["metadata"]["name"])
    path.write_text(yaml.safe_dump(body))
    return kubectl(plane.kubeconfig, "apply", "-f", str(path)).stdout


def wait_pool_ready_with_kubectl(plane, name, reason="Reconciled"):
    kubectl(plane.kubeconfig, "wait", "tidenodepool/%s" % name, "--for=jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}=%s" % reason,
            "--timeout=240s", timeout=300)


def test_tide_flip_taint_is_enforced_by_the_real_taint_eviction_controller(plane, tmp_path, capsys):  # pylint: disable=too-many-locals
    ensure_crds(plane)
    ensure_namespace(plane, TIDE_NAMESPACE)
    for pod in tide_pods():
        plane.core.create_namespaced_pod(TIDE_NAMESPACE, pod)
    label_nodes(plane, TIDE_NODES, "tide")
    watch = Watch(plane.kubeconfig, "node", "rt-1", "-o", "custom-columns=NAME:.metadata.name,TAINTS:.spec.taints[*].key")
    controller = Replica(plane, "tide-solo", leader_election=False)
    try:
        started = time.monotonic()
        assert "created" in apply_pool_with_kubectl(plane, tmp_path, pool_body(TIDE_POOL, "tide", {"online": 0, "offline": 0}))
        wait_for("rt-1 flipped offline with the NoExecute taint", lambda: tainted_offline(plane, "rt-1"), interval=0.2)
        tainted_at = time.monotonic()
        assert tide_view(plane, TIDE_POOL, "rt-0") == (tide.ROLE_TIDE_ONLINE, [])                       # one online tide node is kept
        wait_pool_ready_with_kubectl(plane, TIDE_POOL)
        kubectl(plane.kubeconfig, "wait", "tnp/%s" % TIDE_POOL, "--for=condition=Ready", "--timeout=120s", timeout=180)
        watch.wait_line("rt-1 with the online-not-used taint", lambda line: line.startswith("rt-1") and tide.TAINT_EVICT_ONLINE_POD in line)
        timings = check_evictions(plane, tainted_at)
        timings["pool created -> taint"] = tainted_at - started
        kubectl(plane.kubeconfig, "delete", "pod", "online-graceful", "-n", TIDE_NAMESPACE, "--grace-period=0", "--force")
        assert read_pod_or_none(plane, TIDE_NAMESPACE, "online-graceful") is None                # force delete: gone at once
        flipped = [e for e in plane.core.list_namespaced_event("default").items if e.reason == "TideNodeOffline"
                   and e.involved_object.name == TIDE_POOL]
        assert flipped and "node rt-1 flipped offline" in flipped[0].message

        # A reserve the schema accepts but the controller refuses: a condition, nothing written.
        apply_pool_with_kubectl(plane, tmp_path, pool_body("tide-e2e-negative", "nothing", {"online": -1, "offline": 0}))
        wait_pool_ready_with_kubectl(plane, "tide-e2e-negative", reason="InvalidReserve")
        kubectl(plane.kubeconfig, "delete", "tnp", "tide-e2e-negative", "--timeout=120s", timeout=180)

        # Deleting the pool while the controller runs: every tide label and taint goes, then the finalizer.
        kubectl(plane.kubeconfig, "delete", "tnp", TIDE_POOL, "--timeout=120s", timeout=180)
        assert all(has_no_tide_marks(plane, name) for name in TIDE_NODES)
        with capsys.disabled():
            print("\n[real tide] %s" % ", ".join("%s %.1fs" % item for item in timings.items()))
    finally:
        watch.stop()
        controller.kill_if_running()
        for name in (TIDE_POOL, "tide-e2e-negative"):
            drop_pool(plane, name)
        force_delete_pods(plane, TIDE_NAMESPACE)
        label_nodes(plane, TIDE_NODES, None)
        for name in TIDE_NODES:       # a failed run may leave the flip's taint: no later test may inherit it
            plane.core.patch_node(name, {"spec": {"taints": None}})


# -- 3. leader election on a coordination.k8s.io/v1 Lease ----------------------------------------------------------
LEASE_POOL = "lease-e2e"
LEASE_NODES = ("rt-2", "rt-3")


def lease_spec(plane):
    return plane.coordination.read_namespaced_lease("katalyst-controller", "kube-system").spec


def holder(plane):
    try:
        return lease_spec(plane).holder_identity
    except kubernetes.client.exceptions.ApiException as err:
        if err.status == 404:
            return None
        raise


def standby(replica):
    """Up, serving metrics, and not leading."""
    return replica.serving() and replica.sample("katalyst_controller_leader") == 0


def roles(plane):
    return {name: tide_view(plane, LEASE_POOL, name)[0] for name in LEASE_NODES}


def delete_lease(plane):
    try:
        plane.coordination.delete_namespaced_lease("katalyst-controller", "kube-system")
    except kubernetes.client.exceptions.ApiException as err:
        if err.status != 404:
            raise


def start_leader_and_standby(plane):
    first = Replica(plane, "replica-a")
    wait_for("replica-a to hold the Lease", lambda: holder(plane) == "replica-a", interval=0.2)
    second = Replica(plane, "replica-b")
    wait_for("replica-b up as a standby", lambda: standby(second))
    return first, second


def sigkill_takeover(plane, leader, candidate):
    """SIGKILL the leader (no release): the seconds until the candidate holds the Lease, from the kill and from the killed
    leader's last renewal (the protocol's bound: not before lease duration, within lease duration + retry period)."""
    leader.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    last = lease_spec(plane)
    assert last.holder_identity == leader.identity
    wait_for("%s to take over" % candidate.identity, lambda: holder(plane) == candidate.identity, timeout=LEASE_DURATION + 240, interval=0.2)
    from_kill = time.monotonic() - killed_at
    taken = lease_spec(plane)
    gap = (taken.acquire_time - last.renew_time).total_seconds()
    assert taken.lease_transitions == last.lease_transitions + 1
    return from_kill, gap


def test_two_replicas_one_leads_sigkill_takeover_and_sigterm_release(plane, capsys):  # pylint: disable=too-many-locals
    ensure_crds(plane)
    delete_lease(plane)
    label_nodes(plane, LEASE_NODES, "lease")
    replicas = []
    try:
        first, second = start_leader_and_standby(plane)
        replicas += [first, second]
        plane.custom.create_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL,
                                                  pool_body(LEASE_POOL, "lease", {"online": 1, "offline": 1}))
        wait_for("the leader to label the pool's nodes",
                 lambda: sorted(roles(plane).values()) == [tide.ROLE_OFFLINE_RESERVE, tide.ROLE_ONLINE_RESERVE])
        wait_for("replica-a's write counter", lambda: first.sample("katalyst_tide_api_writes_total") > 0)    # counted right after the write
        assert first.sample("katalyst_controller_leader") == 1
        assert second.sample("katalyst_tide_api_writes_total") == 0, second.metrics()        # the standby wrote nothing

        from_kill, gap = sigkill_takeover(plane, first, second)
        assert LEASE_DURATION <= gap <= LEASE_DURATION + RETRY_PERIOD + LOAD_SLACK, gap
        assert from_kill <= LEASE_DURATION + RETRY_PERIOD + LOAD_SLACK, from_kill
        # The new leader acts: a spec change is reconciled by it.
        plane.custom.patch_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, LEASE_POOL,
                                                 {"spec": {"nodeConfigs": {"reserve": {"online": 0, "offline": 0}}}})
        wait_for("replica-b to turn the reserve nodes into tide nodes",
                 lambda: set(roles(plane).values()) <= {tide.ROLE_TIDE_ONLINE, tide.ROLE_TIDE_OFFLINE})
        wait_for("replica-b's write counter", lambda: second.sample("katalyst_tide_api_writes_total") > 0)
        assert second.sample("katalyst_controller_leader") == 1

        third = Replica(plane, "replica-c")
        replicas.append(third)
        wait_for("replica-c up as a standby", lambda: standby(third))
        assert holder(plane) == "replica-b"
        terminated_at = time.monotonic()
        assert second.stop(signal.SIGTERM) == 0
        wait_for("replica-c to take over the released Lease", lambda: holder(plane) == "replica-c", interval=0.2)
        after_release = time.monotonic() - terminated_at
        assert after_release < LEASE_DURATION, after_release          # it did not wait out the lease: it was released
        plane.custom.delete_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, LEASE_POOL)
        wait_for("replica-c to clean the pool and drop its finalizer", lambda: pool_gone(plane, LEASE_POOL))
        assert all(has_no_tide_marks(plane, name) for name in LEASE_NODES)
        with capsys.disabled():
            print("\n[real lease] SIGKILL takeover %.1fs after the kill, %.1fs after the last renewal; SIGTERM hand-over %.1fs"
                  % (from_kill, gap, after_release))
    finally:
        for replica in replicas:
            replica.kill_if_running()
        drop_pool(plane, LEASE_POOL)
        delete_lease(plane)
        label_nodes(plane, LEASE_NODES, None)
        for name in LEASE_NODES:
            plane.core.patch_node(name, {"spec": {"taints": None}})


# -- 4. kubernetes.core modules and kubectl ------------------------------------------------------------------------
CORE_PLAY = """
- hosts: localhost
  gather_facts: false
  vars:
    pool:
      apiVersion: tide.katalyst.kubewharf.io/v1alpha1
      kind: TideNodePool
      metadata: {name: core-pool}
      spec:
        nodeConfigs:
          nodeSelector: {katalyst-e2e/pool: core}
          reserve: {online: 1, offline: 0}
    taint: [{key: katalyst.colocation/e2e, value: "yes", effect: NoSchedule}]
  tasks:
    - name: create pool
      kubernetes.core.k8s: {kubeconfig: "{{ kc }}", state: present, definition: "{{ pool }}"}
    - name: create pool again
      kubernetes.core.k8s: {kubeconfig: "{{ kc }}", state: present, definition: "{{ pool }}"}
    - name: read pool
      kubernetes.core.k8s_info: {kubeconfig: "{{ kc }}", api_version: tide.katalyst.kubewharf.io/v1alpha1, kind: TideNodePool, name: core-pool}
    - name: patch reserve
      kubernetes.core.k8s_json_patch:
        kubeconfig: "{{ kc }}"
        api_version: tide.katalyst.kubewharf.io/v1alpha1
        kind: TideNodePool
        name: core-pool
        patch:
          - {op: replace, path: /spec/nodeConfigs/reserve/online, value: 2}
          - {op: add, path: /spec/cooldownSeconds, value: 60}
    - name: refused patch
      kubernetes.core.k8s_json_patch:
        kubeconfig: "{{ kc }}"
        api_version: tide.katalyst.kubewharf.io/v1alpha1
        kind: TideNodePool
        name: core-pool
        patch: [{op: replace, path: /spec/cooldownSeconds, value: -1}]
      ignore_errors: true
    - name: taint node
      kubernetes.core.k8s_taint: {kubeconfig: "{{ kc }}", name: rt-4, taints: "{{ taint }}"}
    - name: taint node again
      kubernetes.core.k8s_taint: {kubeconfig: "{{ kc }}", name: rt-4, taints: "{{ taint }}"}
    - name: drain node
      kubernetes.core.k8s_drain:
        kubeconfig: "{{ kc }}"
        name: rt-4
        delete_options: {force: true, wait_timeout: 180, wait_sleep: 1}
    - name: node after drain
      kubernetes.core.k8s_info: {kubeconfig: "{{ kc }}", kind: Node, name: rt-4}
    - name: untaint node
      kubernetes.core.k8s_taint: {kubeconfig: "{{ kc }}", name: rt-4, taints: "{{ taint }}", state: absent}
    - name: uncordon node
      kubernetes.core.k8s_drain: {kubeconfig: "{{ kc }}", name: rt-4, state: uncordon}
    - name: delete pool
      kubernetes.core.k8s: {kubeconfig: "{{ kc }}", state: absent, definition: "{{ pool }}", wait: true}
"""


def check_core_pool_tasks(tasks):
    assert tasks["create pool"]["changed"] is True
    assert tasks["create pool again"]["changed"] is False                       # idempotent against the real apiserver
    assert tasks["read pool"]["resources"][0]["spec"]["nodeConfigs"]["reserve"] == {"online": 1, "offline": 0}
    patched = tasks["patch reserve"]
    assert patched["changed"] is True and patched["result"]["spec"]["nodeConfigs"]["reserve"]["online"] == 2
    assert patched["result"]["spec"]["cooldownSeconds"] == 60
    refused = tasks["refused patch"]
    assert refused.get("failed") and "spec.cooldownSeconds" in json.dumps(refused), refused


def check_core_node_tasks(tasks):
    assert tasks["taint node"]["changed"] is True and tasks["taint node again"]["changed"] is False
    drained = tasks["drain node"]
    assert drained["changed"] is True and "1 Pod(s) deleted" in drained["result"], drained
    assert not [w for w in drained.get("warnings") or [] if "timeout reached" in w], drained     # no pod outlived wait_timeout
    node = tasks["node after drain"]["resources"][0]
    assert node["spec"]["unschedulable"] is True
    taints = [(t["key"], t.get("value"), t["effect"]) for t in node["spec"]["taints"]]
    assert ("katalyst.colocation/e2e", "yes", "NoSchedule") in taints, taints
    assert ("node.kubernetes.io/unschedulable", None, "NoSchedule") in taints, taints     # the real node lifecycle controller's
    assert tasks["untaint node"]["changed"] is True and tasks["uncordon node"]["changed"] is True
    assert tasks["delete pool"]["changed"] is True


def test_kubernetes_core_modules_against_the_real_apiserver(plane, tmp_path):
    ensure_crds(plane)
    ensure_namespace(plane, "core-e2e")
    # No kubelet confirms a graceful termination, so the pod's own grace period is 0; k8s_drain's
    # delete_options.terminate_grace_period cannot stand in for it: kubernetes.core 6.2.0 drops a 0 (`if value:`).
    plane.core.create_namespaced_pod("core-e2e", bound_pod("drained", "rt-4", grace=0))
    try:
        rc, tasks, out = run_playbook(CORE_PLAY, tmp_path, extra_vars={"kc": plane.kubeconfig})
        assert rc == 0, out
        check_core_pool_tasks(tasks)
        check_core_node_tasks(tasks)
        assert read_pod_or_none(plane, "core-e2e", "drained") is None             # evicted through the Eviction API: gone
        node = plane.core.read_node("rt-4")
        assert not node.spec.unschedulable and not node.spec.taints
        assert pool_gone(plane, "core-pool")
    finally:
        force_delete_pods(plane, "core-e2e")
        drop_pool(plane, "core-pool")
        plane.core.patch_node("rt-4", {"spec": {"taints": None, "unschedulable": None}})


KUBECTL_POOL = "kubectl-pool"
KUBECTL_NOC = "kubectl-noc"


def kubectl_get_table(plane, *args):
    """`kubectl get` output as rows of columns."""
    return [line.split() for line in kubectl(plane.kubeconfig, "get", *args).stdout.splitlines()]


def check_apply_and_validation(plane, tmp_path):
    body = pool_body(KUBECTL_POOL, "kubectl", {"online": 1, "offline": 0})
    assert "created" in apply_pool_with_kubectl(plane, tmp_path, body)
    assert "unchanged" in apply_pool_with_kubectl(plane, tmp_path, body)
    server_side = tmp_path / "server-side.yaml"
    server_side.write_text(yaml.safe_dump(pool_body(KUBECTL_POOL, "kubectl", {"online": 1, "offline": 1})))
    out = kubectl(plane.kubeconfig, "apply", "--server-side", "--force-conflicts", "--field-manager=e2e", "-f", str(server_side)).stdout
    assert "serverside-applied" in out
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump(dict(body, spec=dict(body["spec"], bogus=1))))
    refused = kubectl(plane.kubeconfig, "apply", "-f", str(unknown), check=False)
    assert refused.returncode != 0 and 'unknown field "spec.bogus"' in refused.stderr, refused.stderr
    explained = kubectl(plane.kubeconfig, "explain", "tidenodepool.spec.nodeConfigs.reserve").stdout      # OpenAPI from our schema
    assert "Nodes kept online" in explained, explained


def check_patch_label_and_printer_columns(plane):
    kubectl(plane.kubeconfig, "patch", "tnp", KUBECTL_POOL, "--type=merge", "-p", '{"spec":{"cooldownSeconds":30}}')
    kubectl(plane.kubeconfig, "patch", "tnp", KUBECTL_POOL, "--type=json", "-p",
            '[{"op":"replace","path":"/spec/nodeConfigs/reserve/offline","value":"25%"}]')
    bad = kubectl(plane.kubeconfig, "patch", "tnp", KUBECTL_POOL, "--type=merge", "-p", '{"spec":{"cooldownSeconds":-1}}', check=False)
    assert bad.returncode != 0 and "spec.cooldownSeconds" in bad.stderr and "greater than or equal to 0" in bad.stderr, bad.stderr
    kubectl(plane.kubeconfig, "label", "tnp", KUBECTL_POOL, "team=web")
    spec = json.loads(kubectl(plane.kubeconfig, "get", "tnp", "-l", "team=web", "-o", "json").stdout)["items"][0]["spec"]
    assert spec["cooldownSeconds"] == 30 and spec["nodeConfigs"]["reserve"] == {"online": 1, "offline": "25%"}
    noc = {"apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig", "metadata": {"name": KUBECTL_NOC},
           "spec": {"nodeOvercommitSelectorVal": "pool-a", "resourceOvercommitRatio": {"cpu": "1.5"}}}
    kubectl(plane.kubeconfig, "apply", "-f", "-", input_text=json.dumps(noc))
    header, row = kubectl_get_table(plane, "noc", KUBECTL_NOC)
    assert header == ["NAME", "OVERCOMMITRATIO", "SELECTOR"] and row == [KUBECTL_NOC, '{"cpu":"1.5"}', "pool-a"], (header, row)
    header, row = kubectl_get_table(plane, "tnp", KUBECTL_POOL)
    assert header == ["NAME", "AGE"] and row[0] == KUBECTL_POOL


def check_node_label_and_taint(plane):
    kubectl(plane.kubeconfig, "label", "node", "rt-5", "%s=kubectl" % POOL_LABEL)
    kubectl(plane.kubeconfig, "taint", "node", "rt-5", "%s=true:NoSchedule" % tide.TAINT_EVICT_ONLINE_POD)
    node = plane.core.read_node("rt-5")
    assert node.metadata.labels[POOL_LABEL] == "kubectl"
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [(tide.TAINT_EVICT_ONLINE_POD, "true", "NoSchedule")]
    kubectl(plane.kubeconfig, "taint", "node", "rt-5", "%s:NoSchedule-" % tide.TAINT_EVICT_ONLINE_POD)
    kubectl(plane.kubeconfig, "label", "node", "rt-5", "%s-" % POOL_LABEL)
    node = plane.core.read_node("rt-5")
    assert POOL_LABEL not in node.metadata.labels and not node.spec.taints


def test_kubectl_apply_patch_label_taint_and_printer_columns(plane, tmp_path):
    ensure_crds(plane)
    try:
        check_apply_and_validation(plane, tmp_path)
        check_patch_label_and_printer_columns(plane)
        check_node_label_and_taint(plane)
        kubectl(plane.kubeconfig, "patch", "tnp", KUBECTL_POOL, "--subresource=status", "--type=merge", "-p",
                '{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Manual","message":"set by kubectl",'
                '"lastTransitionTime":"2025-01-01T00:00:00Z"}]}}')
        kubectl(plane.kubeconfig, "wait", "tnp/%s" % KUBECTL_POOL, "--for=condition=Ready", "--timeout=60s", timeout=120)
    finally:
        kubectl(plane.kubeconfig, "delete", "tnp", KUBECTL_POOL, "--ignore-not-found", check=False)
        kubectl(plane.kubeconfig, "delete", "noc", KUBECTL_NOC, "--ignore-not-found", check=False)
        plane.core.patch_node("rt-5", {"metadata": {"labels": {POOL_LABEL: None}}, "spec": {"taints": None}})
