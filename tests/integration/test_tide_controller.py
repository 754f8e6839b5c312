"""The tide reconciler of katalyst-controller end to end through the emulator (real HTTP, real client).

A 10-node pool gets its reserve and tide roles; pending online pods that fit nowhere bring exactly one
offline node online per pass (the sandbox scheduler places them, as kube-scheduler would); a quiet
period releases the least-loaded online node; deleting the pool cleans every label, taint and the
finalizer; a controller killed mid-way and restarted ends in the same state as the engine's fixed point.
"""

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.controller import Controller
from sandbox.scheduler import SandboxScheduler
from tests.integration.backends import install_crds
from tests.integration.ansible_runner import REPO
from tests.integration.waiting import wait_until

POOL = "demo"
NODES = ["n%02d" % i for i in range(10)]
ON_TOLERATION = {"key": tide.TAINT_EVICT_OFFLINE_POD, "operator": "Equal", "value": "true", "effect": "NoExecute"}


def create_nodes(core, names=NODES, cpu="4"):
    for name in names:
        core.create_node({"metadata": {"name": name, "labels": {"pool": POOL}},
                          "status": {"capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                                     "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}})


def create_pool(custom, reserve=None, **spec_extra):
    spec = {"nodeConfigs": {"nodeSelector": {"pool": POOL}, "reserve": reserve or {"online": "10%", "offline": "25%"}}}
    spec.update(spec_extra)
    return custom.create_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL,
                                               {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": POOL}, "spec": spec})


def online_pod(core, name, cpu, node_name=None):
    spec = {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}],
            "tolerations": [ON_TOLERATION]}
    if node_name:
        spec["nodeName"] = node_name
    return core.create_namespaced_pod("default", {"metadata": {"name": name, "labels": {tide.LABEL_POD_TYPE: "online"}}, "spec": spec})


def node_roles(core):
    config = tide.PoolConfig({"metadata": {"name": POOL}, "spec": {}})
    return {n.metadata.name: config.role(n.metadata.labels or {}) for n in core.list_node().items}


def managed_state(core):
    """Every node's tide labels, evict taints and finalizer-relevant bits, comparable across runs."""
    config = tide.PoolConfig({"metadata": {"name": POOL}, "spec": {}})
    state = {}
    for node in json.loads(core.list_node(_preload_content=False).data)["items"]:
        view = config.managed_view(node)
        view.pop("annotations", None)
        state[node["metadata"]["name"]] = view
    return state


def write_config(path, kubeconfig, **extra):
    config = {"kubeconfig": kubeconfig, "controllers": ["tide"], "port": 0, "leader_election": False, "resync_seconds": 30,
              "tide": {"period_seconds": 0.5}}
    config.update(extra)
    path.write_text(json.dumps(config))


class InProcess:
    """The controller's reconciler driven pass by pass (no loops), on real informers."""

    def __init__(self, kubeapi, kube_client, tmp_path, clock=None):
        config = tmp_path / "controller.yaml"
        write_config(config, kubeapi.kubeconfig)
        self.stop = threading.Event()
        self.controller = Controller(str(config), kube_api_client=kube_client, **({"now": clock} if clock else {})).build()
        self.controller.start_informers(self.stop)
        wait_until(self.controller.synced, what="informers to sync")
        self.reconciler = self.controller.reconcilers["tide"]
        self.core = client.CoreV1Api(kube_client)

    def settle(self):
        """Wait until the caches show what the API holds (so a pass sees the previous pass's writes)."""
        def caught_up():
            api = {n["metadata"]["name"]: n["metadata"]["resourceVersion"]
                   for n in json.loads(self.core.list_node(_preload_content=False).data)["items"]}
            cached = {n["metadata"]["name"]: n["metadata"]["resourceVersion"] for n in self.controller.informers["nodes"].items()}
            return api == cached
        wait_until(caught_up, what="the node cache")

    def cycle(self):
        self.settle()
        self.reconciler.reconcile_all()
        self.settle()
        return self.reconciler.last_plans.get(POOL)

    def close(self):
        self.stop.set()
        for informer in self.controller.informers.values():
            informer.stop()


