"""katalyst.colocation.rbac run in-process against the API emulator (real HTTP, the real kubernetes client): check mode
and --diff, idempotence, a binding whose roleRef was changed, state=absent."""

import json
from unittest import mock

import pytest
from ansible.module_utils import _internal as module_internal
from ansible.module_utils.testing import patch_module_args
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import rbac
from ansible_collections.katalyst.colocation.plugins.modules import rbac as rbac_module
from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig


@pytest.fixture
def cluster(tmp_path):
    """(kubeconfig, ApiClient) of a fresh emulator."""
    server = KubeAPIServer().start()
    kubeconfig = str(tmp_path / "kubeconfig")
    write_kubeconfig(kubeconfig, server.url)
    configuration = client.Configuration()
    configuration.host = server.url
    with client.ApiClient(configuration) as api_client:
        yield kubeconfig, api_client
    server.stop()


def run(capsys, kubeconfig, check=False, diff=False, **params):
    """The module's result dict (``failed`` set when it failed)."""
    # as in a module's own process: once anything in this pytest process imported Ansible's controller side (a module
    # the other tests use), module warnings would go to the controller's display instead of the result
    with patch_module_args(dict(params, kubeconfig=kubeconfig, _ansible_check_mode=check, _ansible_diff=diff)), \
            mock.patch.object(module_internal, "is_controller", False):
        with pytest.raises(SystemExit):
            rbac_module.main()
    return json.loads(capsys.readouterr().out)


def stored(api_client):
    """The keys (rbac.object_key) of the RBAC objects and ServiceAccounts in the cluster."""
    core, authz = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    keys = set()
    for kind, items in (("ServiceAccount", core.list_service_account_for_all_namespaces().items),
                        ("ClusterRole", authz.list_cluster_role().items), ("ClusterRoleBinding", authz.list_cluster_role_binding().items),
                        ("Role", authz.list_role_for_all_namespaces().items), ("RoleBinding", authz.list_role_binding_for_all_namespaces().items)):
        keys |= {"/".join([kind] + ([i.metadata.namespace] if i.metadata.namespace else []) + [i.metadata.name]) for i in items}
    return keys


def test_check_diff_apply_idempotent_and_absent(cluster, capsys):
    kubeconfig, api_client = cluster
    expected = {rbac.object_key(obj) for obj in rbac.manifests([rbac.AGENT, rbac.CONTROLLER])}
    params = {"components": [rbac.AGENT, rbac.CONTROLLER]}
    result = run(capsys, kubeconfig, check=True, diff=True, **params)
    assert result["changed"] is True and stored(api_client) == set()
    assert set(result["diff"]["after"]) == {"api:" + key for key in expected} | {"api:Namespace/katalyst-system"}
    assert {o["action"] for o in result["objects"]} == {"create"}
    result = run(capsys, kubeconfig, **params)
    assert result["changed"] is True and stored(api_client) == expected
    result = run(capsys, kubeconfig, diff=True, **params)
    assert result["changed"] is False and result["diff"] == {"before": {}, "after": {}}
    result = run(capsys, kubeconfig, check=True, diff=True, state="absent", **params)
    assert result["changed"] is True and set(result["diff"]["before"]) == {"api:" + key for key in expected}
    assert stored(api_client) == expected
    result = run(capsys, kubeconfig, state="absent", **params)
    assert result["changed"] is True and stored(api_client) == set()
    assert "katalyst-system" in {n.metadata.name for n in client.CoreV1Api(api_client).list_namespace().items}
    assert run(capsys, kubeconfig, state="absent", **params)["changed"] is False


def test_a_binding_to_another_role_is_recreated(cluster, capsys):
    kubeconfig, api_client = cluster
    run(capsys, kubeconfig, components=[rbac.EXTENDER])
    authz = client.RbacAuthorizationV1Api(api_client)
    name = "katalyst-colocation:katalyst-scheduler-extender"
    authz.delete_cluster_role_binding(name)
    authz.create_cluster_role_binding({"metadata": {"name": name, "labels": rbac.labels(rbac.EXTENDER)},
                                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                                       "subjects": [{"kind": "ServiceAccount", "name": rbac.EXTENDER, "namespace": "katalyst-system"}]})
    result = run(capsys, kubeconfig, diff=True, components=[rbac.EXTENDER])
    assert [(c["target"], c["action"]) for c in result["changes"]] == [("ClusterRoleBinding/" + name, "recreate")]
    assert result["diff"]["before"]["api:ClusterRoleBinding/" + name]["roleRef"]["name"] == "view"
    assert authz.read_cluster_role_binding(name).role_ref.name == name


def test_unknown_component_fails(cluster, capsys):
    kubeconfig, api_client = cluster
    result = run(capsys, kubeconfig, components=["katalyst-bogus"])
    assert result["failed"] is True and "katalyst-bogus" in result["msg"] and stored(api_client) == set()


def test_node_isolation_is_skipped_with_a_warning_where_the_cluster_does_not_serve_admission_policies(cluster, capsys):
    """The emulator, like a cluster before 1.30, serves no admissionregistration.k8s.io/v1 validatingadmissionpolicies.
    (Ansible's warnings are process-global, so only their presence is checked here.)"""
    kubeconfig, api_client = cluster
    result = run(capsys, kubeconfig, components=[rbac.AGENT])
    assert result["changed"] is True and stored(api_client) == {rbac.object_key(obj) for obj in rbac.manifests([rbac.AGENT])}
    assert any("node isolation skipped" in str(warning) for warning in result["warnings"]), result["warnings"]
    assert "ValidatingAdmissionPolicy" not in {o["kind"] for o in result["objects"]}
