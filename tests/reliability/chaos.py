"""Chaos for katalyst-controller: an emulator whose writes say who sent them, real controller processes, a scenario.

Each controller replica talks to its own front of one emulator (``Emulator.front(name)``: another HTTP server over the
same store), so every write is attributed to a replica without touching the daemon's User-Agent; each write is kept
with the Lease holder at the moment it arrived, to check "only the leader writes" against the Lease timeline.
"""

import signal
import time

from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit, tide
from sandbox.kubeapi.requestlog import request_info
from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig
from tests.integration import backends
from tests.integration.test_tide_controller import POOL, create_pool, start_controller, write_config
from tests.integration.waiting import wait_until

WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
CNR_KEY = "node.katalyst.kubewharf.io/customnoderesources"
LEASE_KEY = ("coordination.k8s.io/leases", "default", "katalyst-controller")
CONTROLLERS = ["tide", "cnr", "overcommit"]
NOC_GROUP, NOC_VERSION = overcommit.NOC_API_VERSION.split("/")
KUBELET_STATUS = {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"}, "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}
# values that differ between two runs of the same scenario (stamps, identities), dropped before comparing
VOLATILE = {"resourceVersion", "uid", "creationTimestamp", "managedFields", "lastTransitionTime", "lastUpdateTime", "lastHeartbeatTime"}


class WriteLog:
    """Stands in for a front's request log: keeps the controller's writes (Lease renewals aside) with the replica that sent
    them and the Lease holder when they arrived (read from the store before the request is served)."""

    def __init__(self, store, replica, writes):
        self.store, self.replica, self.writes = store, replica, writes

    def record(self, user_agent, method, raw_path):
        info = request_info(method, raw_path.split("?")[0], {})
        if not (user_agent or "").startswith("katalyst-controller") or info["verb"] not in WRITE_VERBS or info.get("resource") == "leases":
            return
        self.writes.append({"at": time.monotonic(), "replica": self.replica, "holder": lease_holder(self.store),
                            "what": "%s %s/%s" % (info["verb"], info.get("resource"), info.get("name"))})


def lease_holder(store):
    lease = store.get(*LEASE_KEY)
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or None


class Emulator:
    """One emulator with our CRDs; the test talks to ``.main``, each replica to its own ``front(name)``."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.main = KubeAPIServer().start()
        self.main.backend = "emulator"
        self.store = self.main.store
        self.writes = []
        self.fronts = []
        self.api_client = backends.api_client(self.main)
        backends.install_crds(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    def front(self, replica):
        """The kubeconfig of a new HTTP front over the same store, whose writes are attributed to ``replica``."""
        server = KubeAPIServer()
        server.httpd.api = self.main.api
        server.httpd.request_log = WriteLog(self.store, replica, self.writes)
        self.fronts.append(server.start())
        path = self.tmp_path / ("%s.kubeconfig" % replica)
        write_kubeconfig(str(path), server.url)
        return str(path)

    def close(self):
        self.api_client.close()
        for server in self.fronts + [self.main]:
            server.stop()


class Replica:
    """One katalyst-controller process (restartable) running the tide, cnr and overcommit reconcilers."""

    def __init__(self, emulator, name, **config):
        self.name = name
        self.config_path = emulator.tmp_path / ("%s.yaml" % name)
        self.log_path = emulator.tmp_path / ("%s.log" % name)
        write_config(self.config_path, emulator.front(name), controllers=CONTROLLERS, identity=name,
                     cnr={"period_seconds": 5}, overcommit={"period_seconds": 5}, **config)
        self.process = self.log = None

    def start(self):
        self.process, self.log = start_controller(self.config_path, self.log_path)
        return self

    def log_size(self):
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def logged_since(self, offset, text):
        with open(self.log_path) as handle:
            handle.seek(offset)
            return text in handle.read()

    def kill(self):
        """SIGKILL (also when stopped: a stopped process dies of SIGKILL too) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        if self.log is not None:
            self.log.close()
        self.process = self.log = None


# -- the scenario --------------------------------------------------------------------------------------------------------
def add_nodes(emulator, names):
    for name in names:
        emulator.core.create_node({"metadata": {"name": name, "labels": {"pool": POOL, overcommit.POOL_LABEL: "a"}}, "status": KUBELET_STATUS})


def set_reserve(emulator, online, offline):
    emulator.custom.patch_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, POOL,
                                                {"spec": {"nodeConfigs": {"reserve": {"online": online, "offline": offline}}}})


def create_noc(emulator, ratios):
    emulator.custom.create_cluster_custom_object(NOC_GROUP, NOC_VERSION, "nodeovercommitconfigs", {
        "apiVersion": overcommit.NOC_API_VERSION, "kind": overcommit.NOC_KIND, "metadata": {"name": "a"},
        "spec": {"nodeOvercommitSelectorVal": "a", "resourceOvercommitRatio": ratios}})


