"""The daemons' RBAC on the real control plane (kube-apiserver with Node,RBAC authorization): katalyst.colocation.rbac
applies it, each daemon gets a token of its own ServiceAccount (TokenRequest), and with that token
(a) every verb of every rule of its table is allowed (SelfSubjectAccessReview), and the daemons' own code paths work:
    the controller's leader election on its Lease, the agent's CNR create + status patch and its Events, the extender's
    informers, each daemon renewing its own token;
(b) a call outside its rules is refused with 403: the agent deleting a pod or its CNR, the webhook patching a Node, every
    daemon writing a Lease in another namespace, the controller touching another Lease or creating Events outside
    `default`, any daemon updating or patching an Event, any daemon requesting a token of another ServiceAccount.
The emulator has no authorizer (every call is allowed there), so these run on the real backend only; the emulator side
of the same table is test_rbac_calls.py (every call the daemons make in their scenarios is in the table).
"""

import threading

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ansible_collections.katalyst.colocation.plugins.module_utils import cnr, credentials, rbac
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent_numa import apply_cnr_change
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ClusterCache
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.leader import LeaderElector
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.token_renewal import TokenRenewer
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient
from tests.integration.ansible_runner import run_playbook
from tests.integration.backends import install_crds
from tests.integration.waiting import wait_until

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: rbac
      katalyst.colocation.rbac:
        kubeconfig: "{{ kc }}"
        # RBAC alone, with unbound tokens; test_node_isolation.py proves the agent's policy with node-bound ones
        node_isolation: "{{ isolation | default(false) }}"
        lease_namespace: "{{ lease_namespace | default(omit) }}"
"""
NAMESPACE = rbac.DEFAULT_NAMESPACE
NAMESPACED = {"pods", "events", "leases", "serviceaccounts"}     # the namespaced resources of the table (nodes and our CRDs are cluster-scoped)

pytestmark = pytest.mark.slow


def token_client(admin, token):
    """An ApiClient to the admin's cluster (same CA) that authenticates with ``token`` only."""
    configuration = client.Configuration()
    configuration.host = admin.configuration.host
    configuration.ssl_ca_cert = admin.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": "Bearer %s" % token}
    return client.ApiClient(configuration)


@pytest.fixture
def daemons(kubeapi, kube_client, tmp_path):
    """component -> ApiClient with a fresh token of its ServiceAccount, after the module applied the RBAC."""
    if kubeapi.backend != "real":
        pytest.skip("the emulator has no authorizer: it allows every call (docs/rbac.md); the real control plane proves the rules")
    install_crds(kube_client)
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"kc": kubeapi.kubeconfig})
    assert rc == 0 and tasks["rbac"]["changed"] is True, out
    core = client.CoreV1Api(kube_client)
    clients = {}
    for component in rbac.COMPONENTS:
        request = core.create_namespaced_service_account_token(component, NAMESPACE, {"spec": {"expirationSeconds": 600}})
        clients[component] = token_client(kube_client, request.status.token)
    yield clients
    for api_client in clients.values():
        api_client.close()


def access(api_client, verb, group, resource, namespace=None, name=None):
    """SelfSubjectAccessReview: may this identity make the call?"""
    resource, _sep, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource, "subresource": subresource}
    attributes.update({key: value for key, value in (("namespace", namespace), ("name", name)) if value})
    review = client.AuthorizationV1Api(api_client).create_self_subject_access_review({"spec": {"resourceAttributes": attributes}})
    return review.status.allowed


def forbidden(call, *args, **kwargs):
    """The call is refused by the authorizer (403), not by anything else."""
    with pytest.raises(ApiException) as raised:
        call(*args, **kwargs)
    assert raised.value.status == 403, raised.value.body
    return raised.value


def lease_body(name, namespace):
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": namespace},
            "spec": {"holderIdentity": "x", "leaseDurationSeconds": 15}}


def test_each_daemon_is_its_own_service_account(daemons):
    for component, api_client in daemons.items():
        review = client.AuthenticationV1Api(api_client).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                                    "kind": "SelfSubjectReview"})
        assert review.status.user_info.username == "system:serviceaccount:%s:%s" % (NAMESPACE, component)


def test_every_rule_of_the_table_is_allowed_and_discovery_too(daemons):
    checked = 0
    for component, api_client in daemons.items():
        for scope, rule, rendered in rbac.grants(component, NAMESPACE):
            for resource in rule.resources:
                namespaced = resource.split("/")[0] in NAMESPACED
                # a cluster-wide grant of a namespaced resource holds in any namespace: ask for one nobody uses
                namespace = scope or ("anywhere" if namespaced else None)
                for verb in rule.verbs:
                    # a create names no object, but the create of a subresource (serviceaccounts/token) names its object
                    creates_object = verb == "create" and "/" not in resource
                    name = None if creates_object or verb in ("list", "watch") else (rendered.get("resourceNames") or ["some-object"])[0]
                    assert access(api_client, verb, rule.group, resource, namespace, name), (component, verb, resource, namespace, name)
                    checked += 1
        review = client.AuthorizationV1Api(api_client).create_self_subject_access_review(
            {"spec": {"nonResourceAttributes": {"path": "/apis", "verb": "get"}}})
        assert review.status.allowed
    assert checked == sum(len(rule.verbs) * len(rule.resources) for rules in rbac.RULES.values() for rule in rules)


