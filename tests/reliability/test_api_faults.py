"""API faults (issue 15): the three daemons that call the API, the controller (tide + overcommit + cnr), the agent and the
scheduler extender, run as real processes against the API emulator through a seeded fault-injecting proxy
(tests/reliability/faultproxy.py): 10% of calls get a 500, 503 or 429 (with Retry-After), a connection reset, a slow
answer, a watch cut mid-stream or a 410 Gone on a re-watch. The webhook makes no API calls (the API server calls it): its
chaos is in test_webhook_chaos.py.

The same scenario runs once without faults (the proxy passes everything) and once with them. Survived: the same final
state (tide's arrival-order-bound choice of reserve and tide nodes as role counts: ``controller_state``; the extender's
filter and prioritize answers for fixed probe pods over every node: ``extender_state``), every round converged, the daemon
process never exited, and the retries show in its ``katalyst_api_retries_total`` (sources: ``client`` KubeClient,
``informer`` list/watch restarts, ``urllib3`` the HTTP layer's own retries of idempotent calls). Scenario time is
``sized(600, 6)`` seconds of the faulted run (rounds of changes, each waited for); the fault-free run replays the same
rounds alongside it. Each run is one ``record()`` of "api faults: <daemon>".
"""

import collections
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig
from tests.integration.ansible_runner import REPO
from tests.integration.waiting import wait_until
from .conftest import record, sized
from .faultproxy import FAULTS, FaultProxy

kubernetes = pytest.importorskip("kubernetes")
client = kubernetes.client

