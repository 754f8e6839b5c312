"""katalyst.colocation.overcommit_config through ansible-playbook against the emulator: check mode + diff per node,
the converge pass, idempotence, the decrease guard, strict ratio validation, absent."""

from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit
from tests.integration.backends import get_cluster_object, install_crds
from tests.integration.ansible_runner import run_playbook

PREFIX = "katalyst.kubewharf.io/"
PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: noc
      katalyst.colocation.overcommit_config:
        kubeconfig: "{{ kc }}"
        name: web
        state: "{{ st | default('present') }}"
        selector_value: "{{ pool | default('web') }}"
        cpu_ratio: "{{ cpu | default(omit) }}"
        memory_ratio: "{{ memory | default(omit) }}"
        force: "{{ force | default(false) }}"
"""


def setup_cluster(kube_client):
    install_crds(kube_client)
    core = client.CoreV1Api(kube_client)
    for name, labels in (("n1", {overcommit.POOL_LABEL: "web"}), ("n2", {overcommit.POOL_LABEL: "web"}), ("n3", {})):
        # the kubelet's values as the webhook records them (the controller computes overcommit_* from these)
        originals = {PREFIX + "original_%s_%s" % (field, resource): amount for field in ("allocatable", "capacity")
                     for resource, amount in (("cpu", "8"), ("memory", "16Gi"))}
        core.create_node({"metadata": {"name": name, "labels": labels, "annotations": originals}})
        core.patch_node_status(name, {"status": {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                                                 "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}})
    return core


def annotations(core, name):
    return core.read_node(name).metadata.annotations or {}


def get_noc(kube_client):
    return get_cluster_object(kube_client, "overcommit.katalyst.kubewharf.io", "nodeovercommitconfigs", "web")


def test_check_mode_diff_apply_idempotent_guard_and_absent(kubeapi, kube_client, tmp_path):
    core = setup_cluster(kube_client)
    kc = {"kc": kubeapi.kubeconfig}

    # check mode + diff: which nodes get which ratio, nothing written
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check", "--diff"], dict(kc, cpu="2", memory="1.5"))
    assert rc == 0, out[-3000:]
    result = tasks["noc"]
    assert result["changed"] is True
    after = result["diff"]["after"]
    assert after["Node/n1"]["cpu_overcommit_ratio"] == "2" and after["Node/n1"]["overcommit_allocatable_cpu"] == "16"
    assert after["Node/n2"]["memory_overcommit_ratio"] == "1.5" and after["Node/n2"]["overcommit_capacity_memory"] == "24Gi"
    assert after["NodeOvercommitConfig/web"] == {"spec": {"nodeOvercommitSelectorVal": "web", "resourceOvercommitRatio": {"cpu": "2", "memory": "1.5"}}}
    assert after["Node/n3"]["cpu_overcommit_ratio"] == "1"          # unlabelled: annotated with ratio 1 as katalyst does
    assert result["plan"]["nodes"]["n1"]["config"] == "web" and result["plan"]["nodes"]["n3"]["config"] is None
    assert get_noc(kube_client) is None and PREFIX + "cpu_overcommit_ratio" not in annotations(core, "n1")

    # apply: the config and one controller pass
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, cpu="2", memory="1.5"))
    assert rc == 0 and tasks["noc"]["changed"] is True, out[-3000:]
    noc = get_noc(kube_client)
    assert noc["spec"]["resourceOvercommitRatio"] == {"cpu": "2", "memory": "1.5"}
    assert noc["status"]["matchedNodeList"] == ["n1", "n2"]
    assert annotations(core, "n1")[PREFIX + "overcommit_allocatable_cpu"] == "16"
    assert annotations(core, "n3")[PREFIX + "cpu_overcommit_ratio"] == "1"

    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--diff"], dict(kc, cpu="2", memory="1.5"))
    assert rc == 0 and tasks["noc"]["changed"] is False, out[-3000:]
    assert tasks["noc"]["plan"]["nodes"] == {}

    # the guard: n1's pods request 12 cpus; 1.25 x 8 = 10 would put them over, so n1 keeps 2, n2 gets 1.25
    core.create_namespaced_pod("default", {"metadata": {"name": "big"}, "spec": {"nodeName": "n1", "containers": [
        {"name": "app", "image": "app", "resources": {"requests": {"cpu": "12"}}}]}})
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check", "--diff"], dict(kc, cpu="1.25", memory="1.5"))
    assert rc == 0, out[-3000:]
    result = tasks["noc"]
    assert result["plan"]["refused"] == {"n1": {"cpu": "cpu allocatable would be 10, below the 12 requested"}}
    assert result["diff"]["after"]["Node/n1"]["refused"] == {"cpu": "cpu allocatable would be 10, below the 12 requested"}
    assert result["diff"]["after"]["Node/n2"]["overcommit_allocatable_cpu"] == "10"
    assert result["diff"]["after"]["Node/n1"]["cpu_overcommit_ratio"] == "2"              # refused: keeps its ratio
    assert any("below the 12 requested" in warning for warning in result.get("warnings", []))
    assert annotations(core, "n2")[PREFIX + "cpu_overcommit_ratio"] == "2"          # check mode wrote nothing

    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, cpu="1.25", memory="1.5"))
    assert rc == 0, out[-3000:]
    assert annotations(core, "n1")[PREFIX + "cpu_overcommit_ratio"] == "2"
    assert annotations(core, "n2")[PREFIX + "cpu_overcommit_ratio"] == "1.25"
    refused = {c["type"]: c for c in get_noc(kube_client)["status"]["conditions"]}["DecreaseRefused"]
    assert refused["status"] == "True"
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, cpu="1.25", memory="1.5", force=True))
    assert rc == 0, out[-3000:]
    assert annotations(core, "n1")[PREFIX + "cpu_overcommit_ratio"] == "1.25"

    # strict validation: nothing is written for a bad ratio
    for bad, message in (("0.5", "below 1"), ("lots", "not a number"), ("11", "above the maximum"), ("NaN", "not a finite number")):
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, cpu=bad))
        assert rc != 0 and message in tasks["noc"]["msg"], (bad, out[-2000:])
    assert get_noc(kube_client)["spec"]["resourceOvercommitRatio"]["cpu"] == "1.25"

    # absent: the config goes, its nodes return to ratio 1; a second run changes nothing
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--diff"], dict(kc, st="absent"))
    assert rc == 0 and tasks["noc"]["changed"] is True, out[-3000:]
    assert get_noc(kube_client) is None
    assert annotations(core, "n1")[PREFIX + "cpu_overcommit_ratio"] == "1"
    assert PREFIX + "overcommit_allocatable_cpu" in annotations(core, "n1")
    assert tasks["noc"]["diff"]["after"]["Node/n2"]["cpu_overcommit_ratio"] == "1"
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, st="absent"))
    assert rc == 0 and tasks["noc"]["changed"] is False, out[-3000:]
