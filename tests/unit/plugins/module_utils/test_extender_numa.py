# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The extender's NUMA plugin over a ClusterCache fed directly: verdicts, scores, per-node memos and their invalidation,
pod signatures, pessimistic accounting of pods not pinned yet, bad annotations."""

from __future__ import annotations

import json

from ansible_collections.katalyst.colocation.plugins.module_utils import placement
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ClusterCache
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