def set_ratios(emulator, ratios):
    emulator.custom.patch_cluster_custom_object(NOC_GROUP, NOC_VERSION, "nodeovercommitconfigs", "a", {"spec": {"resourceOvercommitRatio": ratios}})


def delete_node(emulator, name):
    emulator.core.delete_node(name)


RESERVES = [("40%", "0%"), ("10%", "30%"), ("20%", "20%")]
RATIOS = [{"cpu": "3", "memory": "1.5"}, {"cpu": "2.5"}, {"cpu": "2", "memory": "1.2"}, {"cpu": "1.5", "memory": "1.1"}]


def scenario(cycles):
    """The steps, each applied once the previous one has converged: nodes, a tide pool and an overcommit config, then
    ``cycles`` times a tide pool flip (its reserve changes), an overcommit ratio change and a node that appears (its CNR
    created by the cnr reconciler) or goes (its CNR deleted)."""
    steps = [lambda emulator: add_nodes(emulator, ["n%d" % index for index in range(5)]),
             lambda emulator: create_pool(emulator.custom, reserve={"online": "20%", "offline": "20%"}),
             lambda emulator: create_noc(emulator, dict(RATIOS[-1]))]
    for cycle in range(cycles):
        steps.append(lambda emulator, cycle=cycle: set_reserve(emulator, *RESERVES[cycle % len(RESERVES)]))
        steps.append(lambda emulator, cycle=cycle: set_ratios(emulator, RATIOS[cycle % len(RATIOS)]))
        if cycle % 2 == 0:
            steps.append(lambda emulator, cycle=cycle: add_nodes(emulator, ["m%d" % cycle]))
        else:
            steps.append(lambda emulator, cycle=cycle: delete_node(emulator, "m%d" % (cycle - 1)))
    return steps


def _stable(value):
    """``value`` without what differs between two runs of the same scenario."""
    if isinstance(value, dict):
        return {key: _stable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [_stable(item) for item in value]
    return value


def cluster_state(store):
    """What the controller manages, comparable across runs: node labels, taints, annotations (the flip stamp's value
    aside), the pools' and configs' finalizers and status, the CNRs' labels, owners and spec."""
    state = {}
    for node in store.list("/nodes")[0]:
        meta = node["metadata"]
        annotations = dict(meta.get("annotations") or {})
        if tide.ANNOTATION_LAST_FLIP in annotations:
            annotations[tide.ANNOTATION_LAST_FLIP] = "<stamp>"
        state["node/" + meta["name"]] = {"labels": meta.get("labels") or {}, "annotations": annotations, "taints": (node.get("spec") or {}).get("taints") or []}
    for key, kind in ((tide.GROUP + "/" + tide.PLURAL, "pool"), (NOC_GROUP + "/nodeovercommitconfigs", "noc")):
        for obj in store.list(key)[0]:
            state["%s/%s" % (kind, obj["metadata"]["name"])] = _stable({"finalizers": obj["metadata"].get("finalizers") or [],
                                                                        "status": obj.get("status") or {}})
    for obj in store.list(CNR_KEY)[0]:
        meta = obj["metadata"]
        state["cnr/" + meta["name"]] = _stable({"labels": meta.get("labels") or {}, "owners": meta.get("ownerReferences") or [], "spec": obj.get("spec") or {}})
    return state


def differences(state, expected):
    """The keys where two states differ (for failure messages)."""
    return {key: (state.get(key), expected.get(key)) for key in sorted(set(state) | set(expected)) if state.get(key) != expected.get(key)}


def observed(store):
    """The controller has seen the last change: every pool and config reports its generation, every node has a CNR."""
    for key in (tide.GROUP + "/" + tide.PLURAL, NOC_GROUP + "/nodeovercommitconfigs"):
        if any((obj.get("status") or {}).get("observedGeneration") != obj["metadata"].get("generation") for obj in store.list(key)[0]):
            return False
    cnrs = {obj["metadata"]["name"] for obj in store.list(CNR_KEY)[0]}
    return {node["metadata"]["name"] for node in store.list("/nodes")[0]} <= cnrs


def settled_state(store, timeout, quiet=0.75):
    """The state once the controller has observed the last change and nothing changed for ``quiet`` seconds more (the
    uninterrupted run's checkpoints: a pass writes the status first, the nodes after)."""
    seen = {"state": None, "since": 0.0}

    def quiet_for_a_while():
        state = cluster_state(store)
        if state != seen["state"] or not observed(store):
            seen.update(state=state, since=time.monotonic())
        return time.monotonic() - seen["since"] >= quiet
    wait_until(quiet_for_a_while, timeout=timeout, what="the cluster state to settle")
    return seen["state"]