SCENARIO_SECONDS = sized(600, 6)
FAULT_RATE = 0.1
SEED = 15
ROUND_TIMEOUT = 120.0          # one round's effect, faults and a loaded machine included
PREFIX = "katalyst.kubewharf.io/"
NOC = ("overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs")
CNR = ("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources")
TIDE = ("tide.katalyst.kubewharf.io", "v1alpha1", "tidenodepools")
CAPACITY = {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"}, "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}
AGENT_NODE = "agent-node"
TIDE_PREFIX = "tide.katalyst.kubewharf.io/"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class Daemon:
    """A daemon process (python -m <module> --config <file>) with its log, port and metrics."""

    def __init__(self, module, config, log_path):
        env = dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO)
        self.log = open(log_path, "w+")
        self.process = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons." + module,
                                         "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.port = None

        def started():
            self.log.seek(0)
            match = re.search(r"on 127\.0\.0\.1:(\d+)", self.log.read())
            if match:
                self.port = int(match.group(1))
            assert self.process.poll() is None, "%s exited at start" % module
            return bool(match)
        wait_until(started, timeout=180, what="%s to start" % module)

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=10) as response:
            return response.read().decode()

    def loop_runs(self, loops):
        """Iterations so far of each of ``loops`` (katalyst_loop_runs_total, all outcomes)."""
        text = self.metrics()
        return [sum(float(value) for value in re.findall(r'^katalyst_loop_runs_total\{[^}]*loop="%s"[^}]*\} ([0-9.e+]+)$' % loop, text, re.M))
                for loop in loops]

    def retries(self):
        """katalyst_api_retries_total summed by source and reason, from /metrics."""
        text = self.metrics()
        counts = {}
        for match in re.finditer(r'^katalyst_api_retries_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            key = "%s:%s" % (labels["source"], labels["reason"])
            counts[key] = counts.get(key, 0) + int(float(match.group(2)))
        return counts

    def stop(self):
        alive = self.process.poll() is None
        if alive:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        return alive


class Cluster:
    """An emulator, the proxy in front of it (faults on or off) and a kubeconfig naming the proxy for the daemon; the
    test's own client talks to the emulator directly (the scenario's changes are not the ones under test)."""

    def __init__(self, tmp_path, faults):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.server = KubeAPIServer(bookmark_interval=0.5).start()
        self.proxy = FaultProxy(self.server.url, seed=SEED, rate=FAULT_RATE if faults else 0.0).start()
        self.kubeconfig = str(tmp_path / "kubeconfig")
        write_kubeconfig(self.kubeconfig, self.proxy.url)
        configuration = client.Configuration()
        configuration.host = self.server.url
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def close(self):
        self.api.close()
        self.proxy.stop()
        self.server.stop()


def strip(obj):
    """What a daemon decided about an object, without what differs between two clusters (uids, versions, times)."""
    meta = obj.get("metadata") or {}
    kept = {"name": meta.get("name"), "labels": meta.get("labels") or {}, "finalizers": meta.get("finalizers") or [],
            "annotations": {k: ("<time>" if TIMESTAMP.match(v) else v) for k, v in (meta.get("annotations") or {}).items() if "katalyst" in k},
            "owners": [(o.get("kind"), o.get("name")) for o in meta.get("ownerReferences") or []]}
    spec = obj.get("spec") or {}
    kept["taints"] = sorted(json.dumps({k: v for k, v in t.items() if k != "timeAdded"}, sort_keys=True) for t in spec.get("taints") or [])
    return kept


def _list(call):
    return json.loads(call(_preload_content=False).data)["items"]


# -- the controller ------------------------------------------------------------------------------------------------
def tide_role(view):
    """Takes the tide labels, taints and annotation out of a stripped object; returns its tide role."""
    labels = view["labels"]
    role = tuple("%s=%s" % (key[len(TIDE_PREFIX):], labels.pop(key)) for key in sorted(labels) if key.startswith(TIDE_PREFIX))
    view["taints"] = [taint for taint in view["taints"] if TIDE_PREFIX not in taint]
    view["annotations"].pop("katalyst.colocation/tide-last-flip", None)
    return ",".join(role)


def controller_state(cluster):
    """Nodes, CNRs, pools and NOC status. Which pool nodes are reserve or tide nodes depends on which nodes a pass saw
    arrive together (§1.4: new nodes fill the reserves in arrival order), so that timing-bound choice is compared as
    the count of nodes in each tide role; the rest exactly, and every CNR's labels against its node's."""
    nodes = {n["metadata"]["name"]: strip(n) for n in _list(cluster.core.list_node)}
    cnrs = {c["metadata"]["name"]: strip(c) for c in _list(lambda **kw: cluster.custom.list_cluster_custom_object(*CNR, **kw))}
    mirrors = {name: cnr["labels"] == nodes[name]["labels"] if name in nodes else None for name, cnr in cnrs.items()}
    roles = collections.Counter(tide_role(view) for view in nodes.values())
    for view in cnrs.values():
        tide_role(view)
    state = {"nodes": nodes, "cnrs": cnrs, "cnr_labels_are_the_nodes": mirrors, "tide_roles": dict(roles)}
    pools = _list(lambda **kw: cluster.custom.list_cluster_custom_object(*TIDE, **kw))
    state["pools"] = {p["metadata"]["name"]: dict(strip(p), conditions=sorted((c.get("type"), c.get("status"))
                                                                              for c in (p.get("status") or {}).get("conditions") or []))
                      for p in pools}
    nocs = _list(lambda **kw: cluster.custom.list_cluster_custom_object(*NOC, **kw))
    state["nocs"] = {n["metadata"]["name"]: sorted((n.get("status") or {}).get("matchedNodeList") or []) for n in nocs}
    return state


def controller_round(cluster, index):
    """Round ``index``: a node joins (in the tide pool on even rounds, in overcommit pool "a" every third round); every
    fifth round the node of round index-3 (when outside the tide pool) leaves. Returns the wait condition."""
    name = "r%04d" % index
    labels = {"round": str(index)}
    if index % 2 == 0:
        labels["pool"] = "demo"
    if index % 3 == 0:
        labels[PREFIX + "overcommit_node_pool"] = "a"
    cluster.core.create_node({"metadata": {"name": name, "labels": labels}, "status": CAPACITY})
    gone = "r%04d" % (index - 3) if index >= 3 and index % 5 == 0 and (index - 3) % 2 == 1 else None
    if gone:
        cluster.core.delete_node(gone)

    def done():
        cnrs = {c["metadata"]["name"] for c in _list(lambda **kw: cluster.custom.list_cluster_custom_object(*CNR, **kw))}
        node = json.loads(cluster.core.read_node(name, _preload_content=False).data)
        ratio = (node["metadata"].get("annotations") or {}).get(PREFIX + "cpu_overcommit_ratio")
        return name in cnrs and (gone is None or gone not in cnrs) and ratio == ("2" if index % 3 == 0 else "1")
    return done


def controller_setup(cluster, tmp_path):
    from tests.integration.backends import install_crds  # pylint: disable=import-outside-toplevel
    install_crds(cluster.api)
    cluster.custom.create_cluster_custom_object(*TIDE, {"apiVersion": "tide.katalyst.kubewharf.io/v1alpha1", "kind": "TideNodePool",
                                                        "metadata": {"name": "demo"},
                                                        "spec": {"nodeConfigs": {"nodeSelector": {"pool": "demo"},
                                                                                 "reserve": {"online": "10%", "offline": "25%"}}}})
    cluster.custom.create_cluster_custom_object(*NOC, {"apiVersion": "/".join(NOC[:2]), "kind": "NodeOvercommitConfig",
                                                       "metadata": {"name": "pool-a"},
                                                       "spec": {"nodeOvercommitSelectorVal": "a", "resourceOvercommitRatio": {"cpu": "2"}}})
    config = tmp_path / "controller.yaml"
    config.write_text(json.dumps({"kubeconfig": cluster.kubeconfig, "controllers": ["tide", "overcommit", "cnr"], "port": 0,
                                  "leader_election": True, "lease_namespace": "default", "identity": "faulted", "resync_seconds": 5,
                                  "tide": {"period_seconds": 0.5}, "overcommit": {"period_seconds": 0.5}, "cnr": {"period_seconds": 0.5}}))
    return Daemon("controller", config, tmp_path / "controller.log")


# -- the agent -----------------------------------------------------------------------------------------------------
def agent_state(cluster, sysroot):
    state = {}
    for pod in _list(cluster.core.list_pod_for_all_namespaces):
        base = sysroot + "/sys/fs/cgroup/memory/kubepods/burstable/pod%s/" % pod["metadata"]["uid"]
        for container in pod["spec"]["containers"]:
            path = base + "c-%s-%s/memory.kmem.tcp.limit_in_bytes" % (pod["metadata"]["name"], container["name"])
            state["%s/%s" % (pod["metadata"]["name"], container["name"])] = open(path).read().strip() if os.path.exists(path) else None
    for path in ("/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares", "/sys/fs/cgroup/cpu/kubepods/burstable/cpu.shares"):
        state[path] = open(sysroot + path).read().strip() if os.path.exists(sysroot + path) else None
    state["cnrs"] = {c["metadata"]["name"]: strip(c) for c in _list(lambda **kw: cluster.custom.list_cluster_custom_object(*CNR, **kw))}
    return state


def agent_round(cluster, index, sysroot):
    """Round ``index``: a Burstable pod with two containers (limits 2..5 Gi and 1 Gi more: TCP limits clamp at 2 Gi) starts
    on the agent's node."""
    name = "p%04d" % index
    limits = [(index % 4) + 2, (index % 4) + 3]
    pod = cluster.core.create_namespaced_pod("default", {"metadata": {"name": name}, "spec": {"nodeName": AGENT_NODE, "containers": [
        {"name": "c%d" % position, "image": "x", "resources": {"limits": {"memory": "%dGi" % gib}, "requests": {"memory": "512Mi"}}}
        for position, gib in enumerate(limits)]}})
    base = sysroot + "/sys/fs/cgroup/memory/kubepods/burstable/pod%s/" % pod.metadata.uid
    statuses = []
    for position in range(len(limits)):
        container = "c-%s-c%d" % (name, position)
        os.makedirs(base + container)
        statuses.append({"name": "c%d" % position, "containerID": "containerd://" + container, "ready": True, "restartCount": 0,
                         "image": "x", "imageID": ""})
    cluster.core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "qosClass": "Burstable",
                                                                          "containerStatuses": statuses}})

    def done():
        for position, gib in enumerate(limits):
            path = base + "c-%s-c%d/memory.kmem.tcp.limit_in_bytes" % (name, position)
            if not os.path.exists(path) or open(path).read().strip() != str(gib << 30):
                return False
        return True
    return done


