"""The demo on the real control plane (issue 12, item 5; issue 13, item 3): `python -m sandbox up --backend real` in a
temporary state directory (the pinned release's etcd, kube-apiserver with TLS, client certificates and Node+RBAC, the
admission webhooks, kube-controller-manager and kube-scheduler; the sandbox nodes registered as Node objects and kept
alive by the sandbox kubelets), then `python -m sandbox demo` twice: site.yml and the sample workload
(playbooks/examples/sample_workload.yml) converge, the second run changes nothing. Then, on the real API: the CRDs
are Established, the webhook is registered with its caBundle and failurePolicy, the sample workload's pods run where
kube-scheduler (restarted with the role's KubeSchedulerConfiguration, so through our extender) put them, the agent
bound the NUMA pair, the overcommit pool's node got the controller's annotations and a heartbeat amplified by the
webhook (once), the TideNodePool gave its nodes their roles, and the summary shows all of it per node; kube-scheduler
binds another pod through the extender. `down` leaves nothing running.

Where this host can run a real kubelet node (tests/integration/realnode.py), `up` starts one, kube-node-0: site.yml
installs katalyst-agent on it through the inventory `up` wrote, the sample workload's kill-order pods run there as real
processes, and the summary shows their oom_score_adj as read from /proc, in priority order. That node shares the
host's one real-node slot with the real-node tests: same xdist group, their node paused meanwhile.

Skipped when the pinned release is not built (`make kube-build`). One test: the demo runs are most of its time."""

import base64
import os
import re
import time
import urllib.request

import pytest
import yaml
from kubernetes import client, config

from ansible_collections.katalyst.colocation.plugins.module_utils.crd_manifests import ALL as OUR_CRDS
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import WEBHOOK_CONFIGURATION_NAME
from tests.integration import realnode
from tests.integration.realcluster import DOWN_TIMEOUT, needs_build, wait_for
from tests.integration.role_testing import free_port
from tests.integration.test_site_demo import check_sample_workload, check_summary, demo_recap, sandbox, workload_changes

pytestmark = [needs_build, pytest.mark.xdist_group("real-node")]
NO_REAL_NODE = realnode.skip_reason()   # why this host runs no real kubelet node (None: it does)
REAL_NODE_HOSTS = (realnode.NODE_NAME,) if NO_REAL_NODE is None else ()   # the real node's inventory adds it
KILL_ORDER_PODS = {"order-batch": realnode.NODE_NAME, "order-web": realnode.NODE_NAME, "order-critical": realnode.NODE_NAME}
TIMEOUT = 300   # a loaded 2-core machine: the controller's, webhook's and kubelets' next passes may take minutes


def real_api(state):
    return config.new_client_from_config(config_file=os.path.join(state, "kube", "admin.kubeconfig"))


def test_site_on_the_real_control_plane_converges_and_shows_colocation(tmp_path):
    state = tmp_path / "sandbox"
    with realnode.node_of_its_own():
        before = realnode.host_snapshot(state)
        try:
            timings = run_demo_twice(state)
            api = real_api(state)
            check_crds(api)
            check_webhook_registration(api)
            started = time.monotonic()
            check_sample_workload(client.CoreV1Api(api), client.CustomObjectsApi(api), lambda check, what: wait_for(what, check, timeout=TIMEOUT),
                                  extra_pods=KILL_ORDER_PODS if NO_REAL_NODE is None else None)
            check_scheduling(api, state)
            timings["checks"] = time.monotonic() - started
        finally:
            down = sandbox(state, "down", timeout=DOWN_TIMEOUT)
        assert down.returncode == 0, down.stdout + down.stderr
        check_nothing_runs(state)
        assert realnode.host_snapshot(state) == before       # the real node's `down` left the host as it found it
    print("real control plane timings: " + ", ".join("%s %.1f s" % item for item in timings.items()))


def run_demo_twice(state):
    """up --backend real, site.yml, site.yml again (changed=0); the seconds each took."""
    timings, started = {}, time.monotonic()
    up = sandbox(state, "up", "--backend", "real")
    assert up.returncode == 0, up.stdout[-5000:] + up.stderr[-2000:]
    assert "nodes Ready on the real control plane" in up.stdout, up.stdout[-3000:]
    if NO_REAL_NODE is None:
        assert "real kubelet node kube-node-0 Ready" in up.stdout, up.stdout[-3000:]
    else:
        assert "no real kubelet node on this host" in up.stdout, up.stdout[-3000:]
    timings["up"] = time.monotonic() - started
    assert (state / "backend").read_text().strip() == "real"
    kubeconfig = yaml.safe_load((state / "kube" / "admin.kubeconfig").read_text())
    assert "client-certificate-data" in kubeconfig["users"][0]["user"] and "token" not in kubeconfig["users"][0]["user"]

    # the demo's own ports are fixed; this sandbox may run beside it
    options = ["-e", "katalyst_sandbox_dir=%s" % state, "-e", "webhook_port=%d" % free_port(),
               "-e", "scheduler_extender_port=%d" % free_port()]
    first = sandbox(state, "demo", *options)
    recap = demo_recap(first, REAL_NODE_HOSTS)
    assert recap["sandbox-control"] > 0 and all(recap[node] > 0 for node in recap) and workload_changes(first) > 0
    assert "katalyst_kubeconfig=%s" % (state / "kube" / "admin.kubeconfig") in first.stdout
    assert "scheduler configuration changed: restarting kube-scheduler" in first.stdout, first.stdout[-3000:]
    # kube-scheduler took the extender before the sample workload's pods were created
    assert first.stdout.index("restarting kube-scheduler") < first.stdout.index("playbooks/examples/sample_workload.yml")
    check_summary(first.stdout)
    check_real_node_summary(first.stdout)
    timings["first demo"] = time.monotonic() - started - timings["up"]

    second = sandbox(state, "demo", *options)
    assert demo_recap(second, REAL_NODE_HOSTS) == dict.fromkeys(recap, 0), second.stdout[-5000:]
    assert "everything already runs: nothing to do" in second.stdout    # kube-scheduler kept: its configuration is the same
    check_summary(second.stdout)
    check_real_node_summary(second.stdout)
    timings["second demo"] = time.monotonic() - started - sum(timings.values())
    return timings


