"""katalyst-agent's realtime overcommit ratio on the CNR (cluster spec §2.6), from the pods' cgroups in a
sandbox sysroot (16 CPUs, 32 GiB) and the pods in the emulator, as a real process; capped by the node's set ratios
(katalyst ``GetOvercommitRatio``), which the overcommit controller writes from a NodeOvercommitConfig and whose
realtime copies it takes from the CNR."""

import json
import os
import subprocess
import sys

from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.overcommit_controller import OvercommitReconciler
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient
from sandbox.sysroot import build_sysroot
from tests.integration.backends import install_crds
from tests.integration.ansible_runner import REPO
from tests.integration.waiting import wait_until

NODE = "oc-node"
GROUP, VERSION, PLURAL = "node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources"
NOC_GROUP, NOC_PLURAL = "overcommit.katalyst.kubewharf.io", "nodeovercommitconfigs"
PREFIX = "katalyst.kubewharf.io/"


def test_realtime_ratio_follows_usage_capped_by_the_node_ratio_and_reports_guaranteed_cpus(kubeapi, kube_client, tmp_path):
    install_crds(kube_client)
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    sysroot = build_sysroot(str(tmp_path / "sysroot"), sockets=1, numa_per_socket=2, cores_per_numa=8, smt=1,
                            memory_per_numa_bytes=16 << 30, cgroup="v1")
    core.create_node({"metadata": {"name": NODE, "labels": {PREFIX + "overcommit_node_pool": "pool"}}})
    core.patch_node_status(NODE, {"status": {"capacity": {"cpu": "16", "memory": "32Gi"}, "allocatable": {"cpu": "16", "memory": "32Gi"}}})
    # the node's set ratios come from a NodeOvercommitConfig through the controller: cpu 2, memory 1.1
    custom.create_cluster_custom_object(NOC_GROUP, VERSION, NOC_PLURAL, {
        "apiVersion": NOC_GROUP + "/" + VERSION, "kind": "NodeOvercommitConfig", "metadata": {"name": "pool"},
        "spec": {"nodeOvercommitSelectorVal": "pool", "resourceOvercommitRatio": {"cpu": "2", "memory": "1.1"}}})
    reconciler = OvercommitReconciler.standalone(KubeClient(api_client=kube_client))
    reconciler.reconcile_all()
    assert core.read_node(NODE).metadata.annotations[PREFIX + "memory_overcommit_ratio"] == "1.1"
    # 4 CPUs / 8 GiB requested: a Burstable web pod and a Guaranteed pod with 2 whole CPUs
    web = core.create_namespaced_pod("default", {"metadata": {"name": "web"}, "spec": {"nodeName": NODE, "containers": [
        {"name": "main", "image": "x", "resources": {"requests": {"cpu": "2", "memory": "6Gi"}}}]}})
    db = core.create_namespaced_pod("default", {"metadata": {"name": "db"}, "spec": {"nodeName": NODE, "containers": [
        {"name": "main", "image": "x", "resources": {"limits": {"cpu": "2", "memory": "2Gi"}}}]}})
    paths = {}
    for pod, qos in ((web, "burstable"), (db, "")):
        core.patch_namespaced_pod_status(pod.metadata.name, "default", {"status": {"phase": "Running"}})
        relative = "/kubepods/%spod%s" % (qos + "/" if qos else "", pod.metadata.uid)
        for controller, name, value in (("cpuacct", "cpuacct.usage", "5000000000"), ("memory", "memory.stat", "total_rss %d\n" % (1 << 30))):
            os.makedirs(sysroot + "/sys/fs/cgroup/%s%s" % (controller, relative), exist_ok=True)
            with open(sysroot + "/sys/fs/cgroup/%s%s/%s" % (controller, relative, name), "w") as handle:
                handle.write(value)
        paths[pod.metadata.name] = sysroot + "/sys/fs/cgroup/cpuacct%s/cpuacct.usage" % relative
    # a pod the kubelet has not made a cgroup for yet (and that requests nothing): zero usage, the pass goes on
    starting = core.create_namespaced_pod("default", {"metadata": {"name": "starting"}, "spec": {"nodeName": NODE, "containers": [
        {"name": "main", "image": "x"}]}})
    core.patch_namespaced_pod_status(starting.metadata.name, "default", {"status": {"phase": "Running"}})
    assert not os.path.exists(sysroot + "/sys/fs/cgroup/cpuacct/kubepods/besteffort/pod%s" % starting.metadata.uid)
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"node_name": NODE, "kubeconfig": kubeapi.kubeconfig, "sysroot": sysroot, "port": 0,
                                  "qos_cgroups_enabled": False, "oom_priority_enabled": False, "realtime_overcommit_enabled": True,
                                  "realtime_overcommit_period_seconds": 0.5, "cpu_manager_policy": "static"}))
    log = open(tmp_path / "agent.log", "w+")
    agent = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent",
                              "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO))
    try:
        def annotations():
            try:
                return custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, NODE)["metadata"].get("annotations") or {}
            except client.ApiException:
                return {}

        # no CPU used (the counters stand still), 2 GiB RSS: cpu ((16000*0.6)/0.4 + 4000)/16000 = 1.75 (below the node's 2),
        # memory load max(2/8, 0.8) -> ((32*0.8 - 2)/0.8 + 8)/32 = 1.171875, capped by the node's 1.1 -> "1.10"
        wait_until(lambda: annotations().get("katalyst.kubewharf.io/cpu_overcommit_ratio") == "1.75",
                   what="the first report; log: " + open(log.name).read()[-1500:])
        found = annotations()
        assert found["katalyst.kubewharf.io/memory_overcommit_ratio"] == "1.10"
        assert found["katalyst.kubewharf.io/overcommit_cpu_manager"] == "static"
        assert found["katalyst.kubewharf.io/overcommit_memory_manager"] == "None"
        assert found["katalyst.kubewharf.io/guaranteed_cpus"] == "2"
        # the controller copies the capped values to the node's realtime annotations
        reconciler.reconcile_all()
        node_annotations = core.read_node(NODE).metadata.annotations
        assert (node_annotations[PREFIX + "realtime_cpu_overcommit_ratio"], node_annotations[PREFIX + "realtime_memory_overcommit_ratio"]) == (
            "1.75", "1.10")
        # the pool's cpu ratio goes down to 1.5: the agent's report follows the node's new bound
        custom.patch_cluster_custom_object(NOC_GROUP, VERSION, NOC_PLURAL, "pool", {"spec": {"resourceOvercommitRatio": {"cpu": "1.5", "memory": "1.1"}}})
        reconciler.reconcile_all()
        assert core.read_node(NODE).metadata.annotations[PREFIX + "cpu_overcommit_ratio"] == "1.5"
        wait_until(lambda: annotations().get("katalyst.kubewharf.io/cpu_overcommit_ratio") == "1.50", what="the report capped at 1.5")
        reconciler.reconcile_all()
        assert core.read_node(NODE).metadata.annotations[PREFIX + "realtime_cpu_overcommit_ratio"] == "1.50"
        # the web pod burns far more CPU than the node has: no room to overcommit CPU
        with open(paths["web"], "w") as handle:
            handle.write(str(5000000000 + 10 ** 15))
        wait_until(lambda: annotations().get("katalyst.kubewharf.io/cpu_overcommit_ratio") == "1.00", what="the ratio to drop")
        assert annotations()["katalyst.kubewharf.io/memory_overcommit_ratio"] == "1.10"
        assert "Traceback" not in open(log.name).read()
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()