def test_the_daemons_code_paths_work_with_their_tokens(daemons, kube_client, tmp_path):
    admin = client.CoreV1Api(kube_client)
    admin.create_node({"metadata": {"name": "n1"}})
    pod = admin.create_namespaced_pod("default", {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
    # the controller: leader election on its Lease (create, then get + update to renew, then release)
    elector = LeaderElector(client.CoordinationV1Api(daemons[rbac.CONTROLLER]), rbac.DEFAULT_LEASE_NAME, NAMESPACE, "replica-1")
    assert elector.try_acquire_or_renew() and elector.try_acquire_or_renew()
    elector.release()
    lease = client.CoordinationV1Api(kube_client).read_namespaced_lease(rbac.DEFAULT_LEASE_NAME, NAMESPACE)
    assert lease.spec.holder_identity in ("", None)
    # the agent: its node's CNR created and its status patched (the reclaimed resources plan), an Event on its pod
    agent = KubeClient(api_client=daemons[rbac.AGENT])
    status = {"resources": {"allocatable": {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "2k"},
                            "capacity": {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "2k"}}, "topologyZone": []}
    plan = cnr.plan_cnr_status("n1", None, status)
    assert [change.action for change in plan] == ["create", "patch"]
    for change in plan:
        apply_cnr_change(agent, change)
    written = client.CustomObjectsApi(kube_client).get_cluster_custom_object(rbac.CNR, "v1alpha1", "customnoderesources", "n1")
    assert written["status"]["resources"]["allocatable"]["resource.katalyst.kubewharf.io/reclaimed_millicpu"] == "2k"
    event = agent.emit_event(dict(kube_client.sanitize_for_serialization(pod), apiVersion="v1", kind="Pod"), "Test", "from the agent")
    assert event is not None and event["source"]["component"] == "katalyst-colocation"
    # the extender: its three informers list and watch
    cache, stop = ClusterCache(), threading.Event()
    try:
        cache.start(daemons[rbac.EXTENDER], stop)
        assert cache.synced(60)
        wait_until(lambda: cache.node("n1") is not None and cache.cnr("n1") is not None, what="the extender's caches")
    finally:
        stop.set()
        for informer in cache.informers:
            informer.stop()
    # every daemon with a client renews its own token (token_renewal.py; the agent's node binding: test_node_isolation.py)
    for component in (rbac.AGENT, rbac.CONTROLLER, rbac.EXTENDER):
        renewed_file = tmp_path / component / "token"
        assert TokenRenewer(daemons[component], str(renewed_file), renew_before_seconds=600).run_once() is not None
        claims = credentials.jwt_claims(renewed_file.read_text())
        assert credentials.token_identity(claims)[:2] == (NAMESPACE, component), claims


def test_calls_outside_the_rules_are_refused(daemons, kube_client):
    admin = client.CoreV1Api(kube_client)
    admin.create_node({"metadata": {"name": "n1"}})
    admin.create_namespaced_pod("default", {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})
    admin.create_namespace({"metadata": {"name": "other"}})
    client.CoordinationV1Api(kube_client).create_namespaced_lease(NAMESPACE, lease_body("someone-else", NAMESPACE))
    core = {component: client.CoreV1Api(api_client) for component, api_client in daemons.items()}
    # the agent deletes a pod, deletes a Node (it may patch its own: the node isolation policy), deletes its CNR
    forbidden(core[rbac.AGENT].delete_namespaced_pod, "web", "default")
    forbidden(core[rbac.AGENT].delete_node, "n1")
    forbidden(client.CustomObjectsApi(daemons[rbac.AGENT]).delete_cluster_custom_object, rbac.CNR, "v1alpha1", "customnoderesources", "n1")
    # the webhook patches a Node (it may call nothing at all), the extender patches a Node or binds a pod
    forbidden(core[rbac.WEBHOOK].patch_node, "n1", {"metadata": {"labels": {"x": "y"}}})
    forbidden(core[rbac.WEBHOOK].list_node)
    forbidden(core[rbac.EXTENDER].patch_node, "n1", {"metadata": {"labels": {"x": "y"}}})
    forbidden(core[rbac.EXTENDER].create_namespaced_pod_binding, "web", "default",
              {"metadata": {"name": "web"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}})
    # Leases: nobody writes one outside the controller's namespace; the controller touches no other Lease in it
    for component, api_client in daemons.items():
        forbidden(client.CoordinationV1Api(api_client).create_namespaced_lease, "other", lease_body("katalyst-controller", "other"))
    coordination = client.CoordinationV1Api(daemons[rbac.CONTROLLER])
    forbidden(coordination.replace_namespaced_lease, "someone-else", NAMESPACE, lease_body("someone-else", NAMESPACE))
    forbidden(coordination.delete_namespaced_lease, "someone-else", NAMESPACE)
    # Events: create only (and the controller's only in `default`); nobody updates or patches one
    event = KubeClient(api_client=daemons[rbac.AGENT]).emit_event(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}}, "Test", "from the agent")
    assert event is not None
    for component in rbac.COMPONENTS:
        forbidden(core[component].patch_namespaced_event, event["metadata"]["name"], "default", {"message": "changed"})
        forbidden(core[component].replace_namespaced_event, event["metadata"]["name"], "default", event)
    forbidden(core[rbac.CONTROLLER].create_namespaced_event, "other",
              {"metadata": {"name": "e1", "namespace": "other"}, "involvedObject": {"kind": "Node", "name": "n1"}, "reason": "Test"})
    # and nothing reads Secrets
    for component in rbac.COMPONENTS:
        forbidden(core[component].list_namespaced_secret, NAMESPACE)
    # tokens: each daemon may request one for its own ServiceAccount only (the webhook none at all)
    for component in rbac.COMPONENTS:
        for other in rbac.COMPONENTS:
            if other != component or component == rbac.WEBHOOK:
                forbidden(core[component].create_namespaced_service_account_token, other, NAMESPACE, {"spec": {"expirationSeconds": 600}})
