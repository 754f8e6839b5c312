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
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender_numa import NumaPlugin, pod_signature
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


def test_plugins_failures_and_scores_equal_filter_and_prioritize():
    """What the extender reads (``failures``: the verdicts that are not Success; ``scores``, given the names) is what
    ``filter`` and ``prioritize`` answer, for every plugin and kind of pod, with and without the names."""
    rng = random.Random(7)
    cache, names = mixed_cluster(rng, 7)
    nodes = [cache.node(name) for name in names]
    plugins = [NodeOvercommitmentPlugin(), NumaPlugin("dynamic"), NumaPlugin("native")]
    for number in range(12):
        pending = random_pod(rng, "p-%d" % number) if number % 3 else pod("r-%d" % number, qos="reclaimed_cores", memory_enhancement=None)
        for plugin in plugins:
            unsuccessful = {name: verdict for name, verdict in plugin.filter(pending, nodes, cache).items() if verdict[0] != overcommit.SUCCESS}
            assert plugin.failures(pending, nodes, cache, names) == unsuccessful == plugin.failures(pending, nodes, cache)
            if isinstance(plugin, NumaPlugin):
                assert plugin.scores(pending, nodes, cache, names) == plugin.prioritize(pending, nodes, cache)
        if number % 2:
            bind(cache, pending, rng.choice(names), rng)


def _rebuilt_indexes(cache):
    """``placed_keys`` and ``ratio_nodes`` computed again from the cache's objects."""
    placed = {}
    for pods in cache.pods_by_node.values():
        for cached in pods.values():
            placed[placement.pod_key(cached)] = placed.get(placement.pod_key(cached), 0) + 1
    return placed, {name for name, node in cache.nodes.items() if overcommit.overcommit_annotated([node])[0]}


def test_cache_indexes_equal_indexes_rebuilt_after_any_events():
    """The cache's index of placed pod keys (which lets a pending pod skip the search for itself on every node) and of
    nodes with an overcommit ratio (which lets NodeOvercommitment skip reading every node) follow pods that are
    added, bound, moved, resynced, deleted (with and without a namespace, two objects of one placement key) and
    nodes that gain, change, lose a ratio or go."""
    rng = random.Random(3)
    cache, node_names = ClusterCache(), ["n%d" % index for index in range(5)]
    ratios = [{}, {overcommit.RATIO_KEY["cpu"]: "2"}, {overcommit.RATIO_KEY["memory"]: "1.5"}, {"other": "x"}]
    for step in range(600):
        if rng.random() < 0.2:
            name = rng.choice(node_names)
            cache.on_node(rng.choice(["ADDED", "MODIFIED", "MODIFIED", "DELETED"]), node_object(name, dict(rng.choice(ratios))))
        else:
            moving = pod("p%d" % rng.randrange(8), uid="u")
            if rng.random() < 0.3:
                del moving["metadata"]["namespace"]      # "default/pN" in placement, "pN" in the informer's keys
            moving["metadata"]["resourceVersion"] = rng.choice(["1", str(step)])
            node_name = rng.choice(node_names + [None])
            if node_name:
                moving["spec"]["nodeName"] = node_name
            cache.on_pod(rng.choice(["ADDED", "MODIFIED", "DELETED"]), moving)
        assert (cache.placed_keys, cache.ratio_nodes) == _rebuilt_indexes(cache)


def test_nodes_that_are_not_the_caches_objects_get_the_full_overcommit_check():
    """Full nodes in a request (not nodeCacheCapable) may differ from the cache's: a ratio only they carry is read."""
    cache, names = mixed_cluster(random.Random(5), 5)
    plugin, pending = NodeOvercommitmentPlugin(), pod("big", cpu="4")
    plain = [name for name in names if name not in cache.ratio_nodes and cache.cnr(name) is not None]
    assert plugin.failures(pending, [cache.node(name) for name in plain], cache, plain) == {}
    sent = [node_object(name, {overcommit.RATIO_KEY["memory"]: "not-a-number"}) for name in plain]
    assert cache.ratio_free(sent, plain) is None
    expected = {name: overcommit.filter_node_overcommitment(overcommit.pod_filter_state(pending), node, plugin.node_states([name], cache)[0])
                for name, node in zip(plain, sent)}
    assert expected and all(verdict[0] == overcommit.ERROR for verdict in expected.values())
    assert plugin.failures(pending, sent, cache, plain) == expected == plugin.filter(pending, sent, cache)


def test_a_state_key_that_no_longer_matches_its_node_is_read_again_from_the_views():
    """A node that changes between the read of the nodes' state keys and of a view (an informer event in between)
    is not evaluated under the old key: the request reads every view again, as one snapshot."""
    rng = random.Random(11)
    cache, names = mixed_cluster(rng, 11)
    plugin, pending = NumaPlugin(), random_pod(rng, "pending")
    nodes = [cache.node(name) for name in names]
    expected = plugin.filter(pending, nodes, cache)
    fresh, stale_state = NumaPlugin(), "a state key of an earlier view"
    fresh.views(names, cache)
    cache.kept[fresh.state_key] = dict.fromkeys(names, stale_state)
    assert fresh.filter(pending, nodes, cache) == expected
    assert stale_state not in fresh.states[pod_signature(pending)]


class FixedScores:
    """A plugin whose prioritize answers fixed scores (floats, and a node that was not asked about)."""

    name = "Fixed"

    def __init__(self, scores):
        self.fixed = scores

    def filter(self, pod_object, nodes, cache):
        del pod_object, nodes, cache
        return {}

    def prioritize(self, pod_object, nodes, cache):
        del pod_object, nodes, cache
        return dict(self.fixed)


def test_prioritize_adds_the_integer_part_of_each_plugins_score_on_the_nodes_asked_about():
    rng = random.Random(9)
    cache, names = mixed_cluster(rng, 9)
    numa = NumaPlugin()
    pending = random_pod(rng, "pending")
    first = {name: rng.choice([0, 1.9, 3, 7.5]) for name in names if rng.random() < 0.7}
    second = dict({name: rng.choice([2, 4.2]) for name in names[::3]}, elsewhere=9)
    extender = SchedulerExtender(cache, [FixedScores(first), NodeOvercommitmentPlugin(), numa, FixedScores(second)])
    expected = dict.fromkeys(names, 0)
    for found in (first, numa.prioritize(pending, [cache.node(name) for name in names], cache), second):
        for name, score in found.items():
            if name in expected:
                expected[name] += int(score)
    assert extender.prioritize({"Pod": pending, "NodeNames": names}) == [{"host": name, "score": score} for name, score in expected.items()]
    assert any(score for score in expected.values())
