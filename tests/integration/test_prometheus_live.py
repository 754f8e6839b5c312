"""Every dashboard query and every rule, on a real Prometheus (the Debian binary) scraping the four daemons.

The daemons run as the other integration tests run them (in this process, on the API emulator): the agent on a sandbox
sysroot (its watches cut by a fault proxy), the controller (tide, overcommit, cnr), the webhook (HTTPS, registered for nodes/status) and the scheduler
extender. A tide pool, an overcommit config, node heartbeats through the webhook and a filter call make the events the
panels show. Prometheus (scrape and rule evaluation every second) loads deploy/prometheus/katalyst-rules.yml; every
panel query must parse and return data, except the few in ALLOWED_EMPTY, and every rule must parse and be healthy.
"""

import json
import os
import shutil

import pytest
from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent import Agent
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.controller import Controller
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import ExtenderDaemon
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import WebhookDaemon, webhook_configuration
from deploy.grafana import generate
from sandbox.kubeapi.server import write_kubeconfig
from sandbox.scheduler import Extender
from sandbox.sysroot import build_sysroot
from tests.integration.backends import install_crds
from tests.integration.prometheus_server import PrometheusServer, scrape_config
from tests.integration.tlsutil import make_ca_and_server_cert
from tests.integration.waiting import wait_until
from tests.reliability.faultproxy import FaultProxy
from tests.unit.test_prometheus_rules import RULES, rules

PREFIX = "katalyst.kubewharf.io/"
AGENT_NODE = "agent-node"
POOL_NODES = ["pool-0", "pool-1", "pool-2", "pool-3"]
KUBELET = {"status": {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"}, "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}}
# series that only exist after an event this test does not cause, and where it is caused instead
ALLOWED_EMPTY = {
    "katalyst_oom_kills_total": "a kill seen by the BPF OOM observer: needs a real OOM kill and BPF (tests/integration/test_oom_agent.py)",
    "katalyst_agent_evictions_total": "a pod evicted (tests/integration/test_agent_eviction.py)",
    "katalyst_agent_plan_errors_total": "a plan that failed and was rolled back (tests/reliability)",
    "katalyst_token_expiry_timestamp_seconds": "a ServiceAccount token to renew; the daemons here use an admin kubeconfig "
                                               "(tests/integration/test_token_renewal.py)",
    "katalyst_token_renewals_total": "as katalyst_token_expiry_timestamp_seconds",
}

NEEDS_PROMETHEUS = pytest.mark.skipif(shutil.which("prometheus") is None, reason="the Debian package `prometheus` (.ci/apt-packages.txt) is missing")


def write_json(path, settings):
    path.write_text(json.dumps(settings))
    return str(path)


