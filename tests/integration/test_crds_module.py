"""katalyst.colocation.crds through ansible-playbook against the emulator."""

from kubernetes import client

from tests.integration.ansible_runner import run_playbook

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: crds
      katalyst.colocation.crds:
        kubeconfig: "{{ kc }}"
        state: "{{ st | default('present') }}"
        force: "{{ force | default(false) }}"
"""


def crd_names(kube_client):
    return sorted(c.metadata.name for c in client.ApiextensionsV1Api(kube_client).list_custom_resource_definition().items)


def test_install_idempotent_check_mode_and_removal(kubeapi, kube_client, tmp_path):
    kc = {"kc": kubeapi.kubeconfig}
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check", "--diff"], kc)
    assert rc == 0, out
    assert tasks["crds"]["changed"] is True and "diff" in tasks["crds"]
    assert crd_names(kube_client) == []                                   # check mode changed nothing
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], kc)
    assert rc == 0 and tasks["crds"]["changed"] is True, out
    assert len(crd_names(kube_client)) == 3
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], kc)
    assert rc == 0 and tasks["crds"]["changed"] is False, out            # idempotent
    client.CustomObjectsApi(kube_client).create_cluster_custom_object(
        "tide.katalyst.kubewharf.io", "v1alpha1", "tidenodepools",
        {"apiVersion": "tide.katalyst.kubewharf.io/v1alpha1", "kind": "TideNodePool", "metadata": {"name": "p1"},
         "spec": {"nodeConfigs": {"reserve": {"online": 1, "offline": 1}}}})
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, st="absent"))
    assert rc != 0 and "refusing to remove tidenodepools" in tasks["crds"]["msg"]
    assert len(crd_names(kube_client)) == 3                               # nothing half-removed
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, st="absent", force=True))
    assert rc == 0 and tasks["crds"]["changed"] is True, out
    assert crd_names(kube_client) == []


def test_unknown_crd_name_fails_clearly(kubeapi, tmp_path):
    play = PLAY.replace('state: "{{ st | default(\'present\') }}"', "names: [bogus]")
    rc, tasks, out = run_playbook(play, tmp_path, [], {"kc": kubeapi.kubeconfig})
    assert rc != 0 and "unknown CRD 'bogus'" in tasks["crds"]["msg"], out
