"""The daemons renew their own ServiceAccount token (daemons/token_renewal.py, docs/credentials.md "Renewal").

On both backends: the agent (token bound to its Node), the controller and the scheduler extender run in-process on a
kubeconfig whose tokenFile holds a token of their ServiceAccount (as service_account_kubeconfig writes it), with
`token_renew_before_seconds` large so that they renew at once: each writes a token of its own ServiceAccount (the
agent's bound to the same Node) to its `renewed_token_file` (0600) and keeps working. This is also the scenario in which
test_rbac_calls.py sees the `serviceaccounts/token` rule of each daemon used.

On the real control plane: the controller, started with a 600 s token bound to a Secret and `token_renew_before_seconds:
599`, renews; the Secret is deleted, which revokes the first token (401), and the controller still renews its Lease:
its later calls authenticate with the token it renewed.
"""

import os
import stat
import threading
import time

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ansible_collections.katalyst.colocation.plugins.module_utils import credentials, rbac
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent import Agent
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.controller import Controller
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ExtenderDaemon
from tests.integration.ansible_runner import run_playbook
from tests.integration.backends import install_crds
from tests.integration.test_rbac_real import PLAY as RBAC_PLAY, token_client
from tests.integration.waiting import wait_until

NAMESPACE = rbac.DEFAULT_NAMESPACE
NODE = "node-a"
# renew at once: more than any token's lifetime
AT_ONCE = 10 ** 9

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(kubeapi, kube_client, tmp_path):
    """The daemons' ServiceAccounts and RBAC (the rbac module, with the agent's node isolation policy where served), the
    CRDs, node A; returns ``credential(component, **spec)``: a kubeconfig whose tokenFile holds a new token of the
    component's ServiceAccount (TokenRequest ``spec``), and the token."""
    install_crds(kube_client)
    # the daemons' RBAC, the agent's node isolation policy (where served), the controller's Lease in `default`
    rc, tasks, out = run_playbook(RBAC_PLAY, tmp_path, [], {"kc": kubeapi.kubeconfig, "isolation": True, "lease_namespace": "default"})
    assert rc == 0, out
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    with open(kubeapi.kubeconfig) as handle:
        admin_cluster = credentials.kubeconfig_user(yaml.safe_load(handle))[0]

    def credential(component, **spec):
        token = core.create_namespaced_service_account_token(component, NAMESPACE, {"spec": dict(spec)}).status.token
        directory = tmp_path / component
        directory.mkdir(exist_ok=True)
        (directory / "token").write_text(token + "\n")
        kubeconfig = credentials.render_kubeconfig(admin_cluster["server"], str(directory / "token"), NAMESPACE, component)
        kubeconfig["clusters"][0]["cluster"] = dict(admin_cluster)
        (directory / "kubeconfig").write_text(credentials.dump_kubeconfig(kubeconfig))
        return str(directory / "kubeconfig"), token
    return credential


def write_config(path, **settings):
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def renewal_settings(tmp_path, component, renew_before=AT_ONCE):
    return {"renewed_token_file": str(tmp_path / "state" / component / "renewed-token"), "token_renew_before_seconds": renew_before}


