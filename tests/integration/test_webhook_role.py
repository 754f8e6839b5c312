"""The webhook role: generates a CA and a certificate (or installs the user's), runs katalyst-webhook (sandbox
service stand-in), registers the MutatingWebhookConfiguration through the API; kubelet heartbeats through the
emulator come back amplified; idempotent; check mode writes nothing; the systemd unit verifies and is hardened."""

import base64
import json
import subprocess
import sys

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import WEBHOOK_CONFIGURATION_NAME
from tests.integration.ansible_runner import REPO, run_playbook
from tests.integration.role_testing import assert_hardened_unit, free_port, needs_systemd_analyze, role_play, stop_sandbox_service
from tests.integration.tlsutil import make_ca_and_server_cert

PREFIX = "katalyst.kubewharf.io/"
PLAY = role_play("webhook")
SERVICE_TASK = "katalyst.colocation.webhook : Run katalyst-webhook on the sandbox"
REGISTER_TASK = "katalyst.colocation.webhook : Register the MutatingWebhookConfiguration with the CA bundle"


def role_vars(tmp_path, kubeconfig, port):
    return {"webhook_service_manager": "sandbox", "webhook_python_mode": "current", "webhook_port": port,
            "webhook_listen_address": "127.0.0.1", "webhook_service_host": "127.0.0.1",
            "webhook_install_dir": str(tmp_path / "opt"), "webhook_config_dir": str(tmp_path / "etc"),
            "webhook_kubeconfig": kubeconfig, "katalyst_sandbox_dir": str(tmp_path / "sandbox")}


def stop_service(tmp_path, name="katalyst-webhook-localhost"):
    stop_sandbox_service(tmp_path / "sandbox", name)


def heartbeat(core, name):
    core.patch_node_status(name, {"status": {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                                             "allocatable": {"cpu": "7500m", "memory": "15Gi", "pods": "110"}}})
    return core.read_node(name)


def test_role_generates_tls_runs_and_registers_the_webhook_idempotently(kubeapi, kube_client, tmp_path):
    core = client.CoreV1Api(kube_client)
    admission = client.AdmissionregistrationV1Api(kube_client)
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "n1", "annotations": {PREFIX + "cpu_overcommit_ratio": "2", PREFIX + "memory_overcommit_ratio": "1.5"}}})
    env = {"PYTHONPATH": REPO}
    (tmp_path / "sandbox").mkdir()
    extra = role_vars(tmp_path, kubeapi.kubeconfig, free_port())
    try:
        # check mode on a fresh host: reports the work, writes nothing, registers nothing
        rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check", "--diff"], extra, env=env)
        assert rc == 0, out[-3000:]
        assert not (tmp_path / "etc" / "pki" / "webhook.key").exists()
        assert admission.list_mutating_webhook_configuration().items == []

        rc, tasks, out = run_playbook(PLAY, tmp_path, [], extra, env=env)
        assert rc == 0, out[-3000:]
        assert tasks[SERVICE_TASK]["changed"] is True and tasks[REGISTER_TASK]["changed"] is True
        pki = tmp_path / "etc" / "pki"
        assert oct(pki.stat().st_mode & 0o777) == "0o700"
        assert oct((pki / "webhook.key").stat().st_mode & 0o777) == "0o600"
        assert oct((pki / "ca.key").stat().st_mode & 0o777) == "0o600"
        registered = admission.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION_NAME)
        hook = registered.webhooks[0]
        assert hook.client_config.url == "https://127.0.0.1:%d/node" % extra["webhook_port"]
        assert hook.failure_policy == "Ignore" and hook.rules[0].resources == ["nodes/status"]
        assert base64.b64decode(hook.client_config.ca_bundle).decode() == (pki / "ca.crt").read_text()
        openssl = subprocess.run(["openssl", "verify", "-CAfile", str(pki / "ca.crt"), str(pki / "webhook.crt")],
                                 capture_output=True, text=True, check=False)
        assert openssl.returncode == 0, openssl.stdout + openssl.stderr

        # the emulator calls the webhook over HTTPS with that CA bundle: the heartbeat comes back amplified
        node = heartbeat(core, "n1")
        assert node.status.allocatable == {"cpu": "15", "memory": "23040Mi", "pods": "110"}
        assert node.metadata.annotations[PREFIX + "original_allocatable_cpu"] == "7500m"

        certificate = (pki / "webhook.crt").read_text()
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], extra, env=env)
        assert rc == 0, out[-3000:]
        changed = [name for name, result in tasks.items() if result.get("changed")]
        assert changed == [], changed                              # no new certificate, no restart, no re-registration
        assert (pki / "webhook.crt").read_text() == certificate

        # a certificate about to expire is renewed (and the service restarted with it)
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(extra, webhook_tls_renew_days=400), env=env)
        assert rc == 0, out[-3000:]
        assert (pki / "webhook.crt").read_text() != certificate and tasks[SERVICE_TASK]["changed"] is True
        assert heartbeat(core, "n1").status.capacity["cpu"] == "16"
    finally:
        stop_service(tmp_path)