class Daemons:
    """The four daemons on the emulator, each serving /metrics on a free port; stop() stops what started."""

    def __init__(self, kubeapi, kube_client, tmp_path):
        self.stoppers, self.targets = [], []
        self.kubeapi, self.kube_client, self.tmp_path = kubeapi, kube_client, tmp_path

    def start_webhook(self):
        certs = make_ca_and_server_cert(self.tmp_path)
        webhook = WebhookDaemon({"listen_address": "127.0.0.1", "port": 0, "tls_cert_file": certs["cert"], "tls_key_file": certs["key"]})
        port = webhook.start()
        self.stoppers.append(webhook.stop)
        with open(certs["ca"], encoding="utf-8") as handle:
            client.AdmissionregistrationV1Api(self.kube_client).create_mutating_webhook_configuration(
                webhook_configuration("https://127.0.0.1:%d/node" % port, handle.read()))
        self.targets.append(scrape_config("katalyst-webhook", "127.0.0.1:%d" % port, ca_file=certs["ca"]))

    def _serve(self, job, daemon):
        port = daemon.serve_http("127.0.0.1", 0)
        self.targets.append(scrape_config(job, "127.0.0.1:%d" % port))
        self.stoppers.append(daemon.http.shutdown)

    def start_controller(self):
        config = write_json(self.tmp_path / "controller.yaml", {
            "kubeconfig": self.kubeapi.kubeconfig, "controllers": ["tide", "overcommit", "cnr"], "port": 0, "leader_election": False,
            "resync_seconds": 30, "tide": {"period_seconds": 0.5}, "overcommit": {"period_seconds": 1}, "cnr": {"period_seconds": 0.5}})
        controller = Controller(config, kube_api_client=self.kube_client).build()
        self._serve("katalyst-controller", controller.daemon)
        controller.start_informers(controller.daemon.stop_event)
        controller.daemon.start()
        self.stoppers.append(controller.daemon.stop)
        return controller

    def start_agent(self):
        """The agent, its API calls through a proxy that cuts every watch after a second: its informers' retries count."""
        proxy = FaultProxy(self.kubeapi.url, rate=1.0, faults=("cut",), cut_seconds=(0.5, 1.0)).start()
        self.stoppers.append(proxy.stop)
        kubeconfig = str(self.tmp_path / "agent-kubeconfig")
        write_kubeconfig(kubeconfig, proxy.url)
        sysroot = build_sysroot(str(self.tmp_path / "sysroot"), cgroup="v1")
        os.makedirs(sysroot + "/var/lib/kubelet", exist_ok=True)
        config = write_json(self.tmp_path / "agent.yaml", {
            "node_name": AGENT_NODE, "kubeconfig": kubeconfig, "sysroot": sysroot, "port": 0, "resync_seconds": 30,
            "qos_cgroups_period_seconds": 1, "realtime_overcommit_enabled": True, "realtime_overcommit_period_seconds": 1,
            "memory_provision_enabled": True, "memory_provision_period_seconds": 1, "reclaimed_resources_period_seconds": 1,
            "reclaimed_window_seconds": 3,     # the first per-NUMA reclaimed report after 3 passes, not the default 120
            "host_watermark_enabled": True, "host_watermark_period_seconds": 1, "host_watermark_scale_factor": 30,
            "eviction_enabled": True, "eviction_rootfs_minimum_free": "1%"})
        agent = Agent(config).build()
        self._serve("katalyst-agent", agent.daemon)
        for informer in (agent.pods, agent.node):
            informer.start(agent.daemon.stop_event)
        agent.daemon.start()
        self.stoppers.append(agent.daemon.stop)

    def start_extender(self):
        extender = ExtenderDaemon({"listen_address": "127.0.0.1", "port": 0, "resync_seconds": 30}, api_client=self.kube_client)
        port = extender.start(wait_synced=60)
        self.stoppers.append(extender.stop)
        self.targets.append(scrape_config("katalyst-scheduler-extender", "127.0.0.1:%d" % port))
        return extender, "http://127.0.0.1:%d" % port

    def stop(self):
        for stopper in reversed(self.stoppers):
            stopper()


@pytest.fixture
def cluster_with_daemons(kubeapi, kube_client, tmp_path):
    install_crds(kube_client)
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    daemons = Daemons(kubeapi, kube_client, tmp_path)
    try:
        daemons.start_webhook()
        for name in [AGENT_NODE] + POOL_NODES:
            labels = {"pool": "demo"} if name in POOL_NODES else {PREFIX + "overcommit_node_pool": "colocated"}
            core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
            core.patch_node_status(name, KUBELET)                     # a kubelet heartbeat, through the webhook
        daemons.start_controller()
        daemons.start_agent()
        # the events: a tide pool of empty nodes (one flips offline at once), an overcommit config for the agent's node
        custom.create_cluster_custom_object("tide.katalyst.kubewharf.io", "v1alpha1", "tidenodepools", {
            "apiVersion": "tide.katalyst.kubewharf.io/v1alpha1", "kind": "TideNodePool", "metadata": {"name": "demo"},
            "spec": {"nodeConfigs": {"nodeSelector": {"pool": "demo"}, "reserve": {"online": "25%", "offline": "25%"}}}})
        custom.create_cluster_custom_object("overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs", {
            "apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig", "metadata": {"name": "colocated"},
            "spec": {"nodeOvercommitSelectorVal": "colocated", "resourceOvercommitRatio": {"cpu": "2", "memory": "1.2"}}})
        extender, extender_url = daemons.start_extender()
        wait_until(lambda: all(extender.cache.cnr(name) for name in POOL_NODES), timeout=90, what="the CNRs in the extender's cache")
        pod = core.api_client.sanitize_for_serialization(core.create_namespaced_pod("default", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "app", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}))
        nodes = [core.api_client.sanitize_for_serialization(core.read_node(name)) for name in POOL_NODES]
        passing, _failed = Extender({"urlPrefix": extender_url, "filterVerb": "filter", "nodeCacheCapable": True}).filter(pod, nodes)
        assert passing, "the extender let no node through"
        for name in POOL_NODES:
            core.patch_node_status(name, KUBELET)                     # more heartbeats: webhook latency has samples
        yield daemons
    finally:
        daemons.stop()


