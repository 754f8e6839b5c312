"""katalyst.colocation.rbac through ansible-playbook, on the emulator and on the real control plane: --check --diff shows
what it would create and writes nothing, a run creates every object, a second run changes nothing, a drifted rule is
put back (other labels kept), state=absent removes what it made (and only that), and the module_defaults group works."""

from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import rbac
from tests.integration.ansible_runner import run_playbook

PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/katalyst.colocation.k8s:
      kubeconfig: "{{ kc }}"
  tasks:
    - name: rbac
      katalyst.colocation.rbac:
        state: "{{ st | default('present') }}"
        components: "{{ components | default(omit) }}"
        lease_namespace: "{{ lease_namespace | default(omit) }}"
"""


def present(kube_client):
    """Every object the module manages that exists now, by rbac.object_key (the namespace included)."""
    core, authz = client.CoreV1Api(kube_client), client.RbacAuthorizationV1Api(kube_client)
    selector = "%s=%s" % (rbac.LABEL_MANAGED_BY, rbac.MANAGED_BY)
    found = set()
    for kind, listing in (("ServiceAccount", core.list_service_account_for_all_namespaces),
                          ("ClusterRole", authz.list_cluster_role), ("ClusterRoleBinding", authz.list_cluster_role_binding),
                          ("Role", authz.list_role_for_all_namespaces), ("RoleBinding", authz.list_role_binding_for_all_namespaces)):
        for item in listing(label_selector=selector).items:
            found.add("/".join([kind] + ([item.metadata.namespace] if item.metadata.namespace else []) + [item.metadata.name]))
    return found


def isolation_policy(kube_client):
    """The agent's node isolation policy and binding that exist now (a real API server serves them, the emulator not)."""
    admission = client.AdmissionregistrationV1Api(kube_client)
    return {kind + "/" + item.metadata.name
            for kind, listing in (("ValidatingAdmissionPolicy", admission.list_validating_admission_policy),
                                  ("ValidatingAdmissionPolicyBinding", admission.list_validating_admission_policy_binding))
            for item in listing().items if item.metadata.name == rbac.NODE_ISOLATION}


def namespaces(kube_client):
    return {n.metadata.name for n in client.CoreV1Api(kube_client).list_namespace().items}


