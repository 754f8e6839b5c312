"""The eviction loop's node condition and taint (daemons/agent_eviction.py): the wanted taints and condition from the
node and the conditions in force, and NodeConditions' writes (only on a change, a stale informer read as our last write,
a taint conflict read again)."""

import threading

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import eviction
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_eviction
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeError

ROOTFS = eviction.Condition("SystemRootfs", ("NoSchedule",))
TAINT = {"key": "node.katalyst.kubewharf.io/SystemRootfs", "effect": "NoSchedule"}
OTHER = {"key": "example.com/dedicated", "value": "batch", "effect": "NoSchedule"}


def test_wanted_taints_adds_the_taint_in_force_and_keeps_every_other():
    assert agent_eviction.wanted_taints(None, ()) == []
    assert agent_eviction.wanted_taints([OTHER], (ROOTFS,)) == [OTHER, TAINT]
    assert agent_eviction.wanted_taints([TAINT, OTHER], (ROOTFS,)) == [TAINT, OTHER]          # in place: no change
    assert agent_eviction.wanted_taints([OTHER, TAINT], ()) == [OTHER]
    # another effect of the managed key is not what the condition wants; a condition not managed here is left alone
    execute = dict(TAINT, effect="NoExecute")
    assert agent_eviction.wanted_taints([execute], (ROOTFS,)) == [TAINT]
    memory = {"key": "node.katalyst.kubewharf.io/MemoryPressure", "effect": "NoSchedule"}
    assert agent_eviction.wanted_taints([memory], ()) == [memory]
    assert agent_eviction.wanted_taints([], (eviction.Condition("MemoryPressure", ("NoSchedule",)),)) == []


def test_wanted_condition_writes_only_a_change_of_status():
    stamp = "2026-01-01T00:00:00Z"
    assert agent_eviction.wanted_condition(None, "SystemRootfs", False, "m", stamp) is None       # never had the pressure
    on = agent_eviction.wanted_condition([{"type": "Ready", "status": "True"}], "SystemRootfs", True, "m", stamp)
    assert on == {"type": "SystemRootfs", "status": "True", "reason": "RootfsPressure", "message": "m",
                  "lastTransitionTime": stamp, "lastHeartbeatTime": stamp}
    assert agent_eviction.wanted_condition([on], "SystemRootfs", True, "another reading", "later") is None
    off = agent_eviction.wanted_condition([on], "SystemRootfs", False, "m", "later")
    assert off["status"] == "False" and off["reason"] == "NoRootfsPressure" and off["lastTransitionTime"] == "later"
    assert agent_eviction.wanted_condition([off], "SystemRootfs", False, "m", "later still") is None


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
    conditions = agent_eviction.NodeConditions(agent, transition_period=5)
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
    conditions = agent_eviction.NodeConditions(agent, transition_period=5)
    assert conditions.converge((ROOTFS,), "reading", now=0) == ["conditions", "taints"]
    assert ("list", "metadata.name=n1") in agent.kube.calls and agent.kube.node["spec"]["taints"] == [OTHER, TAINT]


def test_nothing_is_written_while_the_node_is_unknown(agent):
    agent.node.synced.clear()
    assert agent_eviction.NodeConditions(agent, transition_period=5).converge((ROOTFS,), "reading", now=0) == []
    assert agent.kube.calls == []