@pytest.fixture
def cluster(kubeapi, kube_client, tmp_path):
    install_crds(kube_client)
    core = client.CoreV1Api(kube_client)
    custom = client.CustomObjectsApi(kube_client)
    create_nodes(core)
    return core, custom


@pytest.fixture
def inproc(kubeapi, kube_client, tmp_path, cluster):
    runner = InProcess(kubeapi, kube_client, tmp_path)
    yield runner
    runner.close()


def count(roles, role):
    return sum(1 for value in roles.values() if value == role)


def pool_object(custom):
    return custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, POOL)


def events(core, reason):
    return [e for e in core.list_namespaced_event("default").items if e.reason == reason]


def test_pool_of_ten_gets_reserves_tide_roles_status_and_finalizer(cluster, inproc):
    core, custom = cluster
    create_pool(custom)
    wait_until(inproc.controller.informers["tidenodepools"].items, what="the pool in the cache")
    plan = inproc.cycle()
    assert plan.reserve == {"online": 1, "offline": 2, "nodes": 10}                 # 10% up, 25% down
    roles = node_roles(core)
    assert roles["n00"] == "online-reserve" and roles["n01"] == roles["n02"] == "offline-reserve"
    assert count(roles, "tide-online") + count(roles, "tide-offline") == 7
    assert count(roles, "tide-offline") == 1 and roles["n03"] == "tide-offline"     # empty nodes: the first one is released at once
    pool = pool_object(custom)
    assert pool["metadata"]["finalizers"] == [tide.FINALIZER]
    assert pool["status"]["reserveNodes"] == {"onlineNodes": ["n00"], "offlineNodes": ["n02", "n01"]}
    assert pool["status"]["tideNodes"]["nodes"] == ["n09", "n08", "n07", "n06", "n05", "n04", "n03"]
    ready = pool["status"]["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Reconciled")
    n00 = core.read_node("n00")
    assert n00.metadata.labels == {"pool": POOL, tide.LABEL_NODE_POOL: POOL, tide.LABEL_NODE_TYPE: "online", tide.LABEL_RESERVE: "true"}
    n03 = core.read_node("n03")
    assert [(t.key, t.value, t.effect) for t in n03.spec.taints] == [(tide.TAINT_EVICT_ONLINE_POD, "true", "NoExecute")]
    flipped = events(core, "TideNodeOffline")
    assert len(flipped) == 1 and "node n03 flipped offline" in flipped[0].message
    assert flipped[0].involved_object.kind == tide.KIND and flipped[0].involved_object.name == POOL


