"""The extender's NUMA plugin (memos, nodes in the same state evaluated once per request) gives exactly the
verdicts and scores of placement.filter_pod / score_pod run on every node alone, on random clusters and pods."""

import copy
import json
import random

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import placement, podview
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ClusterCache
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender_numa import NumaPlugin
from tests.unit.plugins.module_utils.test_placement import cnr, pod

LABELS = [{"app": "tf", "role": "ps"}, {"app": "tf", "role": "worker"}, {"app": "web"}, {"team": "a"}, {}]
POLICIES = ["SingleNUMANodeContainerLevel", "NumericContainerLevel", "SingleNUMANodePodLevel"]


def term(rng, kind):
    chosen = {"zone": rng.choice(["numa", "socket", "numa"])}
    if rng.random() < 0.8:
        chosen["matchLabels"] = dict(rng.choice(LABELS[:4]))
    else:
        chosen["matchExpressions"] = [{"key": "role", "operator": rng.choice(["In", "NotIn", "Exists"]), "values": ["ps"]}]
    if kind == "preferred":
        chosen["weight"] = rng.randint(1, 50)
    return chosen


def random_pod(rng, name, bound=None):
    annotations = {}
    for key in (podview.AFFINITY_KEY, podview.ANTI_AFFINITY_KEY):
        if rng.random() < 0.4:
            annotations[key] = json.dumps({k: [term(rng, k) for _n in range(rng.randint(0, 2))] for k in ("required", "preferred")})
    if bound is not None:
        annotations["katalyst.kubewharf.io/numa_bind_result"] = bound
    enhancement = rng.choice([json.dumps({"numa_binding": "true"}), json.dumps({"numa_binding": "true", "numa_exclusive": "true"}), None])
    return pod(name, cpu=str(rng.choice([1, 2, 4, 8, 12])), memory=rng.choice(["1Gi", "4Gi", "20Gi"]),
               qos=rng.choice(["dedicated_cores", "dedicated_cores", "shared_cores"]), memory_enhancement=enhancement,
               labels=dict(rng.choice(LABELS)), annotations=annotations, limits=rng.random() < 0.8)


def random_cluster(rng, case, nodes=30):
    """Nodes copied from three templates, so many share a state (what the plugin's sharing exploits)."""
    cache = ClusterCache()
    templates = []
    for index in range(3):
        template = cnr(rng.choice(POLICIES), numas=4, cpu=str(rng.choice([8, 16])))
        existing = [random_pod(rng, "t%d-%d" % (index, i), rng.choice([None, "0", "1", "2", "3"])) for i in range(rng.randint(0, 4))]
        templates.append((template, existing))
    names = []
    for number in range(nodes):
        template, existing = copy.deepcopy(rng.choice(templates))
        name = "n%d" % number
        names.append(name)
        template["metadata"].update(name=name, uid="u-%d-%s" % (case, name), resourceVersion="1")
        cache.on_node("ADDED", {"metadata": {"name": name}})
        cache.on_cnr("ADDED", template)
        for i, placed in enumerate(existing):
            placed["metadata"].update(name="%s-%s" % (placed["metadata"]["name"], name), uid="uid-%s-%d-%d" % (name, i, case),
                                      resourceVersion="1")
            placed["spec"]["nodeName"] = name
            placed["status"] = {"phase": "Running"}
            cache.on_pod("ADDED", placed)
    return cache, names


@pytest.mark.parametrize("seed", range(6))
def test_shared_evaluation_equals_evaluating_each_node_alone(seed):
    rng = random.Random(seed)
    cache, names = random_cluster(rng, seed)
    for policy in ("dynamic", "native"):
        plugin = NumaPlugin(policy)
        nodes = [cache.node(name) for name in names]
        for number in range(6):
            candidate = random_pod(rng, "pending-%d-%d" % (seed, number))
            verdicts = plugin.filter(candidate, nodes, cache)
            scores = plugin.prioritize(candidate, nodes, cache)
            if not plugin.applies(candidate):
                assert verdicts == {} and scores == {}
                continue
            expected, raw = {}, {}
            for name in names:
                alone = placement.filter_pod(candidate, None, cache.cnr(name), cache.pods_on(name), policy)
                expected[name] = ("Success", "") if alone["fit"] else ("Unschedulable", alone["reason"])
                raw[name] = placement.score_pod(candidate, None, cache.cnr(name), cache.pods_on(name), policy, alone["numas"]) \
                    if alone["fit"] else 0.0
            assert verdicts == expected
            assert scores == placement.normalize_scores(raw)
