"""katalyst.colocation.numa_info through ansible-playbook against the emulator: per-NUMA capacity, reclaimed resources,
pods and allocations of chosen nodes, from CNRs and pods read through the API."""

import json

from kubernetes import client

from tests.integration.backends import install_crds
from tests.integration.ansible_runner import run_playbook

CNR_ARGS = ("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources")
RECLAIMED_CPU = "resource.katalyst.kubewharf.io/reclaimed_millicpu"
RECLAIMED_MEMORY = "resource.katalyst.kubewharf.io/reclaimed_memory"
PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: info
      katalyst.colocation.numa_info:
        kubeconfig: "{{ kc }}"
        nodes: "{{ wanted | default(omit) }}"
        label_selector: "{{ selector | default(omit) }}"
"""


def cnr(name):
    zones = {}
    for numa in range(4):
        resources = {"cpu": "8", "memory": "16Gi", RECLAIMED_CPU: "6k", RECLAIMED_MEMORY: "14Gi"}
        zones.setdefault(str(numa // 2), []).append({"type": "Numa", "name": str(numa),
                                                     "resources": {"allocatable": resources, "capacity": dict(resources)}})
    return {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource", "metadata": {"name": name},
            "status": {"topologyPolicy": "SingleNUMANodeContainerLevel",
                       "resources": {"allocatable": {RECLAIMED_CPU: "24k", RECLAIMED_MEMORY: "56Gi", "cpu": "32"},
                                     "capacity": {RECLAIMED_CPU: "24k", RECLAIMED_MEMORY: "56Gi"}},
                       "topologyZone": [{"type": "Socket", "name": s, "children": c} for s, c in sorted(zones.items())]}}


def pod(core, name, node, numa=None, qos="dedicated_cores", cpu="4"):
    annotations = {"katalyst.kubewharf.io/qos_level": qos}
    if qos == "dedicated_cores":
        annotations["katalyst.kubewharf.io/memory_enhancement"] = json.dumps({"numa_binding": "true"})
    if numa is not None:
        annotations["katalyst.kubewharf.io/numa_bind_result"] = str(numa)
    resources = {"requests": {"cpu": cpu, "memory": "2Gi"}, "limits": {"cpu": cpu, "memory": "2Gi"}}
    core.create_namespaced_pod("default", {"metadata": {"name": name, "annotations": annotations},
                                           "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x", "resources": resources}]}})
    core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running"}})


def test_numa_view_of_chosen_nodes(kubeapi, kube_client, tmp_path):
    kc = {"kc": kubeapi.kubeconfig}
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], kc)
    assert rc != 0 and "does not serve node.katalyst.kubewharf.io/v1alpha1 CustomNodeResource" in tasks["info"]["msg"], out
    install_crds(kube_client, ["customnoderesources"])
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    for name, labels in (("n1", {"pool": "colo"}), ("n2", {"pool": "colo"}), ("n3", {})):
        core.create_node({"metadata": {"name": name, "labels": labels}})
    for name in ("n1", "n2"):
        body = cnr(name)
        custom.create_cluster_custom_object(*CNR_ARGS, dict(body, status={}))     # status goes through its subresource
        custom.patch_cluster_custom_object_status(*CNR_ARGS, name, {"status": body["status"]})
    pod(core, "ps-0", "n1", numa=0)
    pod(core, "w-0", "n1", numa=1, cpu="2")
    pod(core, "w-1", "n1", numa=1, cpu="2")
    pod(core, "web", "n1", qos="shared_cores", cpu="1")
    pod(core, "pending-pin", "n2")                 # bound, not pinned yet: counted on every NUMA node

    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check"], dict(kc, wanted=["n1", "n2", "ghost"]))
    assert rc == 0, out
    result = tasks["info"]
    assert result["changed"] is False and result["missing"] == ["ghost"]
    n1, n2 = result["nodes"]
    assert n1["name"] == "n1" and n1["cnr"] is True and n1["topology_policy"] == "SingleNUMANodeContainerLevel"
    assert n1["reclaimed"]["allocatable"] == {RECLAIMED_CPU: "24k", RECLAIMED_MEMORY: "56Gi"}
    numa = {entry["id"]: entry for entry in n1["numa"]}
    assert [numa[n]["socket"] for n in range(4)] == ["0", "0", "1", "1"]
    assert numa[0]["capacity"] == {"cpu": "8", "memory": "16Gi"}
    assert numa[0]["reclaimed"]["allocatable"] == {RECLAIMED_CPU: "6k", RECLAIMED_MEMORY: "14Gi"}
    assert numa[0]["pods"] == ["default/ps-0"] and numa[0]["allocated"] == {"cpu": "4", "memory": "2Gi"}
    assert numa[0]["available"] == {"cpu": "4", "memory": "14Gi"}
    assert numa[1]["pods"] == ["default/w-0", "default/w-1"] and numa[1]["allocated"] == {"cpu": "4", "memory": "4Gi"}
    assert numa[2]["pods"] == [] and numa[2]["available"] == {"cpu": "8", "memory": "16Gi"}
    assert [entry["allocated"] for entry in n2["numa"]] == [{"cpu": "4", "memory": "2Gi"}] * 4

    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, selector="pool=colo"))
    assert rc == 0 and [n["name"] for n in tasks["info"]["nodes"]] == ["n1", "n2"], out
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, wanted=["n3"]))
    assert rc == 0 and tasks["info"]["nodes"] == [{"name": "n3", "cnr": False, "topology_policy": "", "numa": [],
                                                   "reclaimed": {"allocatable": {}, "capacity": {}}}], out