def agent_setup(cluster, tmp_path):
    from sandbox.sysroot import build_sysroot  # pylint: disable=import-outside-toplevel
    from tests.integration.backends import install_crds  # pylint: disable=import-outside-toplevel
    install_crds(cluster.api)
    sysroot = build_sysroot(str(tmp_path / "sysroot"), cgroup="v1")
    cluster.core.create_node({"metadata": {"name": AGENT_NODE}, "status": CAPACITY})
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"node_name": AGENT_NODE, "kubeconfig": cluster.kubeconfig, "sysroot": sysroot, "port": 0,
                                  "qos_cgroups_period_seconds": 1, "tcp_memory_enabled": True, "tcp_memory_period_seconds": 1,
                                  "reclaimed_resources_period_seconds": 1, "realtime_overcommit_enabled": True,
                                  "realtime_overcommit_period_seconds": 0.5, "resync_seconds": 5}))
    cluster.sysroot = sysroot
    return Daemon("agent", config, tmp_path / "agent.log")


# -- the scheduler extender ----------------------------------------------------------------------------------------
QOS = "katalyst.kubewharf.io/qos_level"
RECLAIMED_CPU, RECLAIMED_MEMORY = "resource.katalyst.kubewharf.io/reclaimed_millicpu", "resource.katalyst.kubewharf.io/reclaimed_memory"
BIND_RESULT = "katalyst.kubewharf.io/numa_bind_result"
MICROTOPOLOGY_ANTI = "katalyst.kubewharf.io/microtopology_antiaffinity"
EXTENDER_PLUGINS = ("NodeOvercommitment", "NUMA")


