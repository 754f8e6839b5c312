# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""PodView: every field of a realistic pod, bad annotations with the parsers' messages, immutability, and the callers
giving the same answers for a pod and for its view."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import eviction, headroom, nodeinfo, numaids, placement, podcgroups, qos
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent_numa, agent_tunables
from ansible_collections.katalyst.colocation.plugins.module_utils.fit import pod_requests
from ansible_collections.katalyst.colocation.plugins.module_utils.podview import (
    AFFINITY_KEY, ANTI_AFFINITY_KEY, MAIN_CONTAINER_KEY, AffinityError, PodView, as_view, parse_microtopology, pod_view,
)
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
from sandbox.sysroot import build_sysroot

PREFIX = "katalyst.kubewharf.io/"
GI = 1 << 30


def db_pod(**annotations):
    """A dedicated_cores, NUMA-exclusive database pod with a sidecar and an init container, running on node n1."""
    values = {PREFIX + "qos_level": "dedicated_cores",
              PREFIX + "memory_enhancement": json.dumps({"numa_binding": "true", "numa_exclusive": "true", "oom_priority": "150"}),
              PREFIX + "cpu_enhancement": json.dumps({"cpu_burst_policy": "static", "cpu_burst_percent": "50"}),
              PREFIX + "numa_bind_result": "1",
              AFFINITY_KEY: json.dumps({"preferred": [{"matchLabels": {"app": "cache"}, "weight": 5}]}),
              ANTI_AFFINITY_KEY: json.dumps({"required": [{"matchLabels": {"app": "db"}, "zone": "socket"}]}),
              MAIN_CONTAINER_KEY: "db"}
    values.update(annotations)
    return {"metadata": {"name": "db-0", "namespace": "prod", "uid": "u-db-0", "resourceVersion": "7", "labels": {"app": "db"},
                         "annotations": {k: v for k, v in values.items() if v is not None}},
            "spec": {"nodeName": "n1",
                     "containers": [{"name": "sidecar", "resources": {"requests": {"cpu": "500m", "memory": "128Mi"},
                                                                      "limits": {"cpu": "500m", "memory": "128Mi"}}},
                                    {"name": "db", "resources": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}}],
                     "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "6", "memory": "1Gi"},
                                                                       "limits": {"cpu": "6", "memory": "1Gi"}}}],
                     "overhead": {"cpu": "100m"}},
            "status": {"phase": "Running",
                       "containerStatuses": [{"name": "db", "containerID": "containerd://abc", "state": {"running": {}}},
                                             {"name": "sidecar", "containerID": "", "state": {"waiting": {}}}]}}


def test_every_field_of_a_realistic_pod():
    view = pod_view(db_pod())
    assert (view.name, view.namespace, view.key, view.uid, view.node_name) == ("db-0", "prod", "prod/db-0", "u-db-0", "n1")
    assert view.labels == {"app": "db"} and view.phase == "Running" and not view.deleting and view.container_running
    assert view.active and view.pod_is_active
    assert view.qos_level == "dedicated_cores" and view.qos_error is None
    assert view.memory_enhancement == {"numa_binding": "true", "numa_exclusive": "true", "oom_priority": "150"}
    assert view.cpu_enhancement == {"cpu_burst_policy": "static", "cpu_burst_percent": "50"}
    assert view.numa_binding and view.numa_exclusive
    assert (view.oom_priority, view.oom_priority_problem) == (150, None)
    assert view.affinity["required"] == [] and view.affinity["preferred"][0]["weight"] == 5
    assert view.anti_affinity["required"][0]["zone"] == "socket" and view.anti_affinity["required"][0]["selector"].matches({"app": "db"})
    assert view.affinity_error is None and view.anti_affinity_error is None and view.microtopology_error is None
    assert view.bind_result == (1,) and view.bind_result_problem is None
    assert [c.name for c in view.containers] == ["sidecar", "db"] and [c.name for c in view.init_containers] == ["init"]
    assert view.main_container_name == "db" and view.main_container is view.containers[1]
    assert view.main_container.request_amounts == {"cpu": 4000, "memory": 8 * GI}
    assert view.main_container.memory_request_bytes == 8 * GI
    assert view.requests == {"cpu": 6100, "memory": 8 * GI + 128 * (1 << 20)}     # the init container's 6 CPUs win, plus overhead
    assert view.qos_class == "Guaranteed" and view.container_ids == {"db": "abc"}
    assert view.errors == ()


