"""The gauges of what the daemons keep in place: overcommit ratios and nodes per pool (controller), tide roles per pool
(controller), and on the node the QoS cgroup values, the memory provision and the reclaimed resources per NUMA node
(agent). Each is set from the pass that computes the values, and a pool or config that is gone leaves no series."""

import copy
import datetime
import json

import prometheus_client
import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import cnr, tide
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent as agent_module
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.overcommit_controller import OvercommitReconciler
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.service import set_gauge_series
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.tide_controller import TideReconciler
from sandbox.kubeapi.patching import merge_patch
from sandbox.sysroot import build_sysroot

POOL_LABEL = "katalyst.kubewharf.io/overcommit_node_pool"
GIB = 1024 ** 3


class Items:
    def __init__(self, objects):
        self.objects = objects

    def items(self):
        return copy.deepcopy(self.objects)


class FakeKube:
    """Merge patches applied to ``stored`` ((kind, name) -> object); every write answers with a new resourceVersion."""

    conflict_retries = 2

    def __init__(self, stored):
        self.stored = stored
        self.version = 100

    def get(self, _api_version, kind, name):
        return copy.deepcopy(self.stored.get((kind, name)))

    def patch(self, _api_version, kind, name, patch, **_options):
        self.version += 1
        after = copy.deepcopy(self.stored.get((kind, name)) or {"metadata": {"name": name}})
        for field, value in patch.items():
            after[field] = merge_patch(after.get(field), value)
        after["metadata"]["resourceVersion"] = str(self.version)
        self.stored[(kind, name)] = after
        return copy.deepcopy(after)

    def emit_event(self, *_event):
        return True


class Context:
    def __init__(self, informers, kube, options=None):
        self.informers = {name: Items(objects) for name, objects in informers.items()}
        self.kube = kube
        self.options = dict(options or {})
        self.registry = prometheus_client.CollectorRegistry()

    def now(self):
        return datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def node(name, labels=None):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "1", "labels": dict(labels or {})},
            "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}, "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"}}}


def noc(name, pool, ratios, created="2026-01-01T00:00:00Z"):
    return {"apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig",
            "metadata": {"name": name, "generation": 1, "creationTimestamp": created},
            "spec": {"nodeOvercommitSelectorVal": pool, "resourceOvercommitRatio": ratios}}


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_set_gauge_series_sets_and_removes_what_is_gone():
    registry = prometheus_client.CollectorRegistry()
    gauge = prometheus_client.Gauge("g", "test", ["pool"], registry=registry)
    kept = set_gauge_series(gauge, {("a",): 1, ("b",): 2})
    kept = set_gauge_series(gauge, {("b",): 3}, kept)
    assert kept == {("b",)}
    assert registry.get_sample_value("g", {"pool": "a"}) is None and registry.get_sample_value("g", {"pool": "b"}) == 3


def test_overcommit_ratio_and_nodes_per_config_and_pool():
    nodes = [node("n1", {POOL_LABEL: "web"}), node("n2", {POOL_LABEL: "web"}), node("n3", {POOL_LABEL: "batch"}), node("n4")]
    configs = [noc("web-old", "web", {"cpu": "1.5"}), noc("web-new", "web", {"cpu": "2", "memory": "1.2"}, created="2026-02-01T00:00:00Z"),
               noc("batch", "batch", {"cpu": "0.5"})]     # below 1: invalid, nodes keep their ratios
    context = Context({"nodeovercommitconfigs": configs, "nodes": nodes, "customnoderesources": [], "pods": []}, FakeKube({}))
    reconciler = OvercommitReconciler(context)
    reconciler.reconcile_all()
    registry = context.registry
    assert sample(registry, "katalyst_overcommit_config_ratio", config="web-new", pool="web", resource="cpu") == 2.0
    assert sample(registry, "katalyst_overcommit_config_ratio", config="web-new", pool="web", resource="memory") == 1.2
    assert sample(registry, "katalyst_overcommit_config_ratio", config="web-old", pool="web", resource="memory") == 1.0    # none set: 1
    assert sample(registry, "katalyst_overcommit_config_ratio", config="batch", pool="batch", resource="cpu") is None     # invalid
    # the newest config of a pool applies to its nodes; the older one to none; an invalid config still covers its nodes
    assert sample(registry, "katalyst_overcommit_config_nodes", config="web-new", pool="web") == 2
    assert sample(registry, "katalyst_overcommit_config_nodes", config="web-old", pool="web") == 0
    assert sample(registry, "katalyst_overcommit_config_nodes", config="batch", pool="batch") == 1
    context.informers["nodeovercommitconfigs"] = Items(configs[1:2])     # the old one and the invalid one deleted
    reconciler.reconcile_all()
    assert sample(registry, "katalyst_overcommit_config_ratio", config="web-old", pool="web", resource="cpu") is None
    assert sample(registry, "katalyst_overcommit_config_nodes", config="batch", pool="batch") is None
    assert sample(registry, "katalyst_overcommit_config_nodes", config="web-new", pool="web") == 2


def tide_pool(name, selector):
    return {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": name, "resourceVersion": "1", "generation": 1},
            "spec": {"nodeConfigs": {"nodeSelector": selector, "reserve": {"online": "25%", "offline": "25%"}}}}