def numa_pod(name, cpu, labels=None, node=None, bind=None, anti=None):
    """A dedicated_cores pod with NUMA binding (Guaranteed), maybe bound to ``node`` and pinned to NUMA ``bind``."""
    annotations = {QOS: "dedicated_cores", "katalyst.kubewharf.io/memory_enhancement": json.dumps({"numa_binding": "true"})}
    if bind is not None:
        annotations[BIND_RESULT] = str(bind)
    if anti is not None:
        annotations[MICROTOPOLOGY_ANTI] = json.dumps(anti)
    resources = {"requests": {"cpu": str(cpu), "memory": "2Gi"}, "limits": {"cpu": str(cpu), "memory": "2Gi"}}
    spec = {"containers": [{"name": "main", "image": "x", "resources": resources}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": "default", "labels": labels or {}, "annotations": annotations}, "spec": spec}


def reclaimed_pod(name, millicpu):
    resources = {RECLAIMED_CPU: str(millicpu), RECLAIMED_MEMORY: "2Gi"}
    return {"metadata": {"name": name, "namespace": "default", "labels": {}, "annotations": {QOS: "reclaimed_cores"}},
            "spec": {"containers": [{"name": "main", "image": "x", "resources": {"requests": resources, "limits": resources}}]}}


# what the scheduler asks about: pods no node holds (answers depend on the nodes, their CNRs and the pods bound there)
PROBES = {"worker-4": numa_pod("probe-worker-4", 4, {"role": "worker"}), "worker-7": numa_pod("probe-worker-7", 7, {"role": "worker"}),
          "ps-anti": numa_pod("probe-ps", 2, {"role": "ps"}, anti={"required": [{"matchLabels": {"role": "worker"}, "zone": "numa"}]}),
          "reclaimed": reclaimed_pod("probe-reclaimed", 6000),
          "plain": {"metadata": {"name": "probe-plain", "namespace": "default"}, "spec": {"containers": [{"name": "main", "image": "x"}]}}}


def numa_cnr_status(index):
    """An agent's CNR status for round ``index``'s node: 2 sockets x 2 NUMA, 4-8 CPUs and 16 Gi per NUMA, reclaimed
    resources per NUMA and for the node."""
    cpu, reclaimed = 4 + 2 * (index % 3), 1000 * (1 + index % 4)
    sockets = {}
    for numa in range(4):
        resources = {"cpu": str(cpu), "memory": "16Gi", RECLAIMED_CPU: str(reclaimed), RECLAIMED_MEMORY: "4Gi"}
        zone = {"type": "Numa", "name": str(numa), "resources": {"allocatable": resources, "capacity": dict(resources)}}
        sockets.setdefault(str(numa // 2), []).append(zone)
    node_reclaimed = {RECLAIMED_CPU: str(4 * reclaimed), RECLAIMED_MEMORY: "16Gi"}
    return {"topologyPolicy": "SingleNUMANodeContainerLevel", "resources": {"allocatable": node_reclaimed, "capacity": dict(node_reclaimed)},
            "topologyZone": [{"type": "Socket", "name": s, "children": c} for s, c in sorted(sockets.items())]}


def _post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def extender_answers(ask, names, pods):
    """``ask(verb, body)`` for each pod as kube-scheduler (``nodeCacheCapable``) asks: filter over ``names``, then prioritize
    over the nodes that passed. Returns {pod: {"filter": the ExtenderFilterResult, "scores": {node: score}}}."""
    answers = {}
    for key, pod in sorted(pods.items()):
        result = ask("filter", {"Pod": pod, "Nodes": None, "NodeNames": list(names)})
        passing = result.get("nodenames") or []
        scores = ask("prioritize", {"Pod": pod, "Nodes": None, "NodeNames": passing}) if passing else []
        answers[key] = {"filter": result, "scores": {entry["host"]: entry["score"] for entry in scores}}
    return answers


def expected_answers(cluster, pods):
    """The answers of an extender whose caches hold what the API holds now (the plugins run in the test on a cache
    filled from fresh lists)."""
    from plugins.module_utils.daemons import extender  # pylint: disable=import-outside-toplevel
    from plugins.module_utils.daemons.extender_numa import NumaPlugin  # pylint: disable=import-outside-toplevel
    cache = extender.ClusterCache()
    for node in _list(cluster.core.list_node):
        cache.on_node("ADDED", node)
    for cnr in _list(lambda **kw: cluster.custom.list_cluster_custom_object(*CNR, **kw)):
        cache.on_cnr("ADDED", cnr)
    for pod in _list(cluster.core.list_pod_for_all_namespaces):
        cache.on_pod("ADDED", pod)
    plugins = [NumaPlugin() if name == NumaPlugin.name else extender.PLUGINS[name]() for name in EXTENDER_PLUGINS]
    for plugin in plugins:
        plugin.report = lambda *args, **kwargs: None      # the daemon reports the malformed annotations, not the test
    oracle = extender.SchedulerExtender(cache, plugins)
    verbs = {"filter": oracle.filter, "prioritize": oracle.prioritize}
    return extender_answers(lambda verb, body: json.loads(json.dumps(verbs[verb](body))), cluster.extender_nodes, pods)


def extender_asked(cluster, pods):
    return extender_answers(lambda verb, body: _post("%s/%s" % (cluster.extender_url, verb), body), cluster.extender_nodes, pods)


def extender_state(cluster):
    """The extender's answers for the probe pods over every node the scenario created (deleted ones included)."""
    return extender_asked(cluster, PROBES)


def extender_round(cluster, index):
    """Round ``index``: a node joins with its CNR (per-NUMA resources and reclaimed resources); a NUMA-bound worker is
    bound to the previous round's node, pinned to NUMA index % 4; every third round the worker of round index-2 is
    deleted, every fifth the node (and CNR) of round index-4 leaves; a user submits a pod whose microtopology
    annotation names an unknown zone (the extender answers it unschedulable and reports a Warning Event). Done when
    the extender's answers for the probe pods and the new pod equal those of a cache filled from the API now."""
    name = "n%04d" % index
    cluster.core.create_node({"metadata": {"name": name, "labels": {"round": str(index)}}, "status": CAPACITY})
    cluster.custom.create_cluster_custom_object(*CNR, {"apiVersion": "/".join(CNR[:2]), "kind": "CustomNodeResource", "metadata": {"name": name}})
    cluster.custom.patch_cluster_custom_object_status(*CNR, name, {"status": numa_cnr_status(index)})
    cluster.extender_nodes.append(name)
    if index >= 1:
        cluster.core.create_namespaced_pod("default", numa_pod("w%04d" % index, 2 + index % 3, {"role": "worker"}, "n%04d" % (index - 1), index % 4))
    if index >= 3 and index % 3 == 0:
        cluster.core.delete_namespaced_pod("w%04d" % (index - 2), "default")
    if index >= 4 and index % 5 == 4:
        cluster.core.delete_node("n%04d" % (index - 4))
        cluster.custom.delete_cluster_custom_object(*CNR, "n%04d" % (index - 4))
    typo = numa_pod("u%04d" % index, 2, {"role": "worker"}, anti={"required": [{"matchLabels": {"role": "ps"}, "zone": "rack"}]})
    typo = cluster.api.sanitize_for_serialization(cluster.core.create_namespaced_pod("default", typo))
    pods = dict(PROBES, typo=typo)

    def done():
        try:
            return extender_asked(cluster, pods) == expected_answers(cluster, pods)
        except OSError:          # the extender did not answer (yet): the round times out if it never does
            return False
    return done


def extender_settle(cluster, daemon, name):
    """Between two looks at the extender's answers (it has no periodic loops): they equal those of the API's state."""
    wait_until(lambda: daemon.process.poll() is not None or extender_state(cluster) == expected_answers(cluster, PROBES),
               timeout=120, interval=0.2, what="%s to answer from the API's state" % name, ignore=(client.exceptions.ApiException,))


def extender_setup(cluster, tmp_path):
    from tests.integration.backends import install_crds  # pylint: disable=import-outside-toplevel
    install_crds(cluster.api)
    cluster.extender_nodes = []
    config = tmp_path / "extender.yaml"
    config.write_text(json.dumps({"kubeconfig": cluster.kubeconfig, "listen_address": "127.0.0.1", "port": 0, "resync_seconds": 5,
                                  "plugins": list(EXTENDER_PLUGINS), "json_logs": False}))
    daemon = Daemon("extender", config, tmp_path / "extender.log")
    cluster.extender_url = "http://127.0.0.1:%d" % daemon.port
    return daemon


# the loops whose passes separate two looks at the final state; the extender has none (informers only): SETTLE
LOOPS = {"controller": ("tide", "overcommit", "cnr"), "agent": ("qos_cgroups", "tcp_memory", "realtime_overcommit"), "extender": ()}
DAEMONS = {
    "controller": (controller_setup, controller_round, controller_state),
    "agent": (agent_setup, lambda cluster, index: agent_round(cluster, index, cluster.sysroot),
              lambda cluster: agent_state(cluster, cluster.sysroot)),
    "extender": (extender_setup, extender_round, extender_state),
}


def loop_passes(cluster, daemon, name):
    """Between two looks at the final state: every loop of LOOPS[name] passes twice more."""
    del cluster
    runs = daemon.loop_runs(LOOPS[name])
    wait_until(lambda: daemon.process.poll() is not None or min(a - b for a, b in zip(daemon.loop_runs(LOOPS[name]), runs)) >= 2,
               timeout=120, interval=0.2, what="two more passes of %s" % name)


SETTLE = {"extender": extender_settle}       # the others: loop_passes


class Pace:
    """The faulted run sets the pace (rounds until SCENARIO_SECONDS have passed); the fault-free run, alongside it,
    replays the same rounds, never ahead of it."""

    def __init__(self):
        self.condition = threading.Condition()
        self.started = 0
        self.final = None

    def lead(self, index):
        with self.condition:
            self.started = max(self.started, index + 1)
            self.condition.notify_all()

    def finish(self, rounds):
        with self.condition:
            self.final = rounds
            self.condition.notify_all()

    def follow(self, index):
        """True once round ``index`` may run; False when the faulted run ended before it."""
        with self.condition:
            self.condition.wait_for(lambda: index < self.started or self.final is not None)
            return index < self.started


def run_scenario(name, tmp_path, faults, pace):
    """One run: the rounds ``pace`` gives (the faulted run decides them), then the state once it is stable.
    Returns a dict of what happened."""
    setup, one_round, state_of = DAEMONS[name]
    cluster = Cluster(tmp_path, faults)
    started = time.monotonic()
    daemon = None
    result = {"rounds": 0, "failed_rounds": 0, "exited": False}
    try:
        daemon = setup(cluster, tmp_path)
        deadline = time.monotonic() + SCENARIO_SECONDS
        index = 0
        while (time.monotonic() < deadline) if faults else pace.follow(index):
            if faults:
                pace.lead(index)
            done = one_round(cluster, index)
            try:
                wait_until(done, timeout=ROUND_TIMEOUT, interval=0.1, what="round %d of %s" % (index, name),
                           ignore=(client.exceptions.ApiException,))
            except AssertionError:
                result["failed_rounds"] += 1
            index += 1
            if daemon.process.poll() is not None:
                break
        result["rounds"] = index
        if faults:
            pace.finish(index)
        # the end: the state stops changing (two equal looks, with SETTLE's wait in between: by default every loop of the
        # scenario having passed twice)
        snapshots = [state_of(cluster)]

        def settled():
            SETTLE.get(name, loop_passes)(cluster, daemon, name)
            snapshots.append(state_of(cluster))
            return snapshots[-1] == snapshots[-2]
        wait_until(settled, timeout=300, interval=0, what="the final state of %s" % name)
        result["state"] = snapshots[-1]
        result["retries"] = daemon.retries() if daemon.process.poll() is None else {}
    finally:
        if faults:
            pace.finish(result["rounds"])      # a no-op after the rounds; else the fault-free run stops where this one did
        if daemon is not None:
            result["exited"] = not daemon.stop()
            result["exit_code"] = daemon.process.returncode
        result["proxied"] = cluster.proxy.counts["requests"]
        result["injected"] = cluster.proxy.injected()
        result["wall"] = time.monotonic() - started
        cluster.close()
    return result


def differences(faulted, clean, path=""):
    """Where two states differ, one line each."""
    if isinstance(faulted, dict) and isinstance(clean, dict):
        lines = []
        for key in sorted(set(faulted) | set(clean)):
            lines += differences(faulted.get(key), clean.get(key), "%s/%s" % (path, key))
        return lines
    return [] if faulted == clean else ["%s: faulted %r, clean %r" % (path, faulted, clean)]


@pytest.mark.parametrize("name", sorted(DAEMONS))
def test_daemon_survives_api_faults(name, tmp_path):
    pace, clean = Pace(), {}

    def fault_free():
        try:
            clean.update(run_scenario(name, tmp_path / "clean", False, pace))
        except Exception as exc:  # pylint: disable=broad-except
            clean["error"] = repr(exc)
    thread = threading.Thread(target=fault_free, name="fault-free run", daemon=True)
    thread.start()
    try:
        faulted = run_scenario(name, tmp_path / "faulted", True, pace)
    finally:
        pace.finish(pace.started)
        thread.join()
    assert "error" not in clean, "the fault-free run failed: %s" % clean.get("error")
    assert clean["rounds"] == faulted["rounds"] and clean["failed_rounds"] == 0
    same = faulted.get("state") == clean.get("state")
    retried = sum(faulted.get("retries", {}).values())
    survived = same and not faulted["exited"] and faulted["failed_rounds"] == 0 and retried > 0
    outcome = ("%s: %d rounds, %d requests proxied, injected %s, retries %s, final state %s, %s, %.0fs (clean run: %d requests, %.0fs)"
               % ("survived" if survived else "FAILED", faulted["rounds"], faulted["proxied"],
                  json.dumps(faulted["injected"], sort_keys=True), json.dumps(faulted.get("retries", {}), sort_keys=True),
                  "equal" if same else "DIFFERS", "process exited" if faulted["exited"] else "process never exited",
                  faulted["wall"], clean["proxied"], clean["wall"]))
    print(outcome)
    record("api faults: %s" % name, outcome, expected=survived)
    assert not faulted["exited"], "the %s exited under API faults" % name
    assert faulted["failed_rounds"] == 0, "%d rounds of %s did not converge under faults" % (faulted["failed_rounds"], name)
    assert same, "final state differs:\n%s" % "\n".join(differences(faulted.get("state"), clean.get("state")))
    assert retried > 0, "no retries in katalyst_api_retries_total"


# -- the proxy itself, and the client's side of a fault -----------------------------------------------------------
@pytest.fixture
def emulator_behind_proxy():
    server = KubeAPIServer(bookmark_interval=0.2).start()
    proxies = []

    def proxy(fault, **kwargs):
        started = FaultProxy(server.url, seed=SEED, rate=1.0, faults=(fault,), **kwargs).start()
        proxies.append(started)
        return started
    yield proxy
    for started in proxies:
        started.stop()
    server.stop()


def _request(proxy, path, method="GET", body=None, timeout=10):
    connection = http.client.HTTPConnection("127.0.0.1", proxy.httpd.server_address[1], timeout=timeout)
    try:
        connection.request(method, path, body=json.dumps(body) if body else None, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("fault", FAULTS)
def test_the_proxy_injects_each_fault(emulator_behind_proxy, fault):
    proxy = emulator_behind_proxy(fault, slow_seconds=0.4, cut_seconds=(0.3, 0.4))
    watch = "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=20&resourceVersion=1"
    if fault in ("500", "503", "429"):
        status, headers, body = _request(proxy, "/api/v1/nodes")
        assert status == int(fault) and json.loads(body)["code"] == int(fault)
        assert headers.get("Retry-After") == (None if fault == "500" else "1")
    elif fault == "reset":
        for attempt in range(4):          # both variants: before the server saw the request, and after
            with pytest.raises((OSError, http.client.HTTPException)):
                _request(proxy, "/api/v1/nodes", "POST", {"metadata": {"name": "n%d" % attempt}})
    elif fault == "slow":
        started = time.monotonic()
        assert _request(proxy, "/api/v1/nodes")[0] == 200
        assert time.monotonic() - started >= 0.1
    elif fault == "cut":
        started = time.monotonic()
        with pytest.raises((OSError, http.client.HTTPException)):
            _request(proxy, watch.replace("resourceVersion=1", "resourceVersion=0"))
        assert time.monotonic() - started < 10          # cut well before the watch's own 20 s timeout
    else:                                               # gone: an HTTP 410, or a 200 whose only event is a 410 ERROR
        for attempt in range(4):
            status, _headers, body = _request(proxy, watch)
            event = json.loads(body.splitlines()[0])
            assert (status, event.get("code")) == (410, 410) or (status, event["type"], event["object"]["code"]) == (200, "ERROR", 410), attempt
    assert proxy.injected() == {fault: proxy.counts["requests"]}


def test_the_client_honours_retry_after_and_counts_its_retries(emulator_behind_proxy):
    from plugins.module_utils.kube import KubeClient, KubeError  # pylint: disable=import-outside-toplevel
    proxy = emulator_behind_proxy("429")
    configuration = client.Configuration()
    configuration.host = proxy.url
    sleeps, reasons = [], []
    kube = KubeClient(api_client=client.ApiClient(configuration), retries=2, sleep=sleeps.append, on_retry=reasons.append)
    proxy.enabled = False
    kube.resource("v1", "Node")       # discovery without faults
    proxy.enabled = True
    with pytest.raises(KubeError) as error:     # a POST: urllib3 leaves it to the client
        kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    assert error.value.status == 429
    assert sleeps == [1.0, 1.0] and reasons == ["429", "429"]     # Retry-After: 1 outweighs the 0.2 s and 0.4 s backoff


def test_a_failed_discovery_is_not_a_resource_the_server_does_not_serve(emulator_behind_proxy):
    from plugins.module_utils.kube import KubeClient, KubeError  # pylint: disable=import-outside-toplevel
    proxy = emulator_behind_proxy("500")
    configuration = client.Configuration()
    configuration.host = proxy.url
    kube = KubeClient(api_client=client.ApiClient(configuration), retries=1, sleep=lambda seconds: None)
    proxy.enabled = False
    kube.dynamic
    proxy.enabled = True
    with pytest.raises(KubeError) as error:     # was a 404 "does not serve v1 Node", which callers take for "gone"
        kube.get("v1", "Node", "n1")
    assert error.value.status == 500


def test_the_extender_counts_its_informer_and_event_retries(emulator_behind_proxy, tmp_path):
    """Its informers' list/watch restarts (here: every watch cut) and its Event client's retries go to
    katalyst_api_retries_total like the other daemons' (they were not counted: a faulted extender showed none)."""
    from plugins.module_utils.daemons.extender import ExtenderDaemon  # pylint: disable=import-outside-toplevel
    from tests.integration.backends import install_crds  # pylint: disable=import-outside-toplevel
    prometheus_client = pytest.importorskip("prometheus_client")
    proxy = emulator_behind_proxy("cut", cut_seconds=(0.1, 0.2))
    kubeconfig = str(tmp_path / "kubeconfig")
    write_kubeconfig(kubeconfig, proxy.url)
    configuration = client.Configuration()
    configuration.host = proxy.url
    proxy.enabled = False
    with client.ApiClient(configuration) as api:
        install_crds(api, ["customnoderesources"])
    proxy.enabled = True
    extender = ExtenderDaemon({"kubeconfig": kubeconfig, "listen_address": "127.0.0.1", "port": 0, "plugins": ["NUMA"], "json_logs": False})
    try:
        extender.start(wait_synced=30)

        def informer_retries():
            text = prometheus_client.generate_latest(extender.daemon.registry).decode()
            return sum(float(value) for value in re.findall(r'^katalyst_api_retries_total\{[^}]*source="informer"[^}]*\} ([0-9.e+]+)$', text, re.M))
        wait_until(lambda: informer_retries() >= 3, timeout=60, what="the extender's informer retries in its metrics")
        assert extender.extender.plugins[0].kube.on_retry is not None
    finally:
        extender.stop()
