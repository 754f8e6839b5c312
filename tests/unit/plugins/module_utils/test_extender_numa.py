# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The extender's NUMA plugin over a ClusterCache fed directly: verdicts, scores, per-node memos and their invalidation,
pod signatures, pessimistic accounting of pods not pinned yet, bad annotations."""

from __future__ import annotations

import json

from ansible_collections.katalyst.colocation.plugins.module_utils import placement, podview
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ClusterCache, SchedulerExtender
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender_numa import NumaPlugin, pod_signature

BINDING = json.dumps({"numa_binding": "true"})
ANTI = "katalyst.kubewharf.io/microtopology_antiaffinity"


def pod(name, labels=None, numa=None, node=None, cpu="4", anti=None, qos="dedicated_cores", rv="1"):
    annotations = {"katalyst.kubewharf.io/qos_level": qos}
    if qos == "dedicated_cores":
        annotations["katalyst.kubewharf.io/memory_enhancement"] = BINDING
    if numa is not None:
        annotations["katalyst.kubewharf.io/numa_bind_result"] = str(numa)
    if anti is not None:
        annotations[ANTI] = anti
    spec = {"containers": [{"name": "main", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}, "limits": {"cpu": cpu, "memory": "1Gi"}}}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": "default", "uid": "u-" + name, "resourceVersion": rv, "labels": labels or {},
                         "annotations": annotations}, "spec": spec, "status": {"phase": "Running"}}


def cnr(name, rv="1", numas=2):
    zones = [{"type": "Numa", "name": str(n), "resources": {"allocatable": {"cpu": "8", "memory": "16Gi"}}} for n in range(numas)]
    return {"metadata": {"name": name, "uid": "c-" + name, "resourceVersion": rv},
            "status": {"topologyPolicy": "SingleNUMANodeContainerLevel", "topologyZone": [{"type": "Socket", "name": "0", "children": zones}]}}


def node(name):
    return {"metadata": {"name": name}}


def cluster(*names):
    cache = ClusterCache()
    for name in names:
        cache.on_node("ADDED", node(name))
        cache.on_cnr("ADDED", cnr(name))
    return cache


def test_pods_without_numa_rules_skip_every_node():
    plugin, cache = NumaPlugin(), cluster("a")
    shared = pod("web", qos="shared_cores")
    assert plugin.filter(shared, [node("a")], cache) == {} and plugin.prioritize(shared, [node("a")], cache) == {}
    assert plugin.stats["views_built"] == 0


def test_anti_affinity_and_numa_fit_with_scores():
    plugin, cache = NumaPlugin(), cluster("a", "b")
    anti_workers = json.dumps({"required": [{"matchLabels": {"role": "worker"}}]})
    cache.on_pod("ADDED", pod("ps-a0", {"role": "ps"}, numa=0, node="a", anti=anti_workers))
    cache.on_pod("ADDED", pod("ps-a1", {"role": "ps"}, numa=1, node="a", anti=anti_workers))
    cache.on_pod("ADDED", pod("w-b", {"role": "worker"}, numa=0, node="b"))
    worker = pod("w", {"role": "worker"})
    verdicts = plugin.filter(worker, [node("a"), node("b")], cache)
    assert verdicts["a"] == ("Unschedulable", placement.UNSCHEDULABLE_AFFINITY) and verdicts["b"] == ("Success", "")
    big = pod("big", {"role": "other"}, cpu="6")
    cache.on_pod("ADDED", pod("w-b1", {"role": "worker"}, numa=1, node="b", cpu="4"))
    assert plugin.filter(big, [node("b")], cache)["b"][0] == "Unschedulable"      # 8 - 4 = 4 free per NUMA
    small = pod("small", {"role": "other"}, cpu="2")
    cache.on_pod("ADDED", pod("w-b2", {"role": "worker"}, numa=0, node="b", cpu="2"))
    cache.on_pod("ADDED", pod("w-b3", {"role": "worker"}, numa=1, node="b", cpu="2"))
    scores = plugin.prioritize(small, [node("a"), node("b")], cache)
    assert scores == {"a": 10, "b": 0}          # least allocated NUMA: 4 of 8 CPUs free on a, 2 on b


def test_memos_are_shared_by_replicas_and_invalidated_by_node_changes():
    plugin, cache = NumaPlugin(), cluster("a", "b")
    first, replica = pod("w-1", {"role": "worker"}), pod("w-2", {"role": "worker"})
    assert pod_signature(first) == pod_signature(replica) != pod_signature(pod("w-3", {"role": "worker", "job": "x"}))
    plugin.filter(first, [node("a"), node("b")], cache)
    plugin.prioritize(first, [node("a"), node("b")], cache)
    assert plugin.stats["views_built"] == 2
    calls = []
    original = placement.filter_pod
    try:
        placement.filter_pod = lambda *args, **kwargs: calls.append(args[0]) or original(*args, **kwargs)
        plugin.filter(replica, [node("a"), node("b")], cache)
        assert calls == []                                       # shared verdicts
        cache.on_pod("ADDED", pod("w-1", {"role": "worker"}, node="a"))      # bound to a (not pinned yet)
        cache.on_cnr("SYNC", cnr("b"))                           # a resync of b: same version, nothing forgotten
        plugin.filter(replica, [node("a"), node("b")], cache)
        assert len(calls) == 1 and plugin.stats["views_built"] == 3
    finally:
        placement.filter_pod = original
    # the bound pod has no numa_bind_result yet: counted on every NUMA of a (4 of 8 CPUs each), so a 6-CPU pod
    # no longer fits a while the agent has not pinned it
    assert plugin.filter(pod("six", {"role": "x"}, cpu="6"), [node("a"), node("b")], cache) == {
        "a": ("Unschedulable", "cannot align container main"), "b": ("Success", "")}
    cache.on_pod("MODIFIED", pod("w-1", {"role": "worker"}, node="a", numa=0, rv="2"))
    assert plugin.filter(pod("six", {"role": "x"}, cpu="6"), [node("a")], cache) == {"a": ("Success", "")}


def test_bad_annotation_is_unschedulable_and_reported_once(caplog):
    plugin, cache = NumaPlugin(), cluster("a")
    bad = pod("bad", anti="{not json")
    verdicts = plugin.filter(bad, [node("a")], cache)
    assert verdicts["a"][0] == "Unschedulable" and "not valid JSON" in verdicts["a"][1]
    plugin.filter(bad, [node("a")], cache)
    assert len([r for r in caplog.records if "not valid JSON" in r.getMessage()]) == 1


def test_native_policy_and_unknown_policy():
    plugin, cache = NumaPlugin("native"), cluster("a")
    guaranteed = pod("g", qos="shared_cores", cpu="10")
    assert plugin.filter(guaranteed, [node("a")], cache) == {"a": ("Unschedulable", "cannot align container main")}
    try:
        NumaPlugin("best")
    except ValueError as exc:
        assert "dynamic or native" in str(exc)
    else:
        raise AssertionError("an unknown policy must be refused")


class EventRecorder:
    """Stands in for KubeClient.emit_event."""

    def __init__(self):
        self.events = []

    def emit_event(self, involved, reason, message, event_type="Normal", component=""):
        self.events.append((involved["metadata"]["name"], reason, message, event_type, component))


GPU = "nvidia.com/gpu"


def gpu_pod(name, gpus="1"):
    p = pod(name, {"role": "gpu"})
    for field in ("requests", "limits"):
        p["spec"]["containers"][0]["resources"][field][GPU] = gpus
    return p


def test_aligned_resources_are_a_plugin_setting_with_their_own_verdicts():
    cache = cluster("plain")
    gpu_cnr = cnr("gpu")
    gpu_cnr["status"]["topologyZone"][0]["children"][1]["resources"]["allocatable"][GPU] = "2"
    cache.on_node("ADDED", node("gpu"))
    cache.on_cnr("ADDED", gpu_cnr)
    default, aligned = NumaPlugin(), NumaPlugin("dynamic", ["cpu", "memory", GPU])
    assert aligned.aligned_resources == frozenset(("cpu", "memory", GPU)) and default.aligned_resources == placement.DEFAULT_ALIGNED_RESOURCES
    nodes = [node("plain"), node("gpu")]
    assert default.filter(gpu_pod("g"), nodes, cache) == {"plain": ("Success", ""), "gpu": ("Success", "")}
    assert aligned.filter(gpu_pod("g"), nodes, cache) == {
        "plain": ("Unschedulable", "cannot align container main: no NUMA zone of the node reports nvidia.com/gpu"), "gpu": ("Success", "")}
    assert aligned.filter(gpu_pod("g3", "3"), nodes, cache)["gpu"] == ("Unschedulable", "cannot align container main")
    assert aligned.prioritize(gpu_pod("g"), nodes, cache) == {"plain": 0, "gpu": 10}       # a refused node scores lowest
    # both plugins read the same parsed node views; their verdicts are kept apart
    assert default.stats["views_built"] == 2 and aligned.stats["views_built"] == 0
    assert default.filter(gpu_pod("g"), nodes, cache)["plain"] == ("Success", "")
    for bad in (["nvidia.com/"], "cpu"):
        try:
            NumaPlugin("dynamic", bad)
        except ValueError as exc:
            assert "aligned resources" in str(exc)
        else:
            raise AssertionError("%r was accepted" % (bad,))


def test_extender_daemon_refuses_a_bad_aligned_resources_setting():
    from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import DEFAULTS, ExtenderDaemon
    assert DEFAULTS["numa_aligned_resources"] == ["cpu", "memory"]
    try:
        ExtenderDaemon({"plugins": ["NUMA"], "numa_aligned_resources": ["cpu", "gpu card"]}, cache=ClusterCache())
    except ValueError as exc:
        assert str(exc).startswith("numa_aligned_resources: aligned resources: 'gpu card'")
    else:
        raise AssertionError("a bad resource name was accepted")
    daemon = ExtenderDaemon({"plugins": ["NUMA"], "numa_aligned_resources": ["cpu", "memory", GPU], "json_logs": False}, cache=ClusterCache())
    assert daemon.extender.plugins[0].aligned_resources == frozenset(("cpu", "memory", GPU))


def test_malformed_bind_result_is_reported_once_per_value_and_the_rest_goes_on(caplog):
    plugin, cache = NumaPlugin(), cluster("a", "b")
    plugin.kube = EventRecorder()
    cache.on_pod("ADDED", pod("broken", {"role": "db"}, numa="one", node="a", cpu="6"))
    cache.on_pod("ADDED", pod("fine", {"role": "db"}, numa=1, node="b", cpu="6"))
    worker = pod("w", {"role": "worker"}, cpu="4")
    # the broken pod counts as not pinned yet: 6 CPUs on both NUMA nodes of a
    verdicts = plugin.filter(worker, [node("a"), node("b")], cache)
    assert verdicts == {"a": ("Unschedulable", "cannot align container main"), "b": ("Success", "")}
    cache.on_pod("ADDED", pod("other", {"role": "x"}, numa=0, node="a", cpu="1"))       # a's view is built again
    plugin.filter(pod("w2", {"role": "worker", "n": "2"}, cpu="1"), [node("a"), node("b")], cache)
    problem = "katalyst.kubewharf.io/numa_bind_result='one' is not a NUMA id or a comma-separated list of NUMA ids"
    assert plugin.kube.events == [("broken", "InvalidNUMABindResult", problem, "Warning", "katalyst-scheduler-extender")]
    assert len([r for r in caplog.records if "default/broken" in r.getMessage() and "'one'" in r.getMessage()]) == 1
    cache.on_pod("MODIFIED", pod("broken", {"role": "db"}, numa="1,1", node="a", cpu="6", rv="2"))      # a new bad value
    plugin.filter(worker, [node("a")], cache)
    assert [e[2] for e in plugin.kube.events][1:] == ["katalyst.kubewharf.io/numa_bind_result='1,1' names a NUMA id twice"]


def test_exclusive_pod_with_required_affinity_is_unschedulable_with_an_event_once():
    # Katalyst's PreFilter fails with an error; we answer Unschedulable on every node and say why once (an Event)
    plugin, cache = NumaPlugin(), cluster("a", "b")
    plugin.kube = EventRecorder()
    exclusive = pod("x", {"role": "db"})
    exclusive["metadata"]["annotations"].update({
        "katalyst.kubewharf.io/memory_enhancement": json.dumps({"numa_binding": "true", "numa_exclusive": "true"}),
        podview.AFFINITY_KEY: json.dumps({"required": [{"matchLabels": {"role": "db"}}]})})
    reason = "a numa_exclusive pod cannot have required microtopology affinity"
    for _attempt in range(2):
        assert plugin.filter(exclusive, [node("a"), node("b")], cache) == {"a": ("Unschedulable", reason), "b": ("Unschedulable", reason)}
    assert plugin.kube.events == [("x", "InvalidMicrotopology", "default/x: numa_exclusive with required microtopology affinity", "Warning",
                                   "katalyst-scheduler-extender")]


def test_kube_schedulers_field_names_are_read_as_go_reads_them():
    """kube-scheduler sends ExtenderArgs with Go's field names (`Pod`, `NodeNames`: the struct has no json tags); the
    real kube-scheduler's first call with a node cache filtered every node out while the extender read only `pod`."""
    extender = SchedulerExtender(cluster("a", "b"), [NumaPlugin()])
    wanted = pod("db", cpu="4")
    result = extender.filter({"Pod": wanted, "Nodes": None, "NodeNames": ["a", "b"]})
    assert result["nodenames"] == ["a", "b"] and result["failedNodes"] == {}
    assert result == extender.filter({"pod": wanted, "nodenames": ["a", "b"]})
    assert {entry["host"] for entry in extender.prioritize({"Pod": wanted, "Nodes": None, "NodeNames": ["a", "b"]})} == {"a", "b"}
