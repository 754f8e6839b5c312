"""The scheduler extender's grouped evaluation (NUMA decisions once per node state and pod signature, kept across
requests; the NodeOvercommitment check skipped on nodes without an overcommit ratio) answers exactly what
evaluating every node alone answers, through ``SchedulerExtender.filter`` / ``prioritize`` as kube-scheduler calls
them: a mixed cluster (shared node shapes, overcommitted nodes with a static CPU manager, a bad ratio, a node without
a CNR), pods of every kind (replicas, novel pods, reclaimed, one already on a node), bindings between requests."""

import copy
import itertools
import random

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit, placement
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ClusterCache, NodeOvercommitmentPlugin, SchedulerExtender
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender_numa import NumaPlugin
from tests.unit.plugins.module_utils.test_extender_numa_sharing import random_cluster, random_pod
from tests.unit.plugins.module_utils.test_placement import bound, cnr, pod

STATIC = {overcommit.CNR_CPU_MANAGER_KEY: overcommit.CPU_MANAGER_STATIC}
VERSIONS = itertools.count(10)


def node_object(name, annotations=None):
    return {"metadata": {"name": name, "resourceVersion": "1", "annotations": annotations or {}},
            "status": {"allocatable": {"cpu": "16", "memory": "64Gi"}, "capacity": {"cpu": "16", "memory": "64Gi"}}}


def mixed_cluster(rng, seed):
    """``random_cluster`` (nodes copied from three shapes), then some nodes overcommitted, one with a bad ratio and
    one without a CNR."""
    cache, names = random_cluster(rng, seed, nodes=24)
    for index, name in enumerate(names):
        annotations = {}
        if index % 5 == 1:
            annotations = {overcommit.RATIO_KEY["cpu"]: rng.choice(["1.5", "3"]), overcommit.ORIGINAL_ALLOCATABLE_KEY["cpu"]: "16"}
            static = copy.deepcopy(cache.cnr(name))
            static["metadata"].update(annotations=STATIC, resourceVersion="2")
            cache.on_cnr("MODIFIED", static)
        elif index % 7 == 3:
            annotations = {overcommit.RATIO_KEY["memory"]: "not-a-number"}
        cache.on_node("MODIFIED", node_object(name, annotations))
    cache.on_cnr("DELETED", cache.cnr(names[-1]))
    return cache, names


def alone(extender, pending, names):
    """The extender's answers computed node by node, with no memo and no grouping."""
    cache, numa = extender.cache, extender.plugins[1]
    pod_state = overcommit.pod_filter_state(pending)
    passing, failed, raw = [], {}, {}
    for name in names:
        node = cache.node(name)
        code, reason = overcommit.filter_node_overcommitment(pod_state, node, overcommit.node_filter_state(cache.cnr(name), cache.pods_on(name)))
        if code == overcommit.SUCCESS and numa.applies(pending):
            result = placement.filter_pod(pending, None, cache.cnr(name), cache.pods_on(name), numa.policy)
            code, reason = (overcommit.SUCCESS, "") if result["fit"] else (overcommit.UNSCHEDULABLE, result["reason"])
            if result["fit"] and placement.PodQuery(pending, numa.policy).qos != "reclaimed_cores":
                raw[name] = placement.score_pod(pending, None, cache.cnr(name), cache.pods_on(name), numa.policy, result["numas"])
        if code == overcommit.SUCCESS:
            passing.append(name)
        else:
            failed[name] = reason
    normalized = placement.normalize_scores(raw) if raw else {}
    return passing, failed, [{"host": name, "score": normalized.get(name, 0)} for name in passing]


def bind(cache, pending, name, rng):
    placed = copy.deepcopy(pending)
    placed["spec"]["nodeName"] = name
    placed["metadata"]["resourceVersion"] = str(next(VERSIONS))     # a new version each time, as the API server writes
    if rng.random() < 0.5:
        placed["metadata"]["annotations"]["katalyst.kubewharf.io/numa_bind_result"] = str(rng.randrange(4))
    cache.on_pod("ADDED", placed)


