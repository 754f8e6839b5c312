"""roles/monitoring through the site playbook, as a user runs it: off by default; with katalyst_monitoring_enabled the
rules and the scrape jobs (targets from the inventory, as the daemon roles configure them) land on the Prometheus host,
pass `promtool check rules` / `check config`, show in --check --diff, and a second run changes nothing; bad input fails
with a clear message."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.integration.ansible_runner import REPO, run_playbook

PROMTOOL = shutil.which("promtool")
SITE = "- import_playbook: katalyst.colocation.site\n"
TASK_RULES = "Install the recording rules and alerts"
TASK_SCRAPE = "Write the scrape jobs, targets from the inventory"

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="the Debian package `prometheus` (.ci/apt-packages.txt) is missing")


@pytest.fixture
def inventory(tmp_path):
    """A Prometheus host in the control group (this machine), a controller on all addresses, and three nodes: on all
    addresses, on one address and port, and with the agent off."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": os.path.join(os.path.dirname(sys.executable), "python")}
    hosts = {"all": {"children": {
        "katalyst_control": {"hosts": {"prom-host": dict(local, ansible_host="10.0.0.10", tide_listen_address="0.0.0.0",
                                                         scheduler_extender_enabled=False)}},
        "katalyst_nodes": {"hosts": {"node-a": {"ansible_host": "10.0.1.1", "agent_listen_address": "0.0.0.0"},
                                     "node-b": {"agent_listen_address": "10.0.1.2", "agent_metrics_port": 19316},
                                     "node-c": {"agent_enabled": False}}}}}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(hosts))
    return str(path)


def site(tmp_path, inventory, *extra_args, **extra_vars):
    settings = {"monitoring_prometheus_rules_dir": str(tmp_path / "prometheus" / "rules.d"),
                "monitoring_scrape_config_path": str(tmp_path / "prometheus" / "scrape_configs" / "katalyst.yml"),
                "monitoring_promtool": PROMTOOL, "monitoring_webhook_ca_file": "/etc/katalyst/webhook-ca.pem"}
    settings.update(extra_vars)
    return run_playbook(SITE, tmp_path, extra_args=["-i", inventory, "--tags", "monitoring"] + list(extra_args), extra_vars=settings)


def by_task(tasks):
    """{task name without the role prefix: result}."""
    return {name.split(" : ", 1)[-1]: result for name, result in tasks.items()}


def changed(tasks):
    return sorted(name for name, result in by_task(tasks).items() if result.get("changed"))


def promtool(*args):
    check = subprocess.run([PROMTOOL] + list(args), capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    return check.stdout + check.stderr


def test_monitoring_files_from_the_site_playbook(tmp_path, inventory):
    rules = tmp_path / "prometheus" / "rules.d" / "katalyst-rules.yml"
    scrape = tmp_path / "prometheus" / "scrape_configs" / "katalyst.yml"
    # off by default
    code, tasks, output = site(tmp_path, inventory)
    assert code == 0, output
    assert not changed(tasks) and not os.path.exists(tmp_path / "prometheus"), output
    # check mode: what would change, nothing written
    code, tasks, output = site(tmp_path, inventory, "--check", "--diff", katalyst_monitoring_enabled=True)
    assert code == 0, output
    assert {TASK_RULES, TASK_SCRAPE} <= set(changed(tasks)) and not rules.exists() and not scrape.exists(), output
    assert "katalyst-controller" in str(by_task(tasks)[TASK_SCRAPE].get("diff")), by_task(tasks)[TASK_SCRAPE]
    # the run
    code, tasks, output = site(tmp_path, inventory, katalyst_monitoring_enabled=True)
    assert code == 0, output
    assert {TASK_RULES, TASK_SCRAPE} <= set(changed(tasks)), output
    with open(os.path.join(REPO, "deploy", "prometheus", "katalyst-rules.yml"), encoding="utf-8") as handle:
        assert rules.read_text() == handle.read()
    assert "SUCCESS" in promtool("check", "rules", str(rules))
    assert "SUCCESS" in promtool("check", "config", str(scrape))
    jobs = {job["job_name"]: job for job in yaml.safe_load(scrape.read_text())["scrape_configs"]}
    assert set(jobs) == {"katalyst-agent", "katalyst-controller", "katalyst-webhook"}      # the extender is off on prom-host
    targets = {job: [(static["targets"], static["labels"]["host"]) for static in jobs[job]["static_configs"]] for job in jobs}
    assert targets == {"katalyst-agent": [(["10.0.1.1:9316"], "node-a"), (["10.0.1.2:19316"], "node-b")],   # node-c: agent off
                       "katalyst-controller": [(["10.0.0.10:9317"], "prom-host")],
                       "katalyst-webhook": [(["10.0.0.10:9443"], "prom-host")]}
    assert jobs["katalyst-webhook"]["scheme"] == "https" and jobs["katalyst-webhook"]["tls_config"] == {"ca_file": "/etc/katalyst/webhook-ca.pem"}
    # idempotent
    code, tasks, output = site(tmp_path, inventory, katalyst_monitoring_enabled=True)
    assert code == 0 and not changed(tasks), (changed(tasks), output)


def test_bad_input_is_refused_clearly(tmp_path, inventory):
    code, _tasks, output = site(tmp_path, inventory, katalyst_monitoring_enabled=True, monitoring_scrape_interval="often")
    assert code != 0 and "monitoring_scrape_interval is empty or a Prometheus duration" in output, output
    assert not os.path.exists(tmp_path / "prometheus")


PROMETHEUS_RULE_CRD = {  # the operator's CRD, reduced to what the API server needs to serve the kind
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "prometheusrules.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"plural": "prometheusrules", "singular": "prometheusrule", "kind": "PrometheusRule", "listKind": "PrometheusRuleList"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


@pytest.mark.parametrize("kubeapi", ["emulator"], indirect=True)
def test_prometheus_rule_where_the_operator_is_installed(tmp_path, inventory, kubeapi, kube_client):
    from kubernetes import client   # pylint: disable=import-outside-toplevel
    client.ApiextensionsV1Api(kube_client).create_custom_resource_definition(PROMETHEUS_RULE_CRD)
    client.CoreV1Api(kube_client).create_namespace({"metadata": {"name": "monitoring"}})
    custom = client.CustomObjectsApi(kube_client)
    settings = {"katalyst_monitoring_enabled": True, "katalyst_kubeconfig": kubeapi.kubeconfig, "monitoring_namespace": "monitoring",
                "monitoring_prometheus_rule_labels": {"release": "prometheus"}}
    code, tasks, output = site(tmp_path, inventory, **settings)
    assert code == 0, output
    assert "Create or update the PrometheusRule" in changed(tasks), output
    rule = custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", "monitoring", "prometheusrules", "katalyst-rules")
    with open(os.path.join(REPO, "deploy", "prometheus", "katalyst-rules.yml"), encoding="utf-8") as handle:
        assert rule["spec"] == yaml.safe_load(handle)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert not os.path.exists(tmp_path / "prometheus" / "rules.d")                     # the object instead of the file
    assert os.path.exists(tmp_path / "prometheus" / "scrape_configs" / "katalyst.yml")  # the scrape jobs stay a file
    code, tasks, output = site(tmp_path, inventory, **settings)
    assert code == 0 and not changed(tasks), (changed(tasks), output)