def test_defaults_of_a_bare_pod():
    view = pod_view({"metadata": {"name": "p"}})
    assert view.key == "default/p" and view.uid is None and view.labels == {} and view.active and view.pod_is_active
    assert view.qos_level == qos.DEFAULT_QOS_LEVEL and not view.numa_binding and not view.numa_exclusive
    assert (view.oom_priority, view.oom_priority_problem) == (qos.align_oom_priority(qos.SHARED_CORES), None)
    assert view.affinity == {"required": [], "preferred": []} == view.anti_affinity
    assert view.bind_result is None and view.main_container is None and view.main_container_name is None
    assert view.containers == () and view.requests == {} and view.qos_class == "BestEffort" and view.errors == ()


def test_annotations_priority_and_creation_time():
    pod = db_pod(**{numaids.NUMA_IDS_KEY: "0-1", eviction.MIRROR_POD_KEY: "x"})
    pod["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    pod["spec"]["priority"] = 2000000000
    view = pod_view(pod)
    assert view.annotations == pod["metadata"]["annotations"] and view.annotations is not pod["metadata"]["annotations"]
    assert (view.priority, view.created) == (2000000000, "2024-01-01T00:00:00Z")
    bare = pod_view({"metadata": {"name": "p"}})
    assert (bare.annotations, bare.priority, bare.created) == ({}, 0, None)
    for odd in (None, "7", 1.5):      # not an int: 0, as corev1helpers.PodPriority reads an unset one
        assert pod_view({"spec": {"priority": odd}}).priority == 0


@pytest.mark.parametrize("annotations, labels", [
    ({}, {}),
    ({eviction.MIRROR_POD_KEY: ""}, {}),
    ({eviction.CONFIG_SOURCE_KEY: "file"}, {}),
    ({eviction.CONFIG_SOURCE_KEY: "api"}, {}),
    ({eviction.DO_NOT_EVICT_KEY: "True"}, {}),
    ({"example.com/keep": "1"}, {}),
    ({}, {"example.com/keep": "1"}),
    ({PREFIX + "qos_level": "system_cores"}, {}),
])
def test_eviction_protections_from_a_pod_and_from_its_view(annotations, labels):
    pod = {"metadata": {"name": "p", "uid": "u", "annotations": annotations, "labels": labels}, "spec": {"priority": 5}}
    view = pod_view(pod)
    assert eviction.is_critical_pod(pod) == eviction.is_critical_pod(view)
    assert eviction.pod_priority(pod) == eviction.pod_priority(view) == 5
    for keys in ((), ("example.com/keep",)):
        assert eviction.is_evictable(pod, keys, keys) == eviction.is_evictable(view, keys, keys)
    assert eviction.make_eviction(pod, "p", "t", "r", "m", 1) == eviction.make_eviction(view, "p", "t", "r", "m", 1)


@pytest.mark.parametrize("annotations", [{}, {numaids.NUMA_IDS_KEY: "0-1"}, {numaids.NUMA_IDS_KEY: "7"}, {numaids.NUMA_NUMBER_KEY: "x"}])
def test_the_tunables_checks_from_a_pod_and_from_its_view(annotations):
    pod = db_pod(**annotations)
    view = pod_view(pod)
    assert agent_tunables.numa_problem(pod, [0, 1]) == agent_tunables.numa_problem(view, [0, 1])
    assert agent_tunables.burst_entry(pod) == agent_tunables.burst_entry(view)
    assert agent_tunables.pod_name(view) == "prod/db-0"


def test_main_container_falls_back_to_the_first_one():
    assert pod_view(db_pod(**{MAIN_CONTAINER_KEY: "missing"})).main_container_name == "sidecar"
    assert pod_view(db_pod(**{MAIN_CONTAINER_KEY: None})).main_container.name == "sidecar"


@pytest.mark.parametrize("phase, deleting, running, active, pod_is_active", [
    ("Running", False, True, True, True),
    ("Succeeded", False, False, False, False),
    ("Failed", False, True, False, False),
    ("Running", True, True, True, True),         # being deleted, a container still runs
    ("Running", True, False, True, False),       # being deleted, nothing runs any more
])
def test_activity(phase, deleting, running, active, pod_is_active):
    pod = db_pod()
    pod["status"]["phase"] = phase
    pod["status"]["containerStatuses"][0]["state"] = {"running": {}} if running else {"terminated": {}}
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    view = pod_view(pod)
    assert (view.active, view.pod_is_active) == (active, pod_is_active)
    assert headroom.pod_is_active(pod) == headroom.pod_is_active(view) == pod_is_active


def qos_error(value):
    with pytest.raises(qos.QoSError) as caught:
        qos.resolve_qos_level({PREFIX + "qos_level": value})
    return str(caught.value)


def bind_error(value):
    with pytest.raises(qos.QoSError) as caught:
        qos.parse_numa_bind_result(value)
    return str(caught.value)


def affinity_error(key, text):
    with pytest.raises(AffinityError) as caught:
        parse_microtopology({key: text}, key)
    return str(caught.value)


def test_an_invalid_qos_level_reads_as_the_default_and_says_why():
    view = pod_view(db_pod(**{PREFIX + "qos_level": "gold"}))
    assert view.qos_level == qos.DEFAULT_QOS_LEVEL and view.qos_error == qos_error("gold")
    assert not view.numa_binding and not view.numa_exclusive          # only dedicated_cores pods bind
    assert (view.oom_priority, view.oom_priority_problem) == qos.pod_oom_priority(db_pod(**{PREFIX + "qos_level": "gold"})["metadata"]["annotations"])
    assert view.oom_priority == qos.INVALID_LEVEL_OOM_PRIORITY and view.errors == (qos_error("gold"),)


@pytest.mark.parametrize("text", ['{"numa_binding": true}', "{", "[]", '{"oom_priority": "high"}'])
def test_bad_memory_enhancements_give_the_parsers_problems(text):
    pod = db_pod(**{PREFIX + "memory_enhancement": text})
    view = pod_view(pod)
    annotations = pod["metadata"]["annotations"]
    values, problems = qos.memory_enhancement(annotations)
    assert dict(view.memory_enhancement) == values and list(view.memory_enhancement_problems) == problems
    assert (view.oom_priority, view.oom_priority_problem) == qos.pod_oom_priority(annotations)
    assert view.numa_binding == (values.get("numa_binding") == "true")
    assert set(problems) <= set(view.errors)


def test_bad_cpu_enhancement_problems_are_kept():
    view = pod_view(db_pod(**{PREFIX + "cpu_enhancement": '{"cpu_burst_percent": 50}'}))
    assert view.cpu_enhancement == {} and view.cpu_enhancement_problems == tuple(qos.cpu_enhancement(
        {PREFIX + "cpu_enhancement": '{"cpu_burst_percent": 50}'})[1])
    assert view.errors == view.cpu_enhancement_problems


@pytest.mark.parametrize("text", ["one", "", "1,1", "-1"])
def test_a_bad_bind_result_is_no_result_with_the_parsers_message(text):
    pod = db_pod(**{PREFIX + "numa_bind_result": text})
    view = pod_view(pod)
    assert view.bind_result is None and view.bind_result_problem == bind_error(text) and view.errors == (bind_error(text),)
    assert placement.bind_result(pod) is None and placement.bind_result_problem(pod) == bind_error(text)


def test_a_bind_result_that_is_not_a_string():
    view = pod_view(db_pod(**{PREFIX + "numa_bind_result": 1}))
    assert view.bind_result is None and "must be a string of NUMA ids" in view.bind_result_problem


def test_bad_microtopology_annotations_keep_the_good_one():
    bad_anti = '{"required": [{"matchLabels": {"a": "b"}, "zone": "rack"}]}'
    view = pod_view(db_pod(**{ANTI_AFFINITY_KEY: bad_anti}))
    assert view.anti_affinity is None and str(view.anti_affinity_error) == affinity_error(ANTI_AFFINITY_KEY, bad_anti)
    assert view.affinity["preferred"] and view.microtopology_error is view.anti_affinity_error
    assert view.errors == (affinity_error(ANTI_AFFINITY_KEY, bad_anti),)
    both = pod_view(db_pod(**{AFFINITY_KEY: "{", ANTI_AFFINITY_KEY: bad_anti}))
    assert str(both.microtopology_error) == affinity_error(AFFINITY_KEY, "{")     # the affinity annotation is read first
    query = placement.PodQuery(db_pod(**{AFFINITY_KEY: "{"}))
    assert query.microtopology[:2] == (None, None) and str(query.microtopology[2]) == affinity_error(AFFINITY_KEY, "{")


def test_the_view_is_immutable_and_a_snapshot():
    pod = db_pod()
    view = pod_view(pod)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.qos_level = "reclaimed_cores"
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.containers[0].name = "other"
    for mapping in (view.labels, view.annotations, view.memory_enhancement, view.cpu_enhancement, view.container_ids, view.containers[0].requests,
                    view.main_container.request_amounts, view.requests):
        with pytest.raises(TypeError):
            mapping["x"] = "y"
    pod["metadata"]["labels"]["app"] = "web"
    pod["metadata"]["annotations"][PREFIX + "numa_bind_result"] = "0"
    pod["spec"]["containers"][1]["resources"]["requests"]["cpu"] = "8"
    assert view.labels == {"app": "db"} and view.bind_result == (1,) and view.containers[1].requests["cpu"] == "4"
    assert view.annotations[PREFIX + "numa_bind_result"] == "1"
    assert pod_view(pod).bind_result == (0,)      # a new read sees the change: views are not cached by pod


def test_as_view_passes_views_through():
    view = pod_view(db_pod())
    assert as_view(view) is view and isinstance(as_view(db_pod()), PodView)


def test_fit_requests_and_the_views_agree():
    for pod in (db_pod(), {"metadata": {"name": "p"}}, {"spec": {"containers": [{"resources": {"requests": {"cpu": "250m"}}}] * 3}}):
        assert pod_requests(pod) == dict(pod_view(pod).requests)


def test_cgroup_paths_from_a_pod_and_from_its_view():
    for driver in ("cgroupfs", "systemd"):
        for pod in (db_pod(), dict(db_pod(), status={"qosClass": "Burstable", "containerStatuses": [{"name": "db", "containerID": "docker://x"}]})):
            view = pod_view(pod)
            assert podcgroups.pod_cgroup_path(pod, driver) == podcgroups.pod_cgroup_path(view, driver)
            assert podcgroups.container_cgroup_paths(pod, driver) == podcgroups.container_cgroup_paths(view, driver)
            assert podcgroups.qos_class(pod) == podcgroups.qos_class(view) == view.qos_class
    assert podcgroups.pod_cgroup_path(db_pod()) == "/kubepods/podu-db-0"
    with pytest.raises(KeyError):
        podcgroups.pod_cgroup_path({"metadata": {"name": "no-uid"}})


def test_the_agents_container_dicts_are_the_same_for_pods_and_views(tmp_path):
    fs = SysFS(build_sysroot(str(tmp_path / "s"), cgroup="v1"))
    facts = nodeinfo.gather(fs)
    pods = [db_pod(), db_pod(**{PREFIX + "numa_bind_result": "x"}), db_pod(**{PREFIX + "qos_level": "reclaimed_cores"}),
            db_pod(**{PREFIX + "qos_level": "bogus"})]
    for number, pod in enumerate(pods):
        pod["metadata"]["uid"] = "u%d" % number
    views = [pod_view(p) for p in copy.deepcopy(pods)]
    assert agent_numa.container_dicts(pods, facts, fs) == agent_numa.container_dicts(views, facts, fs)
    assert agent_numa.reclaim_pool_cpus(facts, pods) == agent_numa.reclaim_pool_cpus(facts, views)
    assert agent_numa.binding_numas(pods) == agent_numa.binding_numas(views) == {1}
    assert [agent_numa.bind_result(p) for p in pods] == [agent_numa.bind_result(v) for v in views] == [[1], None, [1], [1]]