def test_pending_online_pods_bring_exactly_one_offline_node_online_per_pass(cluster, inproc, kube_client):
    core, custom = cluster
    create_pool(custom, reserve={"online": 1, "offline": 2})
    wait_until(inproc.controller.informers["tidenodepools"].items, what="the pool in the cache")
    for _attempt in range(10):                                          # a quiet cluster: release down to one online tide node
        plan = inproc.cycle()
        if plan.flip is None:
            break
    roles = node_roles(core)
    assert count(roles, "tide-online") == 1 and count(roles, "tide-offline") == 6
    stop = threading.Event()
    scheduler = SandboxScheduler(core)
    scheduler.nodes.start(stop)
    scheduler.pods.start(stop)

    def schedule():
        """One pass of the sandbox scheduler on caches that show everything (kube-scheduler's view)."""
        def caught_up(informer, listed):
            return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in informer.items()} == {
                o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in json.loads(listed.data)["items"]}
        wait_until(lambda: caught_up(scheduler.nodes, core.list_node(_preload_content=False))
                   and caught_up(scheduler.pods, core.list_pod_for_all_namespaces(_preload_content=False)), what="the scheduler's caches")
        scheduler.schedule_once()

    def pending():
        pods = core.list_namespaced_pod("default").items
        return sorted(p.metadata.name for p in pods if not p.spec.node_name and any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable" for c in p.status.conditions or []))
    try:
        for index in range(6):                                          # 3 cpu each on 4-cpu nodes: one pod per node
            online_pod(core, "web-%d" % index, "3")
        schedule()                                                      # 3 reserve nodes (untainted) + the online tide node
        assert pending() == ["web-4", "web-5"]
        online_before = count(node_roles(core), "tide-online")
        for still_pending in (["web-5"], []):
            plan = inproc.cycle()
            assert plan.flip["direction"] == "online" and plan.flip["pods"] == ["default/web-%d" % (5 - len(still_pending))], plan.flip
            assert count(node_roles(core), "tide-online") == online_before + 1                 # exactly one per pass
            online_before += 1
            schedule()
            assert pending() == still_pending
        plan = inproc.cycle()
        assert plan.flip is None, plan.flip                              # every online tide node is full now: nothing to release
        assert count(node_roles(core), "tide-online") == 3
        online_events = events(core, "TideNodeOnline")
        assert len(online_events) == 2 and all("default/web-" in e.message for e in online_events)
        placed = [p.spec.node_name for p in core.list_namespaced_pod("default").items]
        assert len(set(placed)) == 6 and None not in placed              # one pod per node, none pending
    finally:
        stop.set()


def test_quiet_period_releases_the_least_loaded_online_node(cluster, inproc):
    core, custom = cluster
    loads = {"n03": "1500m", "n04": "500m", "n05": "1", "n06": "2", "n07": "3", "n08": "3", "n09": "3"}
    for node_name, cpu in loads.items():
        online_pod(core, "app-%s" % node_name, cpu, node_name)
    create_pool(custom, reserve={"online": 1, "offline": 2})
    wait_until(inproc.controller.informers["tidenodepools"].items, what="the pool in the cache")
    released = []
    for _attempt in range(3):
        plan = inproc.cycle()
        assert plan.flip is not None and plan.flip["direction"] == "offline"
        released.append(plan.flip["node"])
        assert plan.flip["pods"] == ["default/app-%s" % plan.flip["node"]]
    assert released == ["n04", "n05", "n03"]                            # least requested load first, one per pass
    roles = node_roles(core)
    assert [name for name in NODES if roles[name] == "tide-offline"] == ["n03", "n04", "n05"]


def test_deleting_the_pool_cleans_every_label_taint_and_the_finalizer(cluster, inproc):
    core, custom = cluster
    core.patch_node("n05", {"metadata": {"labels": {"team": "keep"}},
                            "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}})
    create_pool(custom)
    wait_until(inproc.controller.informers["tidenodepools"].items, what="the pool in the cache")
    for _attempt in range(3):
        inproc.cycle()
    assert any(t.key == tide.TAINT_EVICT_ONLINE_POD for n in core.list_node().items for t in (n.spec.taints if n.spec else None) or [])
    custom.delete_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, POOL)
    wait_until(lambda: (inproc.controller.informers["tidenodepools"].get(POOL) or {}).get("metadata", {}).get("deletionTimestamp"),
               what="the deletion to reach the cache")
    plan = inproc.cycle()
    assert plan.deleting and plan.remove_finalizer
    wait_until(lambda: not custom.list_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL)["items"], what="the pool to go")
    for node in json.loads(core.list_node(_preload_content=False).data)["items"]:
        labels = node["metadata"].get("labels") or {}
        assert not [key for key in labels if key.startswith(tide.GROUP)], node["metadata"]["name"]
        assert tide.ANNOTATION_LAST_FLIP not in (node["metadata"].get("annotations") or {})
        taints = node.get("spec", {}).get("taints") or []
        assert not [t for t in taints if t["key"].startswith(tide.GROUP)]
    n05 = core.read_node("n05")
    assert n05.metadata.labels == {"pool": POOL, "team": "keep"}
    assert [(t.key, t.effect) for t in n05.spec.taints] == [("dedicated", "NoSchedule")]


def test_invalid_reserve_is_a_condition_and_an_event_not_a_crash_loop(cluster, inproc):
    core, custom = cluster
    create_pool(custom, reserve={"online": "10", "offline": 1})
    wait_until(inproc.controller.informers["tidenodepools"].items, what="the pool in the cache")
    inproc.cycle()
    inproc.cycle()
    ready = pool_object(custom)["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidReserve") and "reserve.online" in ready["message"]
    assert all(role == "unknown" for role in node_roles(core).values())              # nothing written to nodes
    assert len(events(core, "InvalidReserve")) == 1                                  # reported once, not every pass
    custom.patch_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, POOL, {"spec": {"nodeConfigs": {"reserve": {"online": 1}}}})
    wait_until(lambda: inproc.controller.informers["tidenodepools"].get(POOL)["spec"]["nodeConfigs"]["reserve"]["online"] == 1,
               what="the fixed pool in the cache")
    inproc.cycle()
    ready = pool_object(custom)["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "Reconciled")


def test_cooldown_keeps_a_flipped_node_from_flipping_back(cluster, kubeapi, kube_client, tmp_path):
    core, custom = cluster
    now = {"value": datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)}
    runner = InProcess(kubeapi, kube_client, tmp_path, clock=lambda: now["value"])
    try:
        create_pool(custom, reserve={"online": 0, "offline": 0}, cooldownSeconds=300)
        wait_until(runner.controller.informers["tidenodepools"].items, what="the pool in the cache")
        plan = runner.cycle()
        assert plan.flip["node"] == "n00" and plan.flip["direction"] == "offline"
        assert core.read_node("n00").metadata.annotations[tide.ANNOTATION_LAST_FLIP] == "2025-01-01T00:00:00Z"
        for name in NODES[1:]:                                           # every online node full: nothing can be released
            online_pod(core, "filler-%s" % name, "3", name)
        online_pod(core, "big", "3")
        core.patch_namespaced_pod_status("big", "default", {"status": {"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}})
        wait_until(lambda: len(runner.controller.informers["pods"].items()) == 10, what="the pods in the cache")
        wait_until(lambda: any(c.get("reason") == "Unschedulable" for p in runner.controller.informers["pods"].items()
                               for c in (p.get("status") or {}).get("conditions") or []), what="the pending pod in the cache")
        now["value"] += datetime.timedelta(seconds=120)
        plan = runner.cycle()
        assert plan.flip is None and "cooldown" in plan.flip_note                       # n00 could help but is cooling down
        now["value"] += datetime.timedelta(seconds=181)
        plan = runner.cycle()
        assert plan.flip == {"node": "n00", "direction": "online", "pods": ["default/big"], "reason": plan.flip["reason"]}
    finally:
        runner.close()


# -- the real process: restart mid-way ------------------------------------------------------------------
def fixed_point(pool, nodes):
    """The engine iterated to its fixed point in memory (what any sequence of passes must end in)."""
    for _attempt in range(50):
        result = tide.plan_tide_pool(pool, nodes, [], now=None)
        if not result.plan:
            return nodes
        by_name = {n["metadata"]["name"]: n for n in nodes}
        for change in result.plan:
            by_name[change.data["node"]] = tide.apply_node_edit(by_name[change.data["node"]], change.data["edit"])
        nodes = [by_name[name] for name in sorted(by_name)]
        pool = dict(pool, metadata=dict(pool["metadata"], finalizers=[tide.FINALIZER]))
    raise AssertionError("no fixed point")


def start_controller(config, log_path):
    env = dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO)
    log = open(log_path, "a+")
    process = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.controller",
                                "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, log


def test_restarting_the_controller_mid_way_ends_in_the_same_state(cluster, kubeapi, tmp_path):
    core, custom = cluster
    spec = {"nodeConfigs": {"nodeSelector": {"pool": POOL}, "reserve": {"online": "10%", "offline": "25%"}}}
    expected_nodes = fixed_point({"metadata": {"name": POOL}, "spec": spec}, json.loads(core.list_node(_preload_content=False).data)["items"])
    config = tide.PoolConfig({"metadata": {"name": POOL}, "spec": {}})
    expected = {}
    for node in expected_nodes:
        view = config.managed_view(node)
        view.pop("annotations", None)
        expected[node["metadata"]["name"]] = view
    assert sum(1 for v in expected.values() if v["labels"].get(tide.LABEL_TIDE) and v["labels"][tide.LABEL_NODE_TYPE] == "online") == 1
    path = tmp_path / "controller.yaml"
    write_config(path, kubeapi.kubeconfig, leader_election=True, lease_namespace="default", lease_duration_seconds=2,
                 renew_deadline_seconds=1.5, retry_period_seconds=0.3, identity="first")
    # the timeouts below include a controller process starting: up to minutes on a loaded machine
    first, log = start_controller(path, tmp_path / "first.log")
    try:
        create_pool(custom)
        wait_until(lambda: any(role == "tide-offline" for role in node_roles(core).values()), timeout=180, what="the first flip")
        first.send_signal(signal.SIGKILL)                                # mid-way: no Lease release, no cleanup
        first.wait(10)
        write_config(path, kubeapi.kubeconfig, leader_election=True, lease_namespace="default", lease_duration_seconds=2,
                     renew_deadline_seconds=1.5, retry_period_seconds=0.3, identity="second")
        second, log2 = start_controller(path, tmp_path / "second.log")
        try:
            wait_until(lambda: managed_state(core) == expected, timeout=180, what="the fixed point after the restart")
            time.sleep(1.5)                                              # and it stays there
            assert managed_state(core) == expected
            leases = client.CoordinationV1Api(core.api_client)
            # the fixed point may already stand when the first replica dies: the second takes over once its Lease expires
            wait_until(lambda: leases.read_namespaced_lease("katalyst-controller", "default").spec.holder_identity == "second",
                       timeout=60, what="the second replica to hold the Lease")
            assert managed_state(core) == expected
            pool = pool_object(custom)
            assert pool["metadata"]["finalizers"] == [tide.FINALIZER]
            assert pool["status"]["conditions"][0]["status"] == "True"
            port = int(re.search(r"on 127\.0\.0\.1:(\d+)", open(tmp_path / "second.log").read()).group(1))
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as response:
                metrics = response.read().decode()
            assert "katalyst_controller_leader 1.0" in metrics and "katalyst_tide_flips_total" in metrics
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
            lease = client.CoordinationV1Api(core.api_client).read_namespaced_lease("katalyst-controller", "default")
            assert lease.spec.holder_identity in ("", None)                  # released on a clean stop
        finally:
            if second.poll() is None:
                second.kill()
            log2.close()
    finally:
        if first.poll() is None:
            first.kill()
        log.close()


def test_configuration_errors_are_refused_at_start(tmp_path):
    path = tmp_path / "controller.yaml"
    write_config(path, "unused", controllers=["tide", "bogus"])
    with pytest.raises(ValueError, match=r"unknown controller\(s\) bogus \(known: .*tide"):
        Controller(str(path))
    write_config(path, "unused", tide=["not", "a", "mapping"])
    with pytest.raises(ValueError, match="tide must be a mapping"):
        Controller(str(path))
    path.write_text(json.dumps({"controlers": ["tide"]}))
    with pytest.raises(ValueError, match="unknown setting"):
        Controller(str(path))
