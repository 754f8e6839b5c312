"""katalyst.colocation.tide_node_pool and tide_plan through ansible-playbook against the emulator."""

import json

from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from tests.integration.backends import get_cluster_object, install_crds
from tests.integration.ansible_runner import run_playbook

POOL_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: pool
      katalyst.colocation.tide_node_pool:
        kubeconfig: "{{ kc }}"
        name: web
        state: "{{ st | default('present') }}"
        node_selector: {pool: web}
        reserve:
          online: "{{ online | default('10%') }}"
          offline: 25%
        flip: "{{ do_flip | default(false) }}"
"""

PLAN_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: plan
      katalyst.colocation.tide_plan:
        kubeconfig: "{{ kc }}"
        name: "{{ pool_name | default('web') }}"
        spec: "{{ pool_spec | default(omit) }}"
"""


def setup_cluster(kube_client, count=10):
    install_crds(kube_client)
    core = client.CoreV1Api(kube_client)
    for index in range(count):
        core.create_node({"metadata": {"name": "n%02d" % index, "labels": {"pool": "web"}},
                          "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}})
    return core


def nodes(core):
    return {n["metadata"]["name"]: n for n in json.loads(core.list_node(_preload_content=False).data)["items"]}


def roles(core):
    config = tide.PoolConfig({"metadata": {"name": "web"}, "spec": {}})
    return {name: config.role(node["metadata"].get("labels") or {}) for name, node in nodes(core).items()}


def get_pool(kube_client):
    return get_cluster_object(kube_client, tide.GROUP, tide.PLURAL, "web")


def test_check_mode_diff_previews_roles_and_the_next_flip_without_writing(kubeapi, kube_client, tmp_path):
    core = setup_cluster(kube_client)
    untouched = nodes(core)
    rc, tasks, out = run_playbook(POOL_PLAY, tmp_path, ["--check", "--diff"], {"kc": kubeapi.kubeconfig})
    assert rc == 0, out
    task = tasks["pool"]
    assert task["changed"] is True
    after = task["diff"]["after"]
    assert after["Node/n00"]["role"] == "online-reserve" and after["Node/n01"]["role"] == "offline-reserve"
    assert after["Node/n05"]["role"] == "tide-online" and "reserves are full" in after["Node/n05"]["why"]
    assert after["Node/n00"]["labels"][tide.LABEL_NODE_TYPE] == "online"
    assert task["diff"]["before"]["Node/n00"] == {"labels": {}, "taints": [], "role": "unknown"}
    assert after["TideNodePool/web"]["spec"]["nodeConfigs"]["reserve"] == {"online": "10%", "offline": "25%"}
    flip = after["next flip (left to katalyst-controller)"]
    assert flip["node"] == "n03" and flip["direction"] == "offline" and "lowest requested load" in flip["reason"]
    assert task["plan"]["reserve"] == {"online": 1, "offline": 2, "nodes": 10}
    assert get_pool(kube_client) is None and nodes(core) == untouched            # check mode wrote nothing
    assert "n03" in out and "lowest requested load" in out                        # --diff shows it to the user


def test_present_converges_is_idempotent_flips_on_request_and_absent_cleans(kubeapi, kube_client, tmp_path):
    core = setup_cluster(kube_client)
    kc = {"kc": kubeapi.kubeconfig}
    rc, tasks, out = run_playbook(POOL_PLAY, tmp_path, [], kc)
    assert rc == 0 and tasks["pool"]["changed"] is True, out
    current = roles(core)
    assert current["n00"] == "online-reserve" and [current["n01"], current["n02"]] == ["offline-reserve"] * 2
    assert sorted(set(current[name] for name in current if name >= "n03")) == ["tide-online"]   # flips left to the controller
    pool = get_pool(kube_client)
    assert pool["metadata"]["finalizers"] == [tide.FINALIZER]
    assert pool["status"]["reserveNodes"] == {"onlineNodes": ["n00"], "offlineNodes": ["n02", "n01"]}
    assert pool["status"]["conditions"][0]["reason"] == "Reconciled"
    rc, tasks, out = run_playbook(POOL_PLAY, tmp_path, [], kc)
    assert rc == 0 and tasks["pool"]["changed"] is False, out                     # idempotent
    assert tasks["pool"]["plan"]["flip"]["node"] == "n03"                          # reported, not applied

    rc, tasks, out = run_playbook(PLAN_PLAY, tmp_path, [], kc)
    assert rc == 0 and tasks["plan"]["changed"] is False, out
    plan = tasks["plan"]["plan"]
    assert plan["roles_before"] == current and plan["roles"] == dict(current, n03="tide-offline")
    assert plan["flip"]["node"] == "n03" and plan["changes"][0]["target"] == "Node/n03"
    assert tasks["plan"]["counts"] == {"online-reserve": 1, "offline-reserve": 2, "tide-online": 6, "tide-offline": 1}

    rc, tasks, out = run_playbook(POOL_PLAY, tmp_path, [], dict(kc, do_flip=True))
    assert rc == 0 and tasks["pool"]["changed"] is True, out
    assert roles(core)["n03"] == "tide-offline" and sum(1 for r in roles(core).values() if r == "tide-offline") == 1
    assert [(t["key"], t["effect"]) for t in nodes(core)["n03"]["spec"]["taints"]] == [(tide.TAINT_EVICT_ONLINE_POD, "NoExecute")]
    events = [e for e in client.CoreV1Api(kube_client).list_namespaced_event("default").items if e.reason == "TideNodeOffline"]
    assert len(events) == 1 and "n03" in events[0].message

    rc, tasks, out = run_playbook(POOL_PLAY, tmp_path, ["--check", "--diff"], dict(kc, st="absent"))
    assert rc == 0 and tasks["pool"]["changed"] is True, out
    assert get_pool(kube_client) is not None and roles(core)["n03"] == "tide-offline"    # check mode removed nothing
    rc, tasks, out = run_playbook(POOL_PLAY, tmp_path, [], dict(kc, st="absent"))
    assert rc == 0 and tasks["pool"]["changed"] is True, out
    assert get_pool(kube_client) is None
    for name, node in nodes(core).items():
        assert node["metadata"]["labels"] == {"pool": "web"}, name
        assert not (node.get("spec") or {}).get("taints"), name
        assert tide.ANNOTATION_LAST_FLIP not in (node["metadata"].get("annotations") or {}), name
    rc, tasks, out = run_playbook(POOL_PLAY, tmp_path, [], dict(kc, st="absent"))
    assert rc == 0 and tasks["pool"]["changed"] is False, out


def test_bad_reserve_fails_clearly_and_tide_plan_previews_a_new_pool(kubeapi, kube_client, tmp_path):
    setup_cluster(kube_client, count=4)
    kc = {"kc": kubeapi.kubeconfig}
    rc, tasks, out = run_playbook(POOL_PLAY, tmp_path, [], dict(kc, online="ten%"))
    assert rc != 0 and "spec.nodeConfigs.reserve.online: invalid percentage 'ten%'" in tasks["pool"]["msg"], out
    assert get_pool(kube_client) is None
    rc, tasks, out = run_playbook(PLAN_PLAY, tmp_path, [], dict(kc, pool_name="batch"))
    assert rc != 0 and "does not exist; give spec" in tasks["plan"]["msg"]
    spec = {"nodeConfigs": {"nodeSelector": {"pool": "web"}, "reserve": {"online": "30%", "offline": "30%"}}}
    rc, tasks, out = run_playbook(PLAN_PLAY, tmp_path, [], dict(kc, pool_name="batch", pool_spec=spec))
    assert rc == 0, out
    result = tasks["plan"]
    assert result["exists"] is False
    assert result["plan"]["reserve"] == {"online": 2, "offline": 1, "nodes": 4}                # the Go case: 30% of 4
    assert result["counts"] == {"online-reserve": 2, "offline-reserve": 1, "tide-online": 1}
