"""katalyst.colocation.node_cleanup through ansible-playbook: the collection's labels, annotations and taints go from
the Node, and the status conditions the agent's eviction loop wrote (a strategic merge patch of nodes/status); the
kubelet's conditions and the user's keys stay. --check --diff shows it all and writes nothing; a second run changes
nothing."""

from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from tests.integration.ansible_runner import run_playbook

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: cleanup
      katalyst.colocation.node_cleanup:
        kubeconfig: "{{ kc }}"
        nodes: [cleanup-node]
"""
USER_TAINT = {"key": "example.com/dedicated", "value": "batch", "effect": "NoSchedule"}
AGENT_CONDITION = {"type": "SystemRootfs", "status": "True", "reason": "RootfsPressure", "message": "rootfs 95% used",
                   "lastTransitionTime": "2026-01-01T00:00:00Z", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}
KUBELET_CONDITION = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                     "lastTransitionTime": "2026-01-01T00:00:00Z", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}


def node_view(core):
    node = core.read_node("cleanup-node")
    return {"labels": node.metadata.labels or {}, "taints": [taint.to_dict() for taint in node.spec.taints or []],
            "conditions": sorted(condition.type for condition in node.status.conditions or [])}


def test_node_cleanup_removes_the_agents_conditions_with_check_and_diff(kubeapi, kube_client, tmp_path):
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": "cleanup-node", "labels": {"example.com/zone": "a", tide.LABEL_TIDE: "true"}},
                      "spec": {"taints": [USER_TAINT, {"key": "node.katalyst.kubewharf.io/SystemRootfs", "effect": "NoSchedule"}]}})
    core.patch_node_status("cleanup-node", {"status": {"conditions": [KUBELET_CONDITION, AGENT_CONDITION]}})
    installed = node_view(core)
    assert installed["conditions"] == ["Ready", "SystemRootfs"], installed

    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check", "--diff"], {"kc": kubeapi.kubeconfig})
    assert rc == 0 and tasks["cleanup"]["changed"] is True, out
    removed = tasks["cleanup"]["removed"]["cleanup-node"]
    assert [condition["type"] for condition in removed["conditions"]] == ["SystemRootfs"], removed
    assert list(removed["labels"]) == [tide.LABEL_TIDE] and [taint["key"] for taint in removed["taints"]] == ["node.katalyst.kubewharf.io/SystemRootfs"]
    diff = tasks["cleanup"]["diff"]
    assert diff["before"]["Node/cleanup-node"]["conditions"][0]["reason"] == "RootfsPressure" and diff["after"]["Node/cleanup-node"]["conditions"] == []
    assert node_view(core) == installed                                  # check mode wrote nothing

    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"kc": kubeapi.kubeconfig})
    assert rc == 0 and tasks["cleanup"]["changed"] is True, out
    assert node_view(core) == {"labels": {"example.com/zone": "a"}, "taints": [dict(USER_TAINT, time_added=None)], "conditions": ["Ready"]}

    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"kc": kubeapi.kubeconfig})
    assert rc == 0 and tasks["cleanup"]["changed"] is False and tasks["cleanup"]["removed"] == {}, out