def test_role_installs_the_users_certificate(kubeapi, kube_client, tmp_path):
    certs = make_ca_and_server_cert(tmp_path)
    read = {name: open(path).read() for name, path in certs.items()}
    env = {"PYTHONPATH": REPO}
    (tmp_path / "sandbox").mkdir()
    extra = dict(role_vars(tmp_path, kubeapi.kubeconfig, free_port()),
                 webhook_tls_cert=read["cert"], webhook_tls_key=read["key"], webhook_tls_ca=read["ca"])
    core = client.CoreV1Api(kube_client)
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "annotations": {PREFIX + "cpu_overcommit_ratio": "2"}}})
    try:
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], extra, env=env)
        assert rc == 0, out[-3000:]
        pki = tmp_path / "etc" / "pki"
        assert not (pki / "ca.key").exists()                        # nothing generated
        assert (pki / "webhook.crt").read_text().strip() == read["cert"].strip()
        assert oct((pki / "webhook.key").stat().st_mode & 0o777) == "0o600"
        assert read["key"].strip() not in out                       # the key is never logged
        hook = client.AdmissionregistrationV1Api(kube_client).read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION_NAME).webhooks[0]
        assert base64.b64decode(hook.client_config.ca_bundle).decode() == read["ca"]
        assert heartbeat(core, "n1").status.allocatable["cpu"] == "15"
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], extra, env=env)
        assert rc == 0 and [name for name, result in tasks.items() if result.get("changed")] == [], out[-3000:]
    finally:
        stop_service(tmp_path)


@needs_systemd_analyze
def test_unit_verifies_and_is_hardened(tmp_path):
    assert_hardened_unit("webhook", tmp_path, "katalyst-webhook.service", [
        "DynamicUser=yes", "LoadCredential=tls.key:/etc/katalyst/pki/webhook.key",
        "ExecStart=/usr/bin/python3 -m katalyst_colocation.daemons.webhook --config /etc/katalyst/webhook.yaml"])


TWO_HOSTS_PLAY = """
- hosts: control
  gather_facts: false
  roles:
    - role: katalyst.colocation.webhook
"""
SERVICE_OBJECTS_TASK = "katalyst.colocation.webhook : Register the webhook's Service and EndpointSlices"


@pytest.mark.emulator_only("the sandbox's real control plane runs no kube-proxy and no --enable-aggregator-routing: "
                           "it cannot reach a Service's endpoints (the URL mode is what runs there)")
