"""The eviction loop's node condition and taint (daemons/agent_eviction.py): the wanted taints and condition from the
node and the conditions in force, and NodeConditions' writes (only on a change, a stale informer read as our last write,
a taint conflict read again)."""

import threading

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import eviction
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_eviction, node_conditions
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeError

ROOTFS = eviction.Condition("SystemRootfs", ("NoSchedule",))
TAINT = {"key": "node.katalyst.kubewharf.io/SystemRootfs", "effect": "NoSchedule"}
OTHER = {"key": "example.com/dedicated", "value": "batch", "effect": "NoSchedule"}
MEMORY = eviction.Condition("MemoryPressure", ("NoSchedule",))
MEMORY_TAINT = {"key": "node.katalyst.kubewharf.io/MemoryPressure", "effect": "NoSchedule"}


def test_wanted_taints_adds_the_taint_in_force_and_keeps_every_other():
    assert node_conditions.wanted_taints(None, ()) == []
    assert node_conditions.wanted_taints([OTHER], (ROOTFS,)) == [OTHER, TAINT]
    assert node_conditions.wanted_taints([TAINT, OTHER], (ROOTFS,)) == [TAINT, OTHER]          # in place: no change
    assert node_conditions.wanted_taints([OTHER, TAINT], ()) == [OTHER]
    # another effect of the managed key is not what the condition wants; a condition not managed here is left alone
    execute = dict(TAINT, effect="NoExecute")
    assert node_conditions.wanted_taints([execute], (ROOTFS,)) == [TAINT]
    other = {"key": "node.katalyst.kubewharf.io/OtherPressure", "effect": "NoSchedule"}
    assert node_conditions.wanted_taints([other], ()) == [other]
    assert node_conditions.wanted_taints([], (eviction.Condition("OtherPressure", ("NoSchedule",)),)) == []
    # MemoryPressure is managed too (the system memory plugin's)
    assert node_conditions.wanted_taints([OTHER], (MEMORY,)) == [OTHER, MEMORY_TAINT]
    assert node_conditions.wanted_taints([MEMORY_TAINT, TAINT], (ROOTFS,)) == [TAINT]


def test_wanted_condition_writes_only_a_change_of_status():
    stamp = "2026-01-01T00:00:00Z"
    assert node_conditions.wanted_condition(None, "SystemRootfs", False, "m", stamp) is None       # never had the pressure
    on = node_conditions.wanted_condition([{"type": "Ready", "status": "True"}], "SystemRootfs", True, "m", stamp)
    assert on == {"type": "SystemRootfs", "status": "True", "reason": "RootfsPressure", "message": "m",
                  "lastTransitionTime": stamp, "lastHeartbeatTime": stamp}
    assert node_conditions.wanted_condition([on], "SystemRootfs", True, "another reading", "later") is None
    off = node_conditions.wanted_condition([on], "SystemRootfs", False, "m", "later")
    assert off["status"] == "False" and off["reason"] == "NoRootfsPressure" and off["lastTransitionTime"] == "later"
    assert node_conditions.wanted_condition([off], "SystemRootfs", False, "m", "later still") is None


def test_pressure_message_names_the_thresholds_met_and_readings():
    thresholds = eviction.RootfsThresholds.from_strings(enabled=True, minimum_free="20%", minimum_inodes_free="100")
    readings = {"available": 5, "capacity": 100, "inodes_free": 7, "inodes": 1000}
    assert agent_eviction.pressure_message(readings, eviction.RootfsMet(True, False), thresholds) == (
        "available.rootfs.system<20%: 5 of 100 bytes available")
    assert agent_eviction.pressure_message(readings, eviction.RootfsMet(True, True), thresholds).endswith(
        "; free.inodes.rootfs.system<100: 7 of 1000 inodes free")


class FakeInformer:
    def __init__(self, node):
        self.node = node
        self.synced = threading.Event()
        self.synced.set()

    def get(self, name):
        return self.node if self.node["metadata"]["name"] == name else None


