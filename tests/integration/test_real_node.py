"""The real kubelet node (sandbox/kube/node.py): real pods with real processes in the kubelet's cgroup tree, logs and
exec through the apiserver, and a `down` that leaves the host as it found it.

Images are the locally built ones (sandbox/kube/images.py); `imagePullPolicy: Never`, since no registry is reachable.
"""

import time

import pytest

from sandbox.kube import images, node as kube_node
from tests.integration import realnode
from tests.integration.realcluster import kubectl, wait_for

kubernetes = pytest.importorskip("kubernetes")

pytestmark = realnode.marks
NAMESPACE = "default"


def workload_pod(name, command, annotations=None, resources=None, node=realnode.NODE_NAME):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations or {}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": images.WORKLOAD_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command], "resources": resources or {}}]}}


def core(real_node):
    return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(real_node.kubeconfig))


def wait_running(api, name, timeout=180):
    def running():
        pod = api.read_namespaced_pod(name, NAMESPACE)
        return pod if pod.status.phase == "Running" and all(c.ready for c in pod.status.container_statuses or [None]) else None
    return wait_for("pod %s Running" % name, running, timeout=timeout)


def container_pids(pod):
    """Host pids of the pod's containers (realnode.pod_pids: the kubelet's memory cgroup tree)."""
    return realnode.pod_pids(pod.metadata.uid)


def delete_pod(api, name):
    api.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
    wait_for("pod %s gone" % name, lambda: name not in [p.metadata.name for p in api.list_namespaced_pod(NAMESPACE).items])


def test_a_pod_runs_as_real_processes_in_the_kubelets_cgroups(real_node):
    api = core(real_node)
    started = time.monotonic()
    api.create_namespaced_pod(NAMESPACE, workload_pod("hello", "echo hello from $(hostname); exec katalyst-workload grow-memory --mib 16 --hold",
                                                      resources={"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}))
    pod = wait_running(api, "hello")
    print("pod created -> Running on the real node: %.2fs" % (time.monotonic() - started))
    assert pod.status.pod_ip.startswith("10.244.0."), "a CNI bridge address: %s" % pod.status.pod_ip

    pids = wait_for("the pod's processes in its cgroup", lambda: container_pids(pod))
    for pid in pids:
        with open("/proc/%d/cgroup" % pid, encoding="utf-8") as handle:
            memory = [line for line in handle if ":memory:" in line][0]
        assert "%s/kubepods/burstable/pod%s/" % (kube_node.CGROUP_ROOT, pod.metadata.uid) in memory
    limit = "/sys/fs/cgroup/memory%s/kubepods/burstable/pod%s/memory.limit_in_bytes" % (kube_node.CGROUP_ROOT, pod.metadata.uid)
    with open(limit, encoding="utf-8") as handle:
        assert int(handle.read()) == 64 * 1024 * 1024, "the kubelet set the pod's memory limit"

    # logs and exec go apiserver -> kubelet (client certificate both ways)
    def grown_log():
        out = kubectl(real_node.kubeconfig, "logs", "hello").stdout
        return "done allocated_mib=16" in out and out
    logs = wait_for("the pod's log", grown_log)
    assert "hello from hello" in logs
    assert kubectl(real_node.kubeconfig, "exec", "hello", "--", "cat", "/proc/1/oom_score_adj").stdout.strip().isdigit()
    delete_pod(api, "hello")


def test_down_leaves_the_host_as_found_and_up_comes_back(real_node):
    api = core(real_node)
    api.create_namespaced_pod(NAMESPACE, workload_pod("survivor", "exec sleep 100000"))
    wait_running(api, "survivor")
    real_node.down()
    after = realnode.host_snapshot(real_node.state)
    for key, before in real_node.host_before.items():
        assert after[key] == before, "%s differ after down:\nbefore %s\nafter  %s" % (key, before, after[key])

    started = time.monotonic()
    real_node.up()
    # the Pod object outlived its containers: the kubelet starts it again
    wait_running(api, "survivor")
    print("node up again with a pod to restart: %.1fs" % (time.monotonic() - started))
    delete_pod(api, "survivor")