def test_check_diff_idempotence_drift_and_removal(kubeapi, kube_client, tmp_path):
    kc = {"kc": kubeapi.kubeconfig}
    expected = {rbac.object_key(obj) for obj in rbac.manifests()}
    assert len(expected) == 18         # 4 ServiceAccounts, 3 ClusterRoles, 4 Roles (the token rules, the Lease) and their bindings
    # the agent's node isolation policy where the API server serves ValidatingAdmissionPolicy (the emulator does not)
    isolation = {rbac.object_key(obj) for obj in rbac.node_isolation_objects()} if kubeapi.backend == "real" else set()
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check", "--diff"], kc)
    assert rc == 0 and tasks["rbac"]["changed"] is True, out
    assert any("node isolation skipped" in w for w in tasks["rbac"].get("warnings", [])) is (kubeapi.backend != "real"), out
    diff = tasks["rbac"]["diff"]
    assert diff["before"] == {} and set(diff["after"]) == {"api:" + key for key in expected | isolation} | {"api:Namespace/katalyst-system"}
    assert diff["after"]["api:ClusterRole/katalyst-colocation:katalyst-agent"]["rules"][0] == {
        "apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}
    assert present(kube_client) == set() and "katalyst-system" not in namespaces(kube_client)      # check mode wrote nothing

    rc, tasks, out = run_playbook(PLAY, tmp_path, [], kc)
    assert rc == 0 and tasks["rbac"]["changed"] is True, out
    assert present(kube_client) == expected and "katalyst-system" in namespaces(kube_client)
    assert kubeapi.backend != "real" or isolation_policy(kube_client) == isolation
    assert {(a["component"], a["namespace"], a["name"]) for a in tasks["rbac"]["service_accounts"]} == {
        (c, "katalyst-system", c) for c in rbac.COMPONENTS}
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--diff"], kc)
    assert rc == 0 and tasks["rbac"]["changed"] is False, out                                    # idempotent
    assert {o["action"] for o in tasks["rbac"]["objects"]} == {"none"}

    # drift: a verb added by hand, a label of someone else's; the module puts the rules back and keeps the label
    authz = client.RbacAuthorizationV1Api(kube_client)
    authz.patch_cluster_role("katalyst-colocation:katalyst-agent", {"metadata": {"labels": {"team": "ops"}},
                                                                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]})
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--diff"], kc)
    assert rc == 0 and tasks["rbac"]["changed"] is True, out
    assert [(c["target"], c["action"]) for c in tasks["rbac"]["changes"]] == [("ClusterRole/katalyst-colocation:katalyst-agent", "replace")]
    assert tasks["rbac"]["diff"]["before"]["api:ClusterRole/katalyst-colocation:katalyst-agent"]["rules"][0]["verbs"] == ["*"]
    role = authz.read_cluster_role("katalyst-colocation:katalyst-agent")
    assert [r.verbs for r in role.rules] == [list(rule.verbs) for rule in rbac.RULES[rbac.AGENT] if rule.scope is rbac.CLUSTER]
    assert role.metadata.labels["team"] == "ops"

    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check", "--diff"], dict(kc, st="absent"))
    assert rc == 0 and tasks["rbac"]["changed"] is True and tasks["rbac"]["diff"]["after"] == {}, out
    assert present(kube_client) == expected                                                       # check mode removed nothing
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, st="absent"))
    assert rc == 0 and tasks["rbac"]["changed"] is True, out
    assert present(kube_client) == set() and "katalyst-system" in namespaces(kube_client)       # the namespace is kept
    assert kubeapi.backend != "real" or isolation_policy(kube_client) == set()
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, st="absent"))
    assert rc == 0 and tasks["rbac"]["changed"] is False, out


def test_one_component_with_its_lease_elsewhere_and_objects_not_ours_left_alone(kubeapi, kube_client, tmp_path):
    kc = {"kc": kubeapi.kubeconfig, "components": [rbac.CONTROLLER], "lease_namespace": "kube-system"}
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], kc)
    assert rc == 0 and tasks["rbac"]["changed"] is True, out
    authz = client.RbacAuthorizationV1Api(kube_client)
    lease_role = authz.read_namespaced_role("katalyst-colocation:katalyst-controller", "kube-system")
    assert [(r.resources, r.verbs, r.resource_names) for r in lease_role.rules] == [
        (["leases"], ["create"], None), (["leases"], ["get", "update"], ["katalyst-controller"])]
    binding = authz.read_namespaced_role_binding("katalyst-colocation:katalyst-controller", "kube-system")
    assert [(s.kind, s.namespace, s.name) for s in binding.subjects] == [("ServiceAccount", "katalyst-system", rbac.CONTROLLER)]
    assert present(kube_client) == {rbac.object_key(obj) for obj in rbac.manifests([rbac.CONTROLLER], lease_namespace="kube-system")}
    # someone else's ServiceAccount of the same name (not labelled as ours) survives state=absent, with a warning
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_service_account("katalyst-system", {"metadata": {"name": rbac.EXTENDER}})
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(kc, st="absent", components=[rbac.CONTROLLER, rbac.EXTENDER]))
    assert rc == 0 and tasks["rbac"]["changed"] is True, out
    assert any("ServiceAccount/katalyst-system/katalyst-scheduler-extender is not labelled" in w for w in tasks["rbac"]["warnings"])
    assert core.read_namespaced_service_account(rbac.EXTENDER, "katalyst-system").metadata.name == rbac.EXTENDER
    assert present(kube_client) == set()