class FakeKube:
    """Patches applied to one Node dict, with resourceVersion checks as the API server does them."""

    def __init__(self, node):
        self.node = node
        self.calls, self.events, self.conflicts = [], [], 0

    def _bump(self):
        self.node["metadata"]["resourceVersion"] = str(int(self.node["metadata"]["resourceVersion"]) + 1)
        return {"metadata": dict(self.node["metadata"]), "spec": dict(self.node.get("spec") or {}),
                "status": {"conditions": list((self.node.get("status") or {}).get("conditions") or [])}}

    def patch(self, api_version, kind, name, patch, patch_type="merge", subresource=None):
        self.calls.append((subresource, patch_type))
        if subresource == "status":
            conditions = {c["type"]: c for c in self.node.setdefault("status", {}).get("conditions") or []}
            conditions.update({c["type"]: c for c in patch["status"]["conditions"]})
            self.node["status"]["conditions"] = list(conditions.values())
            return self._bump()
        if self.conflicts:
            self.conflicts -= 1
            self.node["metadata"]["resourceVersion"] = str(int(self.node["metadata"]["resourceVersion"]) + 1)
        if patch["metadata"]["resourceVersion"] != self.node["metadata"]["resourceVersion"]:
            raise KubeError("conflict", 409)
        self.node.setdefault("spec", {})["taints"] = patch["spec"]["taints"] or []
        return self._bump()

    def list(self, api_version, kind, field_selector=None):
        self.calls.append(("list", field_selector))
        return [dict(self.node, metadata=dict(self.node["metadata"]), spec=dict(self.node["spec"]))]

    def emit_event(self, involved, reason, message, event_type, component, host=None):
        self.events.append((reason, event_type, host))


class FakeAgent:
    def __init__(self, node):
        self.config = {"node_name": "n1"}
        self.node = FakeInformer(node)      # the informer's view: never updated here (a stale cache)
        self.kube = FakeKube(dict(node, metadata=dict(node["metadata"]), spec=dict(node["spec"])))


@pytest.fixture
def agent():
    return FakeAgent({"metadata": {"name": "n1", "resourceVersion": "10"}, "spec": {"taints": [OTHER]}, "status": {}})


def test_node_conditions_write_once_per_change_though_the_informer_lags(agent):
    conditions = node_conditions.NodeConditions(agent, transition_period=5)
    assert conditions.converge((ROOTFS,), "reading", now=0) == ["conditions", "taints"]
    assert agent.kube.node["spec"]["taints"] == [OTHER, TAINT] and agent.kube.node["status"]["conditions"][0]["status"] == "True"
    assert agent.kube.events == [("RootfsPressure", "Warning", "n1")]
    # the informer still shows the node before our writes: read as what our writes returned, nothing written again
    for now in (1, 2, 3):
        assert conditions.converge((ROOTFS,), "reading %d" % now, now=now) == []
    assert conditions.converge((), "", now=7) == []                       # within the transition period of the last met
    assert conditions.converge((), "", now=8) == ["conditions", "taints"]
    assert agent.kube.node["spec"]["taints"] == [OTHER] and agent.kube.node["status"]["conditions"][0]["status"] == "False"
    assert agent.kube.events[-1] == ("NoRootfsPressure", "Normal", "n1")
    assert conditions.converge((), "", now=9) == []
    assert len([call for call in agent.kube.calls if call[0] != "list"]) == 4


def test_a_taint_conflict_reads_the_node_again(agent):
    agent.kube.conflicts = 1
    conditions = node_conditions.NodeConditions(agent, transition_period=5)
    assert conditions.converge((ROOTFS,), "reading", now=0) == ["conditions", "taints"]
    assert ("list", "metadata.name=n1") in agent.kube.calls and agent.kube.node["spec"]["taints"] == [OTHER, TAINT]


def test_nothing_is_written_while_the_node_is_unknown(agent):
    agent.node.synced.clear()
    assert node_conditions.NodeConditions(agent, transition_period=5).converge((ROOTFS,), "reading", now=0) == []
    assert agent.kube.calls == []