def test_role_routes_the_webhook_to_every_control_host(kubeapi, kube_client, tmp_path):
    """Two control hosts (127.0.0.1 and 127.0.0.2, same port): one selectorless Service, an EndpointSlice listing both,
    certificates naming the Service; with one host's webhook stopped the other still amplifies every heartbeat."""
    core = client.CoreV1Api(kube_client)
    admission = client.AdmissionregistrationV1Api(kube_client)
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "n1", "annotations": {PREFIX + "cpu_overcommit_ratio": "2", PREFIX + "memory_overcommit_ratio": "1.5"}}})
    (tmp_path / "sandbox").mkdir()
    port = free_port()
    hosts = {}
    for name, address in (("control-a", "127.0.0.1"), ("control-b", "127.0.0.2")):
        hosts[name] = {"ansible_host": address, "webhook_listen_address": address, "webhook_install_dir": str(tmp_path / name / "opt"),
                       "webhook_config_dir": str(tmp_path / name / "etc"), "webhook_pki_dir": str(tmp_path / name / "etc" / "pki")}
    inventory = tmp_path / "control.json"
    inventory.write_text(json.dumps({"all": {"children": {"control": {"hosts": hosts, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}))
    extra = {"webhook_service_manager": "sandbox", "webhook_python_mode": "current", "webhook_port": port,
             "webhook_kubeconfig": kubeapi.kubeconfig, "katalyst_sandbox_dir": str(tmp_path / "sandbox")}
    env = {"PYTHONPATH": REPO}
    try:
        rc, tasks, out = run_playbook(TWO_HOSTS_PLAY, tmp_path, ["-i", str(inventory), "--check", "--diff"], extra, env=env)
        assert rc == 0, out[-3000:]
        assert admission.list_mutating_webhook_configuration().items == [] and core.list_namespaced_service("katalyst-system").items == []

        rc, tasks, out = run_playbook(TWO_HOSTS_PLAY, tmp_path, ["-i", str(inventory)], extra, env=env)
        assert rc == 0, out[-3000:]
        assert tasks[SERVICE_OBJECTS_TASK]["changed"] is True and tasks[REGISTER_TASK]["changed"] is True
        hook = admission.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION_NAME).webhooks[0]
        assert hook.client_config.url is None
        assert (hook.client_config.service.namespace, hook.client_config.service.name, hook.client_config.service.port,
                hook.client_config.service.path) == ("katalyst-system", "katalyst-webhook", 443, "/node")
        service = core.read_namespaced_service("katalyst-webhook", "katalyst-system")
        assert service.spec.selector is None and service.spec.ports[0].target_port == port
        slices = client.CustomObjectsApi(kube_client).list_namespaced_custom_object("discovery.k8s.io", "v1", "katalyst-system", "endpointslices")
        assert [(item["addressType"], [endpoint["addresses"][0] for endpoint in item["endpoints"]], item["ports"][0]["port"])
                for item in slices["items"]] == [("IPv4", ["127.0.0.1", "127.0.0.2"], port)]
        for name in hosts:
            pki = tmp_path / name / "etc" / "pki"
            text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(pki / "webhook.crt")],
                                  capture_output=True, text=True, check=True).stdout
            assert "DNS:katalyst-webhook.katalyst-system.svc," in text and "DNS:katalyst-webhook.katalyst-system.svc.cluster.local" in text
            ca = tmp_path / "control-a" / "etc" / "pki" / "ca.crt"            # one CA, on the first host
            assert subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(pki / "webhook.crt")], capture_output=True, check=False).returncode == 0
        assert heartbeat(core, "n1").status.allocatable == {"cpu": "15", "memory": "23040Mi", "pods": "110"}

        rc, tasks, out = run_playbook(TWO_HOSTS_PLAY, tmp_path, ["-i", str(inventory)], extra, env=env)
        assert rc == 0, out[-3000:]
        assert '"changed": true' not in out, [name for name, result in tasks.items() if result.get("changed")]

        # either control host's webhook down: the other amplifies every heartbeat
        for name in hosts:
            stop_service(tmp_path, "katalyst-webhook-" + name)
            for _heartbeat in range(4):
                assert heartbeat(core, "n1").status.allocatable["cpu"] == "15"
            rc, tasks, out = run_playbook(TWO_HOSTS_PLAY, tmp_path, ["-i", str(inventory)], extra, env=env)
            assert rc == 0, out[-3000:]
    finally:
        for name in hosts:
            stop_service(tmp_path, "katalyst-webhook-" + name)
