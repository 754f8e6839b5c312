"""Node isolation on the real control plane: katalyst.colocation.rbac applies the agent's ValidatingAdmissionPolicy,
katalyst.colocation.service_account_kubeconfig writes the agent's token bound to node A, and with that token the agent
may write node A's CNR (and its status), patch pods on node A and create Events naming node A, and is refused (403, by
the policy) for node B's CNR, a pod on node B, an Event naming node B; an unbound agent token is refused too. Its token
renewal may ask for a token bound to node A only (not to node B, to no node or to another object).

The emulator has no admission policies (it does not serve admissionregistration.k8s.io/v1 validatingadmissionpolicies):
there the module warns and skips the policy, and the node-bound token's claims are checked.
"""

import time

import pytest
from kubernetes import client, config as kube_config
from kubernetes.client.exceptions import ApiException

from ansible_collections.katalyst.colocation.plugins.module_utils import credentials, rbac
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import service
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.token_renewal import TokenRenewer
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient
from tests.integration.ansible_runner import run_playbook
from tests.integration.backends import install_crds
from tests.integration.test_rbac_real import token_client
from tests.integration.waiting import wait_until

PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: rbac
      katalyst.colocation.rbac:
        components: [katalyst-agent]      # with its node isolation policy (node_isolation defaults to true)
        state: "{{ st | default('present') }}"
        kubeconfig: "{{ kc }}"
    - name: credential
      katalyst.colocation.service_account_kubeconfig:
        kubeconfig: "{{ kc }}"
        service_account: katalyst-agent
        bound_node: "{{ node | default(omit) }}"
        dest: "{{ dest }}"
      when: st | default('present') == 'present'