def excused(expr):
    """The ALLOWED_EMPTY series a query reads."""
    return {name for name in ALLOWED_EMPTY if name in expr}


def wait_for_data(prometheus, items, timeout, what):
    """Wait until every (..., PromQL) item returns at least one sample; the failure names those still empty."""
    empty = set(items)

    def all_have_data():
        for item in sorted(empty):
            if prometheus.query(item[-1])["data"]["result"]:
                empty.discard(item)
        return not empty
    try:
        wait_until(all_have_data, timeout=timeout, interval=1, what=what)
    except AssertionError as error:
        raise AssertionError("%s; still empty: %s" % (error, sorted(empty))) from None


# the emulator only: the daemons and events are the cluster-side tests' own, and the budget is one cluster start
@NEEDS_PROMETHEUS
@pytest.mark.parametrize("kubeapi", ["emulator"], indirect=True)
def test_every_panel_query_and_rule_works_on_a_real_prometheus(cluster_with_daemons, tmp_path):
    prometheus = PrometheusServer(tmp_path / "prometheus", [RULES], cluster_with_daemons.targets).start()
    try:
        wait_until(lambda: len([target for target in prometheus.api("targets")["data"]["activeTargets"] if target["health"] == "up"]) == 4,
                   timeout=60, what="the four daemons scraped: %s" % cluster_with_daemons.targets)
        # the $instance variable's "All"
        queries = {(uid, title, expr.replace("$instance", ".*")) for uid, title, expr in generate.queries()}
        for uid, title, expr in sorted(queries):
            answer = prometheus.query(expr)
            assert answer["status"] == "success", "%s / %s does not parse: %s" % (uid, title, answer)
        must_have_data = {item for item in queries if not excused(item[2])}
        assert len(queries) - len(must_have_data) <= len(ALLOWED_EMPTY), "ALLOWED_EMPTY excuses more queries than it names series"
        wait_for_data(prometheus, must_have_data, 90, "data for every panel query")
        # every rule: loaded, evaluated without error, and its expression a valid query
        groups = prometheus.api("rules")["data"]["groups"]
        loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert set(loaded) == {rule.get("alert") or rule.get("record") for rule in rules()}
        wait_until(lambda: all(rule.get("lastEvaluation", "").startswith("20") for group in prometheus.api("rules")["data"]["groups"]
                               for rule in group["rules"]), timeout=30, what="every rule evaluated once")
        for group in prometheus.api("rules")["data"]["groups"]:
            for rule in group["rules"]:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        for rule in rules():
            assert prometheus.query(str(rule["expr"]))["status"] == "success", rule
        # the recording rules have data too (the alerts' conditions are expected to be false in a healthy cluster)
        wait_for_data(prometheus, [(rule["record"],) for rule in rules() if "record" in rule and not excused(str(rule["expr"]))], 60,
                      "data for every recording rule")
    finally:
        prometheus.stop()


def test_allowed_empty_names_only_series_the_panels_read():
    read = {name for _uid, _title, expr in generate.queries() for name in excused(expr)}
    assert read == set(ALLOWED_EMPTY), "an ALLOWED_EMPTY entry no panel reads: remove it"
