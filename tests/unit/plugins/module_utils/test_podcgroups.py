import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import podcgroups


def pod(requests=None, limits=None, uid="1234-ab", cid="containerd://c0ffee"):
    resources = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"metadata": {"uid": uid}, "spec": {"containers": [{"name": "main", "resources": resources}]},
            "status": {"containerStatuses": [{"name": "main", "containerID": cid}]}}


@pytest.mark.parametrize("requests, limits, klass", [
    (None, None, "BestEffort"),
    ({"cpu": "1"}, None, "Burstable"),
    ({"cpu": "1", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"}, "Guaranteed"),
    (None, {"cpu": "1", "memory": "1Gi"}, "Guaranteed"),
    ({"cpu": "500m", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"}, "Burstable"),
])
def test_qos_class(requests, limits, klass):
    assert podcgroups.qos_class(pod(requests, limits)) == klass


def test_cgroupfs_and_systemd_paths():
    burstable = pod({"cpu": "1"})
    assert podcgroups.container_cgroup_paths(burstable) == {"main": "/kubepods/burstable/pod1234-ab/c0ffee"}
    assert podcgroups.container_cgroup_paths(burstable, "systemd") == {
        "main": "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_ab.slice/cri-containerd-c0ffee.scope"}
    guaranteed = pod(None, {"cpu": "1", "memory": "1Gi"})
    assert podcgroups.pod_cgroup_path(guaranteed) == "/kubepods/pod1234-ab"
    assert podcgroups.pod_cgroup_path(guaranteed, "systemd") == "/kubepods.slice/kubepods-pod1234_ab.slice"
    assert podcgroups.container_cgroup_paths(pod(cid="")) == {}
