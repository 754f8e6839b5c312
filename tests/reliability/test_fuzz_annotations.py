"""Fuzzed pod annotations, engine level: each parser returns a value or reports a clear error naming the annotation
(never TypeError, KeyError, RecursionError...), and the engine functions that consume pods do not crash on a pod
carrying the bad annotation, the other pods' results unchanged."""

import json
import re

import pytest
from hypothesis import given, strategies as st

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo, oom, placement, podview, qos
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_numa
from ansible_collections.katalyst.colocation.plugins.module_utils.podview import AFFINITY_KEY, ANTI_AFFINITY_KEY, AffinityError
from ansible_collections.katalyst.colocation.plugins.module_utils.qos import (
    CPU_ENHANCEMENT_KEY, MEMORY_ENHANCEMENT_KEY, NUMA_BIND_RESULT_KEY, QOS_LEVEL_KEY, QoSError)

from .conftest import FUZZ, record
from .strategies import BIND_RESULTS, CPU_LISTS, ENHANCEMENTS, INT64_MAX, MICROTOPOLOGY

BINDING = json.dumps({"numa_binding": "true"})
FACTS = {"numa_nodes": [{"id": n, "socket": n // 2, "cpus": "%d-%d" % (8 * n, 8 * n + 7), "cpu_count": 8, "memory_bytes": 16 << 30}
                        for n in range(4)]}


def pod(name, qos_level="dedicated_cores", cpu="2", memory="2Gi", bound=None, **annotations):
    ann = {QOS_LEVEL_KEY: qos_level}
    if qos_level == "dedicated_cores":
        ann[MEMORY_ENHANCEMENT_KEY] = BINDING
    if bound is not None:
        ann[NUMA_BIND_RESULT_KEY] = bound
    ann.update(annotations)
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    return {"metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": name}, "annotations": ann},
            "spec": {"containers": [{"name": "main", "resources": resources}]}, "status": {"phase": "Running"}}


GOOD = [pod("db", bound="0", cpu="4"), pod("web", "shared_cores", bound="1"), pod("batch", "reclaimed_cores"),
        pod("cache", bound="2", **{MEMORY_ENHANCEMENT_KEY: json.dumps({"numa_binding": "true", "oom_priority": "150"})})]


def cnr():
    zones = [{"type": "Numa", "name": str(n), "resources": {"allocatable": {"cpu": "8", "memory": "16Gi"},
                                                            "capacity": {"cpu": "8", "memory": "16Gi"}}, "allocations": []}
             for n in range(4)]
    return {"metadata": {"name": "n1"}, "status": {"topologyPolicy": "none",
                                                   "topologyZone": [{"type": "Socket", "name": str(s), "children": zones[2 * s:2 * s + 2]}
                                                                    for s in range(2)]}}


def names_key(message, key):
    assert isinstance(message, str) and key in message, message


def parsed_or_none(parse, error, key, *args):
    """``parse(*args)``, or None when it refuses with ``error`` naming ``key`` (any other exception fails the test)."""
    try:
        return parse(*args)
    except error as exc:
        names_key(str(exc), key)
        return None


@FUZZ
@given(text=ENHANCEMENTS, key=st.sampled_from([MEMORY_ENHANCEMENT_KEY, CPU_ENHANCEMENT_KEY]))
def test_enhancement_annotations_parse_or_say_why(text, key):
    values, problems = qos.parse_enhancement({key: text}, key)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())
    for problem in problems:
        names_key(problem, key)
    record("pod annotation %s" % key.split("/")[1], "refused with a reason" if problems else "parsed")


@FUZZ
@given(text=ENHANCEMENTS)
def test_oom_priority_plan_survives_a_bad_memory_enhancement(text):
    bad = pod("bad", "shared_cores", **{MEMORY_ENHANCEMENT_KEY: text})
    priority, problem = qos.pod_oom_priority(bad["metadata"]["annotations"])
    assert isinstance(priority, int) and -100 <= priority <= 300
    user = qos.memory_enhancement(bad["metadata"]["annotations"])[0].get("oom_priority")
    if problem is None and user is not None:   # an accepted value is what Go's strconv.Atoi accepts
        assert re.fullmatch(r"[+-]?[0-9]+", user) and -INT64_MAX - 1 <= int(user) <= INT64_MAX, user
    if problem is not None:
        names_key(problem, MEMORY_ENHANCEMENT_KEY)
    good = {p["metadata"]["name"]: qos.pod_oom_priority(p["metadata"]["annotations"]) for p in GOOD}
    groups = [oom.Group(name, prio, {i + 1: {"pages": 1000 * (i + 1), "oom_score_adj": 0}}) for i, (name, (prio, _problems)) in enumerate(good.items())]
    alone, _adjustments = oom.plan_oom_score_adj(groups, 1 << 22, negative_allowed=True)
    together, adjustments = oom.plan_oom_score_adj(groups + [oom.Group("bad", priority, {99: {"pages": 500, "oom_score_adj": 0}})],
                                                   1 << 22, negative_allowed=True)
    assert {p["metadata"]["name"]: qos.pod_oom_priority(p["metadata"]["annotations"]) for p in GOOD} == good
    assert set(adjustments) == set(good) | {"bad"} and len(together.warnings) <= len(alone.warnings) + 1
    record("pod annotation memory_enhancement -> OOM priority plan", "refused with a reason" if problem else "handled")