def renewed_token(settings):
    """The token the daemon renewed, once its file is there (0600)."""
    path = settings["renewed_token_file"]
    wait_until(lambda: os.path.exists(path), timeout=60, what="the renewed token file %s" % path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    with open(path) as handle:
        return handle.read().strip()


def same_credential(first, renewed):
    """The renewed token is of the same ServiceAccount (and uid), the same audiences, lifetime and Node."""
    before, after = credentials.jwt_claims(first), credentials.jwt_claims(renewed)
    assert credentials.token_identity(after) == credentials.token_identity(before), after
    assert credentials.token_node(after) == credentials.token_node(before) and sorted(after["aud"]) == sorted(before["aud"]), after
    assert after["exp"] >= before["exp"] and after["exp"] - after["iat"] == before["exp"] - before["iat"], (before, after)
    return after


def renewals(daemon, result="renewed"):
    return daemon.registry.get_sample_value("katalyst_token_renewals_total", {"daemon": daemon.name, "result": result}) or 0


class RunningController:
    """The controller (tide, leader election on its Lease in `default`, short timings) as Controller.start() drives it,
    without the signal handlers and the HTTP server."""

    def __init__(self, tmp_path, kubeconfig, renewal):
        config_path = write_config(tmp_path / "controller.yaml", kubeconfig=kubeconfig, lease_namespace="default", identity="renewing",
                                   lease_duration_seconds=4, renew_deadline_seconds=3, retry_period_seconds=0.5, **renewal)
        self.controller = Controller(config_path).build()
        stop = self.controller.daemon.stop_event
        self.controller.start_informers(stop)
        self.elector = threading.Thread(target=self.controller.elector.run, args=(stop, self.controller._lead), daemon=True)  # pylint: disable=protected-access
        self.elector.start()
        self.controller.daemon.start()

    def close(self):
        self.controller.daemon.stop()
        self.elector.join(timeout=20)
        for informer in self.controller.informers.values():
            informer.stop()


def test_every_daemon_renews_its_own_token_and_keeps_working(kubeapi, kube_client, cluster, tmp_path):
    core = client.CoreV1Api(kube_client)
    node_uid = core.read_node(NODE).metadata.uid
    started = []
    try:
        # the agent: its token bound to its Node; only its API loops on (the informers on its pods and Node)
        agent_kubeconfig, agent_token = cluster(rbac.AGENT, expirationSeconds=600,
                                                boundObjectRef={"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node_uid})
        agent_renewal = renewal_settings(tmp_path, rbac.AGENT)
        agent = Agent(write_config(tmp_path / "agent.yaml", node_name=NODE, kubeconfig=agent_kubeconfig, sysroot=str(tmp_path),
                                   qos_cgroups_enabled=False, oom_priority_enabled=False, reclaimed_resources_enabled=False,
                                   numa_binding_enabled=False, realtime_overcommit_enabled=False, **agent_renewal)).build()
        for informer in (agent.pods, agent.node):
            informer.start(agent.daemon.stop_event)
        agent.daemon.start()
        started.append(lambda: [agent.daemon.stop()] + [informer.stop() for informer in (agent.pods, agent.node)])
        # the controller: tide with leader election on its Lease in `default`
        controller_kubeconfig, controller_token = cluster(rbac.CONTROLLER, expirationSeconds=3600)
        controller_renewal = renewal_settings(tmp_path, rbac.CONTROLLER)
        controller = RunningController(tmp_path, controller_kubeconfig, controller_renewal)
        started.append(controller.close)
        # the scheduler extender: its informers
        extender_kubeconfig, extender_token = cluster(rbac.EXTENDER, expirationSeconds=600)
        extender_renewal = renewal_settings(tmp_path, rbac.EXTENDER)
        extender = ExtenderDaemon(dict(kubeconfig=extender_kubeconfig, listen_address="127.0.0.1", port=0, **extender_renewal))
        extender.start(wait_synced=60)
        extender.daemon.start()
        started.append(extender.stop)

        claims = same_credential(agent_token, renewed_token(agent_renewal))
        assert credentials.token_node(claims) == (NODE, node_uid)
        same_credential(controller_token, renewed_token(controller_renewal))
        same_credential(extender_token, renewed_token(extender_renewal))
        for daemon in (agent.daemon, controller.controller.daemon, extender.daemon):
            wait_until(lambda daemon=daemon: renewals(daemon) >= 1, what="%s to count its renewal" % daemon.name)
            assert renewals(daemon, "error") == 0
            assert daemon.registry.get_sample_value("katalyst_token_expiry_timestamp_seconds", {"daemon": daemon.name}) > claims["iat"]

        # and they keep working: watches see new objects, the controller keeps its Lease
        core.create_node({"metadata": {"name": "node-b"}})
        core.create_namespaced_pod("default", {"metadata": {"name": "on-a"}, "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}})
        wait_until(lambda: extender.cache.node("node-b") is not None, what="the extender to see a new node")
        wait_until(lambda: any(pod["metadata"]["name"] == "on-a" for pod in agent.pods.items()), what="the agent to see its new pod")
        lease = client.CoordinationV1Api(kube_client)
        held = lease.read_namespaced_lease(rbac.DEFAULT_LEASE_NAME, "default").spec.renew_time
        wait_until(lambda: lease.read_namespaced_lease(rbac.DEFAULT_LEASE_NAME, "default").spec.renew_time > held, what="the Lease renewed")
        for daemon in (agent.daemon, controller.controller.daemon, extender.daemon):
            healthy, loops = daemon.health()
            assert loops["token_renewal"]["healthy"] and loops["token_renewal"]["failures"] == 0, (daemon.name, loops)
    finally:
        for stop in reversed(started):
            stop()


def test_the_controller_renews_and_then_calls_with_the_new_token(kubeapi, kube_client, cluster, tmp_path):
    if kubeapi.backend != "real":
        pytest.skip("the emulator authenticates nobody and binds tokens to Nodes only: the real control plane shows which token is used")
    core = client.CoreV1Api(kube_client)
    secret = core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "first-controller-token"}})
    # a first token that can be revoked on its own: bound to a Secret (deleting it invalidates the token)
    kubeconfig, first = cluster(rbac.CONTROLLER, expirationSeconds=600,
                                boundObjectRef={"apiVersion": "v1", "kind": "Secret", "name": secret.metadata.name, "uid": secret.metadata.uid})
    issued = credentials.jwt_claims(first)["iat"]
    # a token is due with 599 s left: once it is a second old (a condition on the clock, so the first pass renews)
    wait_until(lambda: credentials.plan_token_renewal(first, time.time(), 599) is not None, what="the first token to be due")
    settings = renewal_settings(tmp_path, rbac.CONTROLLER, renew_before=599)
    controller = RunningController(tmp_path, kubeconfig, settings)
    try:
        renewed = renewed_token(settings)
        claims = credentials.jwt_claims(renewed)
        assert credentials.token_identity(claims) == credentials.token_identity(credentials.jwt_claims(first))
        assert claims["iat"] > issued and claims["exp"] - claims["iat"] == 600 and "secret" not in claims["kubernetes.io"]
        wait_until(controller.controller.leading.is_set, what="the controller to lead")

        # revoke the first token: the API server refuses it from now on
        core.delete_namespaced_secret(secret.metadata.name, NAMESPACE)

        def refused(token):
            with token_client(kube_client, token) as api_client:
                try:
                    client.AuthenticationV1Api(api_client).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                                       "kind": "SelfSubjectReview"})
                except ApiException as exc:
                    return exc.status == 401
            return False
        wait_until(lambda: refused(first), timeout=120, what="the first token to be revoked")
        assert not refused(renewed)
        # the controller still renews its Lease, so its calls now carry the renewed token
        lease = client.CoordinationV1Api(kube_client)
        held = lease.read_namespaced_lease(rbac.DEFAULT_LEASE_NAME, "default").spec.renew_time
        wait_until(lambda: lease.read_namespaced_lease(rbac.DEFAULT_LEASE_NAME, "default").spec.renew_time > held, what="the Lease renewed")
        assert controller.controller.leading.is_set()
        assert lease.read_namespaced_lease(rbac.DEFAULT_LEASE_NAME, "default").spec.holder_identity == "renewing"
        assert renewals(controller.controller.daemon) >= 1 and renewals(controller.controller.daemon, "error") == 0
    finally:
        controller.close()