def test_memory_pressure_is_a_taint_and_events_only_the_kubelet_owns_its_condition(agent):
    conditions = node_conditions.NodeConditions(agent, transition_period=5)
    assert conditions.converge((MEMORY,), {"MemoryPressure": "free 1 of 100"}, now=0) == ["taints"]
    assert agent.kube.node["spec"]["taints"] == [OTHER, MEMORY_TAINT] and not (agent.kube.node.get("status") or {}).get("conditions")
    assert agent.kube.events == [("MemoryPressure", "Warning", "n1")]
    assert conditions.converge((MEMORY,), {"MemoryPressure": "free 2 of 100"}, now=1) == []
    assert conditions.converge((), {}, now=6) == ["taints"]
    assert agent.kube.node["spec"]["taints"] == [OTHER] and agent.kube.events[-1] == ("NoMemoryPressure", "Normal", "n1")
    # both at once: SystemRootfs as a status condition and a taint, MemoryPressure as a taint
    assert conditions.converge((ROOTFS, MEMORY), {"SystemRootfs": "disk", "MemoryPressure": "memory"}, now=7) == ["conditions", "taints"]
    assert agent.kube.node["spec"]["taints"] == [OTHER, MEMORY_TAINT, TAINT]
    assert [c["type"] for c in agent.kube.node["status"]["conditions"]] == ["SystemRootfs"]


ZONEINFO = """Node 0, zone      DMA
  per-node stats
      nr_inactive_file 999
  pages free     3977
        min      3
        low      6
Node 0, zone   Normal
  pages free     5000
        boost    0
        min      100
        low      200
        high     300
        spanned  4000000
        protection: (0, 0, 0, 0)
      nr_free_pages 5000
      nr_zone_inactive_file 7000
  pagesets
    cpu: 0
              count: 10
              high:  20
Node 1, zone   Normal
  pages free     800
        min      10
        low      20
Node 2, zone   Normal
  pages free     1
"""


def test_parse_zoneinfo_takes_each_nodes_normal_zone():
    zones = agent_eviction.parse_zoneinfo(ZONEINFO)
    assert zones == {0: {"free": 5000, "min": 100, "low": 200, "inactive_file": 7000}, 1: {"free": 800, "min": 10, "low": 20}}
    assert agent_eviction.parse_zoneinfo("") == {}


def write(root, path, text):
    full = root / path.lstrip("/")
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_text(text)


def test_memory_readings_from_the_node_files(tmp_path):
    from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS  # pylint: disable=import-outside-toplevel
    write(tmp_path, "/proc/zoneinfo", ZONEINFO)
    write(tmp_path, "/proc/sys/vm/watermark_scale_factor", "150\n")
    for numa in (0, 1, 2):
        write(tmp_path, "/sys/devices/system/node/node%d/meminfo" % numa,
              "Node %d MemTotal: 1000 kB\nNode %d MemFree: 100 kB\nNode %d Inactive(file): 40 kB\n" % (numa, numa, numa))
    write(tmp_path, "/proc/meminfo", "MemTotal: 3000 kB\nMemFree: 300 kB\n")
    fs = SysFS(str(tmp_path))
    readings = agent_eviction.numa_memory_readings(fs, [0, 1, 2])
    assert readings[0] == {"zoneinfo": {"free": 5000, "min": 100, "low": 200, "inactive_file": 7000}, "free": 102400, "total": 1024000,
                           "scale_factor": 150}
    assert readings[1]["zoneinfo"] == {"free": 800, "min": 10, "low": 20, "inactive_file": 10}     # Inactive(file) of meminfo, in pages
    assert readings[2]["zoneinfo"] is None and readings[2]["free"] == 102400
    assert agent_eviction.system_memory_readings(fs) == (307200, 3072000, 150)
    assert agent_eviction.kswapd_steal(fs) is None
    write(tmp_path, "/proc/vmstat", "pgsteal_kswapd_normal 10\npgsteal_kswapd_movable 5\npgsteal_direct 100\n")
    assert agent_eviction.kswapd_steal(fs) == 15