@FUZZ
@given(text=BIND_RESULTS)
def test_numa_bind_result_parses_or_says_why_and_other_pods_keep_their_numas(text):
    numas = parsed_or_none(qos.parse_numa_bind_result, QoSError, NUMA_BIND_RESULT_KEY, text)
    if numas is not None:
        assert list(numas) == sorted(set(numas)) and all(0 <= n <= INT64_MAX for n in numas)
        assert text.isascii() and re.fullmatch(r"[0-9\s,]+", text), text
    bad = pod("bad", "shared_cores", cpu="0", memory="0", bound=text)
    assert placement.bind_result(bad) == numas
    assert [p for p, _problem in placement.bind_result_problems(GOOD + [bad])] == ([] if numas is not None else [bad])
    assert agent_numa.binding_numas(GOOD + [bad]) == agent_numa.binding_numas(GOOD) | set(numas or ())
    assert agent_numa.reclaim_pool_cpus(FACTS, GOOD + [bad]) == agent_numa.reclaim_pool_cpus(FACTS, GOOD)
    newcomer = pod("new", cpu="3")
    assert placement.choose_numa_for_pod(newcomer, FACTS, GOOD + [bad]) == placement.choose_numa_for_pod(newcomer, FACTS, GOOD)
    itself = placement.choose_numa_for_pod(pod("bad", cpu="1", bound=text), FACTS, GOOD)
    if numas is not None and len(numas) == 1 and numas[0] < 4:
        assert itself["numa"] == numas[0]
    view_with = placement.filter_pod(newcomer, None, cnr(), GOOD + [bad])
    assert view_with == placement.filter_pod(newcomer, None, cnr(), GOOD)
    record("pod annotation numa_bind_result", "refused with a reason" if numas is None else "handled")


@FUZZ
@given(text=MICROTOPOLOGY, key=st.sampled_from([AFFINITY_KEY, ANTI_AFFINITY_KEY]))
def test_microtopology_annotation_parses_or_says_why_and_other_pods_still_place(text, key):
    parsed = parsed_or_none(podview.parse_microtopology, AffinityError, key, {key: text}, key)
    if parsed is not None:
        assert set(parsed) == {"required", "preferred"}
    bad = pod("bad", cpu="0", memory="0", bound="0", **{key: text})
    newcomer = pod("new", cpu="3")
    own = placement.filter_pod(bad, None, cnr(), GOOD)
    placement.score_pod(bad, None, cnr(), GOOD)
    if parsed is None:
        assert not own["fit"] and any(key in problem for problem in own["problems"])
        with pytest.raises(AffinityError):
            placement.choose_numa_for_pod(pod("bad", cpu="1", **{key: text}), FACTS, GOOD)
    else:
        assert placement.choose_numa_for_pod(pod("bad", cpu="1", **{key: text}), FACTS, GOOD)["numa"] in (None, 0, 1, 2, 3)
    with_bad = placement.filter_pod(newcomer, None, cnr(), GOOD + [bad])
    placement.score_pod(newcomer, None, cnr(), GOOD + [bad])
    placement.choose_numa_for_pod(newcomer, FACTS, GOOD + [bad])
    if parsed is None or key == AFFINITY_KEY:   # only a valid anti-affinity of an existing pod may keep others away
        alone = placement.filter_pod(newcomer, None, cnr(), GOOD)
        assert (with_bad["fit"], with_bad["numas"]) == (alone["fit"], alone["numas"])
    record("pod annotation %s" % key.split("/")[1], "refused with a reason" if parsed is None else "handled")


@FUZZ
@given(text=CPU_LISTS)
def test_cpu_lists_parse_or_say_why(text):
    cpus = parsed_or_none(nodeinfo.parse_cpu_list, ValueError, "invalid CPU", text)
    if cpus is not None:
        assert cpus == sorted(set(cpus)) and re.fullmatch(r"[0-9,\-\s]*", text), (text, cpus)
    record("cpuset list (kernel list syntax)", "refused with a reason" if cpus is None else "parsed")