@pytest.mark.parametrize("seed", range(4))
def test_grouped_answers_equal_node_by_node_answers(seed):
    rng = random.Random(1000 + seed)
    cache, names = mixed_cluster(rng, seed)
    for policy in ("dynamic", "native"):
        extender = SchedulerExtender(cache, [NodeOvercommitmentPlugin(), NumaPlugin(policy)], error_policy="fail_node")
        template = random_pod(rng, "replica")
        pending_pods = []
        for number in range(8):
            kind = rng.choice(["replica", "novel", "reclaimed"])
            if kind == "replica":     # same signature as earlier replicas: decisions kept from earlier requests
                pending = copy.deepcopy(template)
                pending["metadata"].update(name="replica-%d-%d" % (seed, number), uid="r-%d-%d-%s" % (seed, number, policy))
            elif kind == "novel":
                pending = random_pod(rng, "novel-%d-%d-%s" % (seed, number, policy))
            else:
                pending = pod("reclaimed-%d-%d-%s" % (seed, number, policy), cpu=str(rng.choice([1, 2])), qos="reclaimed_cores",
                              memory_enhancement=None)
            pending_pods.append(pending)
            answer = extender.filter({"Pod": pending, "NodeNames": names})
            passing, failed, scores = alone(extender, pending, names)
            assert (answer["nodenames"], answer["failedNodes"]) == (passing, failed)
            assert extender.prioritize({"Pod": pending, "NodeNames": passing}) == scores
            full = extender.filter({"Pod": pending, "Nodes": {"items": [cache.node(name) for name in names]}})   # full nodes, as without nodeCacheCapable
            assert [node["metadata"]["name"] for node in full["nodes"]["items"]] == passing and full["failedNodes"] == failed
            if passing and rng.random() < 0.6:
                bind(cache, pending, rng.choice(passing), rng)      # that node's state changes for the next pods
        # a pod already on a node is decided on that node with itself counted, not by its node's state
        on_node = pending_pods[-1]
        bind(cache, on_node, names[0], rng)
        answer = extender.filter({"Pod": on_node, "NodeNames": names})
        passing, failed, scores = alone(extender, on_node, names)
        assert (answer["nodenames"], answer["failedNodes"]) == (passing, failed)
        assert extender.prioritize({"Pod": on_node, "NodeNames": passing}) == scores


def test_nodes_in_one_state_are_evaluated_once_per_pod_signature():
    rng = random.Random(7)
    cache, names = random_cluster(rng, 7, nodes=30)
    plugin = NumaPlugin()
    states = {plugin.view(name, cache)["state_key"] for name in names}
    assert len(states) < len(names)
    calls = []
    original = NumaPlugin.evaluate

    def counted(self, *args):
        calls.append(args[1]["metadata"]["name"])
        return original(self, *args)
    pending = pod("novel", cpu="2", labels={"app": "new"})
    try:
        NumaPlugin.evaluate = counted
        plugin.filter(pending, [cache.node(name) for name in names], cache)
        assert len(calls) == len(states)
        plugin.prioritize(pending, [cache.node(name) for name in names], cache)       # reads the kept decisions
        assert len(calls) == len(states)
    finally:
        NumaPlugin.evaluate = original


def test_a_pod_placed_on_a_node_is_not_decided_by_another_node_in_the_same_state():
    """Two one-NUMA nodes in the same state, each with a replica that has required NUMA anti-affinity to its own
    kind: the replica on ``a`` is asked about again (a retried pod) and fits only on ``a``, where it does not repel itself."""
    cache, anti = ClusterCache(), {placement.ANTI_AFFINITY_KEY: '{"required": [{"matchLabels": {"app": "x"}, "zone": "numa"}]}'}
    for name in ("a", "b"):
        cache.on_node("ADDED", node_object(name))
        node_cnr = cnr("SingleNUMANodeContainerLevel", numas=1)
        node_cnr["metadata"].update(name=name, resourceVersion="1")
        cache.on_cnr("ADDED", node_cnr)
        replica = bound(pod("replica-" + name, labels={"app": "x"}, annotations=anti), 0)
        replica["metadata"]["resourceVersion"] = "1"
        replica["spec"]["nodeName"] = name
        cache.on_pod("ADDED", replica)
    plugin = NumaPlugin()
    assert plugin.view("a", cache)["state_key"] == plugin.view("b", cache)["state_key"]
    retried = pod("replica-a", labels={"app": "x"}, annotations=anti)
    verdicts = plugin.filter(retried, [cache.node("b"), cache.node("a")], cache)
    assert verdicts["a"] == ("Success", "") and verdicts["b"][0] == "Unschedulable"