"""
NAMESPACE = rbac.DEFAULT_NAMESPACE
CNR_ARGS = (rbac.CNR, "v1alpha1", "customnoderesources")

pytestmark = pytest.mark.slow


def converge(kubeapi, tmp_path, args=(), **extra):
    rc, tasks, out = run_playbook(PLAY, tmp_path, list(args), dict(extra, kc=kubeapi.kubeconfig, dest=str(tmp_path / "creds" / "agent.kubeconfig")))
    assert rc == 0, out
    return tasks, out


def pod_on(name, node):
    return {"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}}


def event_about(pod, host):
    return {"metadata": {"name": "%s.%s" % (pod, host), "namespace": "default"}, "reason": "Test", "message": "m", "type": "Warning",
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": "default"},
            "source": {"component": "katalyst-agent", "host": host}, "reportingComponent": "katalyst-agent", "reportingInstance": host}


def denied_by_policy(call, *args):
    """The call is refused (403) by the node isolation policy; its message."""
    with pytest.raises(ApiException) as raised:
        call(*args)
    assert raised.value.status == 403 and rbac.NODE_ISOLATION in raised.value.body, raised.value.body
    return raised.value.body


def denied(call, *args):
    """wait_until predicate: the call is refused by the policy (a new policy takes a moment to be enforced)."""
    try:
        call(*args)
    except ApiException as exc:
        return exc.status == 403 and rbac.NODE_ISOLATION in exc.body
    return False


@pytest.fixture
def cluster(kubeapi, kube_client):
    """Two Nodes (A, B), the CNR CRD, a CNR and a pod per node."""
    install_crds(kube_client)
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    for node in ("node-a", "node-b"):
        core.create_node({"metadata": {"name": node}})
        core.create_namespaced_pod("default", pod_on("pod-" + node, node))
        custom.create_cluster_custom_object(*CNR_ARGS, {"apiVersion": rbac.CNR + "/v1alpha1", "kind": "CustomNodeResource",
                                                        "metadata": {"name": node}})
    return core, custom


def test_the_node_bound_token(kubeapi, kube_client, cluster, tmp_path):
    """Both backends: the module binds the token to the Node (name and uid claims), idempotently; another node, or no
    node, replaces it."""
    core = cluster[0]
    token_path = tmp_path / "creds" / "agent.kubeconfig.token"
    tasks, out = converge(kubeapi, tmp_path, ["-v", "--diff"], node="node-a")
    if kubeapi.backend != "real":
        assert any("node isolation skipped" in warning for warning in tasks["rbac"]["warnings"]), tasks["rbac"]
    first = token_path.read_text()
    claims = credentials.jwt_claims(first)
    assert credentials.token_node(claims) == ("node-a", core.read_node("node-a").metadata.uid), claims
    assert tasks["credential"]["bound_node"] == "node-a" and tasks["credential"]["diff"]["after"]["node"] == "node-a"
    assert first.strip() not in out
    tasks, out = converge(kubeapi, tmp_path, node="node-a")
    assert tasks["credential"]["changed"] is False and token_path.read_text() == first, tasks["credential"]
    tasks, out = converge(kubeapi, tmp_path, node="node-b")
    assert tasks["credential"]["changed"] is True and "not bound to node node-b (bound to node-a)" in tasks["credential"]["reason"]
    assert credentials.token_node(credentials.jwt_claims(token_path.read_text()))[0] == "node-b"
    tasks, out = converge(kubeapi, tmp_path)
    assert tasks["credential"]["changed"] is True and tasks["credential"]["reason"] == "bound to node node-b"
    assert credentials.token_node(credentials.jwt_claims(token_path.read_text())) is None
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"kc": kubeapi.kubeconfig, "dest": str(tmp_path / "x"), "node": "nowhere"})
    assert rc != 0 and "Node nowhere does not exist" in tasks["credential"]["msg"], out


def test_an_agent_writes_only_its_own_nodes_objects(kubeapi, kube_client, cluster, tmp_path):
    if kubeapi.backend != "real":
        pytest.skip("the emulator has no admission policies (no validatingadmissionpolicies, no authorizer): "
                    "node isolation is enforced by a real kube-apiserver only")
    core, custom = cluster
    tasks, out = converge(kubeapi, tmp_path, ["--diff"], node="node-a")
    assert not any("node isolation skipped" in warning for warning in tasks["rbac"].get("warnings", [])), tasks["rbac"]
    created = {(o["kind"], o["action"]) for o in tasks["rbac"]["objects"]}
    assert {("ValidatingAdmissionPolicy", "create"), ("ValidatingAdmissionPolicyBinding", "create")} <= created, created
    policy_diff = tasks["rbac"]["diff"]["after"]["api:ValidatingAdmissionPolicy/" + rbac.NODE_ISOLATION]
    assert policy_diff["spec"]["matchConditions"][0]["expression"] == "request.userInfo.username == 'system:serviceaccount:%s:katalyst-agent'" % NAMESPACE
    again, out = converge(kubeapi, tmp_path, node="node-a")
    assert again["rbac"]["changed"] is False and again["credential"]["changed"] is False, again      # the defaults read back equal
    # drift: the policy weakened by hand is put back (--check --diff shows it first)
    admission = client.AdmissionregistrationV1Api(kube_client)
    admission.patch_validating_admission_policy(rbac.NODE_ISOLATION, {"spec": {"validations": [{"expression": "true"}]}})
    checked, out = converge(kubeapi, tmp_path, ["--check", "--diff"], node="node-a")
    key = "api:ValidatingAdmissionPolicy/" + rbac.NODE_ISOLATION
    assert [(c["target"], c["action"]) for c in checked["rbac"]["changes"]] == [(key[4:], "replace")], checked["rbac"]["changes"]
    assert checked["rbac"]["diff"]["before"][key]["spec"]["validations"] == [{"expression": "true"}]
    fixed, out = converge(kubeapi, tmp_path, node="node-a")
    assert fixed["rbac"]["changed"] is True
    assert [v.expression for v in admission.read_validating_admission_policy(rbac.NODE_ISOLATION).spec.validations] == [
        v[0] for v in rbac.NODE_ISOLATION_VALIDATIONS]

    with kube_config.new_client_from_config(config_file=str(tmp_path / "creds" / "agent.kubeconfig")) as api_client:
        review = client.AuthenticationV1Api(api_client).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                                    "kind": "SelfSubjectReview"})
        assert review.status.user_info.extra[rbac.NODE_NAME_EXTRA] == ["node-a"], review.status.user_info
        agent_core, agent_cnr = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
        # node B's CNR: refused once the new policy is enforced (it takes a moment)
        wait_until(lambda: denied(agent_cnr.patch_cluster_custom_object_status, *CNR_ARGS, "node-b", {"status": {"topologyZone": []}}),
                   timeout=60, what="the node isolation policy to be enforced")
        # the API server type-checked every expression against the matched kinds without a warning
        status = client.AdmissionregistrationV1Api(kube_client).read_validating_admission_policy(rbac.NODE_ISOLATION).status
        assert status.type_checking is None or not status.type_checking.expression_warnings, status
        message = denied_by_policy(agent_cnr.patch_cluster_custom_object, *CNR_ARGS, "node-b", {"metadata": {"annotations": {"x": "y"}}})
        assert "of node node-a may not write the CustomNodeResource node-b" in message, message
        denied_by_policy(agent_cnr.create_cluster_custom_object, *CNR_ARGS, {"apiVersion": rbac.CNR + "/v1alpha1",
                                                                             "kind": "CustomNodeResource", "metadata": {"name": "node-c"}})
        # its own CNR, status and annotations
        agent_cnr.patch_cluster_custom_object_status(*CNR_ARGS, "node-a", {"status": {"topologyZone": []}})
        agent_cnr.patch_cluster_custom_object(*CNR_ARGS, "node-a", {"metadata": {"annotations": {"x": "y"}}})
        # pods: on its node yes, on node B no
        agent_core.patch_namespaced_pod("pod-node-a", "default", {"metadata": {"annotations": {"x": "y"}}})
        message = denied_by_policy(agent_core.patch_namespaced_pod, "pod-node-b", "default", {"metadata": {"annotations": {"x": "y"}}})
        assert "may not patch a pod that is not bound to it" in message, message
        # its Node's SystemRootfs condition and taint (the eviction loop): its own Node yes, node B's no
        condition = {"status": {"conditions": [{"type": "SystemRootfs", "status": "True", "reason": "RootfsPressure", "message": "test"}]}}
        taints = {"spec": {"taints": [{"key": "node.katalyst.kubewharf.io/SystemRootfs", "effect": "NoSchedule"}]}}
        agent_core.patch_node_status("node-a", condition)
        agent_core.patch_node("node-a", taints)
        assert [t.key for t in core.read_node("node-a").spec.taints] == ["node.katalyst.kubewharf.io/SystemRootfs"]
        message = denied_by_policy(agent_core.patch_node_status, "node-b", condition)
        assert "of node node-a may not write the Node node-b" in message, message
        denied_by_policy(agent_core.patch_node, "node-b", taints)
        assert not core.read_node("node-b").spec.taints and not core.read_node("node-b").status.conditions
        # Events: the agent's own code path names its node; one naming node B is refused, one naming nobody too
        agent = KubeClient(api_client=api_client)
        pod = dict(kube_client.sanitize_for_serialization(core.read_namespaced_pod("pod-node-a", "default")), apiVersion="v1", kind="Pod")
        event = agent.emit_event(pod, "Test", "from the agent", "Warning", "katalyst-agent", host="node-a")
        assert event is not None and event["source"]["host"] == event["reportingInstance"] == "node-a", event
        message = denied_by_policy(agent_core.create_namespaced_event, "default", event_about("pod-node-b", "node-b"))
        assert "may create only Events whose source.host and reportingInstance name it" in message, message
        unnamed = event_about("pod-node-a", "node-a")
        del unnamed["source"]["host"]
        denied_by_policy(agent_core.create_namespaced_event, "default", unnamed)
        agent_core.create_namespaced_event("default", event_about("pod-node-a", "node-a"))

    # an unbound token of the agent: refused for everything the policy covers, even its "own" node's objects
    unbound = core.create_namespaced_service_account_token(rbac.AGENT, NAMESPACE, {"spec": {"expirationSeconds": 600}}).status.token
    assert credentials.token_node(credentials.jwt_claims(unbound)) is None
    with token_client(kube_client, unbound) as api_client:
        message = denied_by_policy(client.CustomObjectsApi(api_client).patch_cluster_custom_object_status, *CNR_ARGS, "node-a",
                                   {"status": {"topologyZone": []}})
        assert "must use a node-bound token" in message, message
        denied_by_policy(client.CoreV1Api(api_client).patch_namespaced_pod, "pod-node-a", "default", {"metadata": {"annotations": {"x": "z"}}})
        denied_by_policy(client.CoreV1Api(api_client).patch_node, "node-a", {"metadata": {"annotations": {"x": "z"}}})
        # reads are not the policy's business (RBAC lets it list pods)
        assert client.CoreV1Api(api_client).list_namespaced_pod("default").items
    # the admin is not matched by the policy
    custom.patch_cluster_custom_object(*CNR_ARGS, "node-b", {"metadata": {"annotations": {"admin": "yes"}}})

    # state=absent removes the policy and its binding (with the rest of the agent's objects)
    tasks, out = converge(kubeapi, tmp_path, st="absent")
    removed = {(o["kind"], o["action"]) for o in tasks["rbac"]["objects"]}
    assert {("ValidatingAdmissionPolicy", "delete"), ("ValidatingAdmissionPolicyBinding", "delete")} <= removed, removed
    admission = client.AdmissionregistrationV1Api(kube_client)
    assert rbac.NODE_ISOLATION not in [p.metadata.name for p in admission.list_validating_admission_policy().items]
    assert rbac.NODE_ISOLATION not in [b.metadata.name for b in admission.list_validating_admission_policy_binding().items]


def test_an_agent_renews_only_a_token_bound_to_its_own_node(kubeapi, kube_client, cluster, tmp_path):
    """Its token renewal (daemons/token_renewal.py) with its node-bound token: a token bound to its Node is issued; one
    bound to node B, to no node, or to another kind of object is refused by the policy."""
    if kubeapi.backend != "real":
        pytest.skip("the emulator has no admission policies: node isolation is enforced by a real kube-apiserver only")
    core = cluster[0]
    converge(kubeapi, tmp_path, node="node-a")
    node_a, node_b = (core.read_node(name).metadata.uid for name in ("node-a", "node-b"))

    def token_request(**ref):
        return {"spec": dict({"expirationSeconds": 600}, **({"boundObjectRef": dict(ref, apiVersion="v1")} if ref else {}))}
    with kube_config.new_client_from_config(config_file=str(tmp_path / "creds" / "agent.kubeconfig")) as api_client:
        agent_core = client.CoreV1Api(api_client)
        to_node_b = (agent_core.create_namespaced_service_account_token, rbac.AGENT, NAMESPACE, token_request(kind="Node", name="node-b", uid=node_b))
        wait_until(lambda: denied(*to_node_b), timeout=60, what="the node isolation policy to be enforced")
        message = denied_by_policy(*to_node_b)
        assert "of node node-a may request only tokens bound to its own Node" in message, message
        denied_by_policy(agent_core.create_namespaced_service_account_token, rbac.AGENT, NAMESPACE, token_request())
        secret = core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "not-a-node"}})
        denied_by_policy(agent_core.create_namespaced_service_account_token, rbac.AGENT, NAMESPACE,
                         token_request(kind="Secret", name="not-a-node", uid=secret.metadata.uid))
        # its own node: what the daemon's renewal asks for (the same binding as its current token)
        assert credentials.plan_token_renewal(service.bearer_token(api_client.configuration), time.time()) is None     # not due (24 h) ...
        token_file = tmp_path / "renewed" / "token"
        assert TokenRenewer(api_client, str(token_file), renew_before_seconds=10 ** 9).run_once() is not None     # ... unless forced
        renewed = credentials.jwt_claims(token_file.read_text())
        assert credentials.token_node(renewed) == ("node-a", node_a), renewed
        # RBAC: not another ServiceAccount's token, even bound to its node
        with pytest.raises(ApiException) as raised:
            agent_core.create_namespaced_service_account_token(rbac.CONTROLLER, NAMESPACE, token_request(kind="Node", name="node-a", uid=node_a))
        assert raised.value.status == 403 and rbac.NODE_ISOLATION not in raised.value.body, raised.value.body


def test_the_node_binding_contract_of_token_request(kubeapi, kube_client):
    """What the module relies on, the same on both backends: the kubernetes.io.node claim; a missing Node (404) or one
    with another uid (409, a Node deleted and created again) refused."""
    core = client.CoreV1Api(kube_client)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": rbac.AGENT}})
    uid = core.create_node({"metadata": {"name": "node-a"}}).metadata.uid

    def request(name, node_uid):
        ref = {"kind": "Node", "apiVersion": "v1", "name": name, "uid": node_uid}
        return core.create_namespaced_service_account_token(rbac.AGENT, NAMESPACE, {"spec": {"boundObjectRef": ref}})
    answer = request("node-a", uid)
    assert credentials.jwt_claims(answer.status.token)["kubernetes.io"]["node"] == {"name": "node-a", "uid": uid}
    for name, node_uid, status in (("node-z", None, 404), ("node-a", "00000000-0000-0000-0000-000000000000", 409)):
        with pytest.raises(ApiException) as raised:
            request(name, node_uid)
        assert raised.value.status == status, raised.value.body