def check_real_node_summary(output):
    """kube-node-0's table in the summary: the kill-order pods' real processes, oom_score_adj read from /proc, the
    reclaimed pod first and the most protected (and largest) last, each more protected than the one before."""
    report = output[output.index("=== colocation on each node"):]
    if NO_REAL_NODE is not None:
        assert "\n" + realnode.NODE_NAME not in report, report
        return
    lines = report.split("\n" + realnode.NODE_NAME, 1)[1].split("\nsandbox-node-", 1)[0].splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [row[1] for row in rows] == ["order-batch", "order-web", "order-critical"], report
    assert all(row[-1] == "actual" for row in rows), report
    adjustments = [int(row[-2]) for row in rows]
    assert adjustments == sorted(adjustments, reverse=True) and len(set(adjustments)) == 3, report


def check_crds(api):
    """Our CRDs, as the crds module installed them, Established and with their status subresources."""
    extensions = client.ApiextensionsV1Api(api)
    wanted = set(OUR_CRDS)
    installed = {crd.metadata.name: crd for crd in extensions.list_custom_resource_definition().items}
    assert wanted <= set(installed), (wanted, sorted(installed))
    for name in wanted:
        crd = installed[name]
        assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions), name
        assert all(version.subresources and version.subresources.status is not None for version in crd.spec.versions if version.served), name


def check_webhook_registration(api):
    """The MutatingWebhookConfiguration for nodes/status with the generated CA and failurePolicy Ignore."""
    hooks = client.AdmissionregistrationV1Api(api).list_mutating_webhook_configuration().items
    assert [hook.metadata.name for hook in hooks] == [WEBHOOK_CONFIGURATION_NAME]
    webhook = hooks[0].webhooks[0]
    assert webhook.failure_policy == "Ignore"
    assert webhook.client_config.url.startswith("https://127.0.0.1:")
    assert base64.b64decode(webhook.client_config.ca_bundle).startswith(b"-----BEGIN CERTIFICATE-----")
    assert [(rule.operations, rule.resources) for rule in webhook.rules] == [(["UPDATE"], ["nodes/status"])]


def extender_filter_calls(port):
    """How many filter calls the extender answered with 200, from its /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30) as response:
        metrics = response.read().decode()
    match = re.search(r'^katalyst_http_requests_total\{code="200",daemon="katalyst-scheduler-extender",path="filter"\} (\S+)$',
                      metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def check_scheduling(api, state):
    """kube-scheduler runs with the role's extender entry, calls the extender and binds a pod; the sandbox kubelet runs it."""
    scheduler_config = yaml.safe_load((state / "kube" / "scheduler-config.yaml").read_text())
    extender = scheduler_config["extenders"][0]
    port = int(extender["urlPrefix"].rsplit(":", 1)[1])
    calls_before = extender_filter_calls(port)
    core = client.CoreV1Api(api)
    pod = {"metadata": {"name": "web"}, "spec": {
        "containers": [{"name": "app", "image": "app", "resources": {"requests": {"cpu": "1"}}}],
        "tolerations": [{"operator": "Exists"}]}}
    # the controller-manager creates the namespace's default ServiceAccount, which pod admission asks for
    wait_for("the pod to be admitted", lambda: core.create_namespaced_pod("default", pod), timeout=TIMEOUT)
    wait_for("kube-scheduler to bind the pod", lambda: core.read_namespaced_pod("web", "default").spec.node_name, timeout=TIMEOUT)
    assert extender_filter_calls(port) > calls_before
    wait_for("the sandbox kubelet to run the pod", lambda: core.read_namespaced_pod("web", "default").status.phase == "Running",
             timeout=TIMEOUT)


def check_nothing_runs(state):
    """After `down`: no component of the control plane, no kubelet, no daemon is running."""
    status = sandbox(state, "status", timeout=DOWN_TIMEOUT)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "running" not in status.stdout, status.stdout
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert re.search(r"^%s\s+stopped$" % component, status.stdout, re.MULTILINE), status.stdout
    services = state / "services"
    assert not [entry for entry in os.listdir(services) if entry.endswith(".pid")], os.listdir(services)