def test_tide_nodes_per_pool_and_role():
    nodes = [node("p%d" % index, {"pool": "demo"}) for index in range(4)]
    stored = {("Node", n["metadata"]["name"]): n for n in nodes}
    pool = tide_pool("demo", {"pool": "demo"})
    stored[(tide.KIND, "demo")] = pool
    context = Context({"nodes": nodes, "pods": [], "tidenodepools": [pool]}, FakeKube(stored))
    reconciler = TideReconciler(context)
    reconciler.reconcile_all()
    roles = reconciler.last_plans["demo"].roles
    counts = {role: sample(context.registry, "katalyst_tide_pool_nodes", pool="demo", role=role)
              for role in (tide.ROLE_ONLINE_RESERVE, tide.ROLE_OFFLINE_RESERVE, tide.ROLE_TIDE_ONLINE, tide.ROLE_TIDE_OFFLINE, tide.ROLE_TIDE)}
    assert counts[tide.ROLE_ONLINE_RESERVE] == 1 and counts[tide.ROLE_OFFLINE_RESERVE] == 1
    assert sum(value or 0 for value in counts.values()) == 4
    assert all(counts[role] == list(roles.values()).count(role) for role in counts if counts[role] is not None)
    assert counts[tide.ROLE_TIDE_ONLINE] is not None and counts[tide.ROLE_TIDE_OFFLINE] is not None     # 0 rather than absent
    context.informers["tidenodepools"] = Items([])        # the pool is gone: its series too
    reconciler.reconcile_all()
    assert sample(context.registry, "katalyst_tide_pool_nodes", pool="demo", role=tide.ROLE_ONLINE_RESERVE) is None


def test_qos_cgroup_cpus_from_the_desired_cpusets():
    desired = {"cgroups": [{"path": "/sys/fs/cgroup/cpuset/kubepods/besteffort-0", "files": {
        "/sys/fs/cgroup/cpuset/kubepods/besteffort-0/cpuset.cpus": "0-3,8", "/sys/fs/cgroup/cpuset/kubepods/besteffort-0/cpuset.mems": "0"}},
        {"path": "/sys/fs/cgroup/cpu/kubepods/besteffort", "files": {"/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares": "2"}}]}
    assert agent_module.qos_cgroup_cpus(desired, {0: "/kubepods/besteffort-0", 1: "/kubepods/besteffort-1"}) == {"0": 5}


def test_reclaimed_per_numa_in_cores_and_bytes():
    reclaimed = {"numa_allocatable": {"0": {cnr.RECLAIMED_MILLICPU: "3500", cnr.RECLAIMED_MEMORY: "2Gi"}, "1": {cnr.RECLAIMED_MILLICPU: "4k"}}}
    assert agent_module.reclaimed_per_numa(reclaimed) == {("0", "cpu"): 3.5, ("0", "memory"): 2.0 * GIB, ("1", "cpu"): 4.0}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_agent_exports_qos_cgroups_memory_provision_and_reclaimed_per_numa(tmp_path, version):
    root = build_sysroot(str(tmp_path / "sysroot"), cgroup=version)      # 4 NUMA nodes of 8 CPUs and 16 GiB
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps({"node_name": "n", "sysroot": root, "port": 0, "reclaimed_cpu_shares": 4, "memory_provision_enabled": True,
                                "reclaimed_resources_period_seconds": 1, "reclaimed_window_seconds": 1}))
    agent = agent_module.Agent(str(path))
    registry = agent.daemon.registry
    agent.converge_qos_cgroups()
    for numa in ("all", "0", "1", "2", "3"):
        assert sample(registry, "katalyst_qos_cgroup_cpu_shares", qos_level="reclaimed_cores", numa=numa) == 4
    for numa in ("0", "1", "2", "3"):
        assert sample(registry, "katalyst_qos_cgroup_cpuset_cpus", qos_level="reclaimed_cores", numa=numa) == 8
    assert sample(registry, "katalyst_qos_cgroup_cpuset_cpus", qos_level="reclaimed_cores", numa="all") is None
    agent.converge_memory_provision()
    limits = agent.numa.written_limits
    for numa in range(4):
        limit = sample(registry, "katalyst_qos_cgroup_memory_limit_bytes", qos_level="reclaimed_cores", numa=str(numa))
        assert limit == limits["numa"][numa] // 4096 * 4096 and 0 < limit <= 16 * GIB
        assert sample(registry, "katalyst_memory_provision_bytes", numa=str(numa)) == limits["provisions"][numa]
        assert sample(registry, "katalyst_memory_provision_floor_bytes", numa=str(numa)) == limits["floors"][numa]
    assert sample(registry, "katalyst_qos_cgroup_memory_limit_bytes", qos_level="reclaimed_cores", numa="all") == limits["root"] // 4096 * 4096
    memory_file = ("/sys/fs/cgroup/memory/kubepods/besteffort-0/memory.limit_in_bytes" if version == "v1"
                   else "/sys/fs/cgroup/kubepods/besteffort-0/memory.max")
    assert int(agent.sysfs.read_text(memory_file)) == sample(registry, "katalyst_qos_cgroup_memory_limit_bytes", qos_level="reclaimed_cores", numa="0")
    agent.report_reclaimed_resources()
    numa_allocatable = agent.numa.last_reclaimed["numa_allocatable"]
    assert sorted(numa_allocatable) == ["0", "1", "2", "3"]
    for numa, resources in numa_allocatable.items():
        assert sample(registry, "katalyst_reclaimed_cpu_cores", numa=numa) == agent_module.reclaimed_per_numa(agent.numa.last_reclaimed)[(numa, "cpu")]
        assert sample(registry, "katalyst_reclaimed_memory_bytes", numa=numa) == float(agent_module.parse_quantity(resources[cnr.RECLAIMED_MEMORY]).amount)
    assert sum(sample(registry, "katalyst_reclaimed_memory_bytes", numa=numa) for numa in numa_allocatable) > 0
