"""Issue 12, item 5 on the real control plane (sandbox/kube): the node webhook and the scheduler extender end to end.

One control plane in the test's tmp dir. site.yml's cluster plays run against it the way a user runs them (CRDs,
katalyst-controller, katalyst-webhook with a generated CA and its MutatingWebhookConfiguration, the
katalyst-scheduler-extender), the daemons under the sandbox's service stand-in; then kube-scheduler is restarted with
the `extenders` entry of the file the scheduler_extender role wrote, as the role tells users to. Fake nodes
(sandbox.kube.fakenodes) renew Leases and send nodes/status heartbeats through the real apiserver, which calls the
real webhook; the real kube-scheduler calls the real extender.

Skipped when the pinned release is not built (`make kube-build`). One test, not two: both parts share the control
plane and the playbook run (most of the time), and `-n 2` would give each test of a file its own worker and cluster.
Every wait is on a condition with a generous timeout: the test machines are loaded.
"""

import base64
import json
import ssl
import time
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit, placement
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import WEBHOOK_CONFIGURATION_NAME, WEBHOOK_NAME
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity
from sandbox.kube import cluster as kube_cluster
from sandbox.kube.fakenodes import conditions, now_seconds
from tests.integration.ansible_runner import REPO, run_playbook
from tests.integration.realcluster import cluster_cli, cluster_down, needs_build, start_fakenodes, stop_fakenodes, wait_for
from tests.integration.role_testing import stop_sandbox_service

kubernetes = pytest.importorskip("kubernetes")

PREFIX = "katalyst.kubewharf.io/"
SITE = "- import_playbook: katalyst.colocation.site\n"
WEBHOOK_ROLE = "- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: katalyst.colocation.webhook\n"
WEBHOOK_START_TASK = "katalyst.colocation.webhook : Run katalyst-webhook on the sandbox"
SERVICES = ("katalyst-controller-localhost", "katalyst-webhook-localhost", "katalyst-scheduler-extender-localhost")
CNR_ARGS = ("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources")
NOC_ARGS = ("overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs")
GIB = 2 ** 30

# Overcommit: three kubelet-less nodes of 32 CPUs and 128Gi; two join the pool "real" (cpu x2, memory x1.5).
RAW = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "100Gi"}
POOL, POOL_NODES, OUTSIDER = "real", ("oc-node-0", "oc-node-1"), "oc-node-2"
CPU_RATIO, MEMORY_RATIO = 2, 1.5
AMPLIFIED = {"cpu": 64 * 1000, "memory": 192 * GIB}            # cpu in milli, memory in bytes
# NUMA: numa-node-0 has one big NUMA node (16 CPUs) and three small ones (2 CPUs); numa-node-1 four of 4 CPUs.
NUMA_CPUS = {"numa-node-0": (16, 2, 2, 2), "numa-node-1": (4, 4, 4, 4)}
NUMA_GROUP = {"katalyst-test/numa": "true"}
HEARTBEATS = 3                  # "several more heartbeats"
TIMEOUT = 300                   # one condition on a loaded 2-core machine


# -- the environment: control plane, playbook, daemons, fake nodes --------------------------------------------------
def site_vars(base, kubeconfig, ports):
    """site.yml's cluster plays on this host, the daemons under the sandbox's service stand-in (as on the sandbox)."""
    control = base / "control"
    extra = {"katalyst_control_hosts": "localhost", "katalyst_node_hosts": "no_node_hosts", "katalyst_kubeconfig": kubeconfig,
             "katalyst_sandbox_dir": str(base / "services"), "tide_metrics_port": 0,
             "webhook_listen_address": "127.0.0.1", "webhook_service_host": "127.0.0.1", "webhook_port": ports["webhook"],
             "scheduler_extender_port": ports["extender"],
             # the role's own switches: on a loaded machine a slow answer must not make kube-scheduler skip the extender
             # (ignorable) and place a pod without it; the test is about the extender's decisions
             "scheduler_extender_ignorable": False, "scheduler_extender_http_timeout": "30s"}
    for role in ("tide", "webhook", "scheduler_extender"):
        extra.update({role + "_service_manager": "sandbox", role + "_python_mode": "current",
                      role + "_install_dir": str(control / "opt"), role + "_config_dir": str(control / "etc")})
    return extra


def run_site(base, extra, playbook=SITE):
    """site.yml (its cluster plays; no node hosts here) or another play; {task: result} of a successful run."""
    (base / "services").mkdir(exist_ok=True)
    returncode, tasks, output = run_playbook(playbook, base, [], extra, env={"PYTHONPATH": REPO})
    assert returncode == 0, output[-5000:]
    return tasks


def stop_service(base, name):
    stop_sandbox_service(base / "services", name, timeout=120)


def fake_options(prefix, count, status_seconds):
    return ["--prefix", prefix, "--count", count, "--cpu", RAW["cpu"], "--memory", RAW["memory"], "--status-seconds", status_seconds]


@pytest.fixture(name="env")
def fixture_env(tmp_path):
    """The control plane with site.yml's cluster parts on it, kube-scheduler calling our extender, and fake nodes."""
    state, timings, started = tmp_path / "cluster", {}, time.monotonic()
    webhook_port = kube_cluster.pick_port(set())
    ports = {"webhook": webhook_port, "extender": kube_cluster.pick_port({webhook_port})}
    fakes = []
    try:
        cluster_cli(state, "up")
        timings["cluster up"] = time.monotonic() - started
        kubeconfig = str(state / "admin.kubeconfig")
        extra = site_vars(tmp_path, kubeconfig, ports)
        run_site(tmp_path, extra)
        timings["site.yml"] = time.monotonic() - started - sum(timings.values())
        # the file the scheduler_extender role wrote, merged into kube-scheduler's configuration: the scheduler restarts
        extender_config = tmp_path / "control" / "etc" / "kube-scheduler-extender.yaml"
        output = cluster_cli(state, "up", "--scheduler-extender-config", str(extender_config))
        assert "scheduler configuration changed: restarting kube-scheduler" in output, output
        timings["scheduler restart"] = time.monotonic() - started - sum(timings.values())
        # a status heartbeat every 3 s: several soon
        fakes.append(start_fakenodes(kubeconfig, state / "logs" / "fakenodes-oc-node.log", *fake_options("oc-node-", 3, 3)))
        fakes.append(start_fakenodes(kubeconfig, state / "logs" / "fakenodes-numa-node.log", *fake_options("numa-node-", 2, 40)))
        api_client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        try:
            yield {"state": state, "base": tmp_path, "extra": extra, "ports": ports, "api": api_client,
                   "core": kubernetes.client.CoreV1Api(api_client), "custom": kubernetes.client.CustomObjectsApi(api_client),
                   "extender_config": extender_config, "timings": timings, "started": started}
        finally:
            api_client.close()
    finally:
        for fake in fakes:
            stop_fakenodes(*fake, timeout=60)
        for name in SERVICES:
            stop_service(tmp_path, name)
        cluster_down(state)


# -- reading nodes and metrics -------------------------------------------------------------------------------------
def milli_cpu(value):
    return parse_quantity(value).milli_value()


def memory_bytes(value):
    return parse_quantity(value).value()


def amounts(resources):
    """cpu (milli) and memory (bytes) of a status.allocatable or status.capacity."""
    return {"cpu": milli_cpu(resources["cpu"]), "memory": memory_bytes(resources["memory"])}


def raw_amounts():
    return amounts(RAW)


def heartbeat_time(node):
    return next(c.last_heartbeat_time for c in node.status.conditions if c.type == "Ready")


def node_ready(node):
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def scrape(url, context=None):
    with urllib.request.urlopen(url, timeout=30, context=context) as response:  # noqa: S310 (our own loopback daemon)
        return response.read().decode()


def metric_total(text, name, **labels):
    """The sum of the samples of metric `name` whose labels include `labels`."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def webhook_reviews(env, outcome):
    context = ssl.create_default_context(cafile=str(env["base"] / "control" / "etc" / "pki" / "ca.crt"))
    text = scrape("https://127.0.0.1:%d/metrics" % env["ports"]["webhook"], context)
    return metric_total(text, "katalyst_webhook_reviews_total", outcome=outcome)


def extender_metrics(env):
    return scrape("http://127.0.0.1:%d/metrics" % env["ports"]["extender"])


# -- part 1: the webhook ---------------------------------------------------------------------------------------------
def check_registration(env):
    """The role registered the webhook with the CA that signed its serving certificate, failurePolicy Ignore."""
    admission = kubernetes.client.AdmissionregistrationV1Api(env["api"])
    hook = admission.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION_NAME).webhooks[0]
    assert hook.client_config.url == "https://127.0.0.1:%d/node" % env["ports"]["webhook"]
    assert hook.failure_policy == "Ignore" and hook.rules[0].resources == ["nodes/status"]
    ca = (env["base"] / "control" / "etc" / "pki" / "ca.crt").read_text()
    assert base64.b64decode(hook.client_config.ca_bundle).decode() == ca


def join_pool(env):
    """Label the pool's nodes and declare the pool's ratios (the katalyst-controller annotates the nodes)."""
    core, custom = env["core"], env["custom"]
    wait_for("the fake nodes Ready", lambda: all(node_ready(core.read_node(n)) for n in POOL_NODES + (OUTSIDER,)), timeout=TIMEOUT)
    for name in POOL_NODES:
        core.patch_node(name, {"metadata": {"labels": {overcommit.POOL_LABEL: POOL}}})
    custom.create_cluster_custom_object(*NOC_ARGS, {
        "apiVersion": overcommit.NOC_API_VERSION, "kind": overcommit.NOC_KIND, "metadata": {"name": POOL},
        "spec": {"nodeOvercommitSelectorVal": POOL, "resourceOvercommitRatio": {"cpu": str(CPU_RATIO), "memory": str(MEMORY_RATIO)}}})


def assert_amplified_once(node):
    """allocatable and capacity = original x ratio (never x ratio squared); the annotations of docs/overcommit.md."""
    name, annotations = node.metadata.name, node.metadata.annotations or {}
    for field in ("allocatable", "capacity"):
        assert amounts(getattr(node.status, field)) == AMPLIFIED, "%s %s: %s" % (name, field, getattr(node.status, field))
    for resource in ("cpu", "memory"):
        assert parse_quantity(annotations[overcommit.ORIGINAL_ALLOCATABLE_KEY[resource]]) == parse_quantity(RAW[resource]), annotations
        assert parse_quantity(annotations[overcommit.ORIGINAL_CAPACITY_KEY[resource]]) == parse_quantity(RAW[resource]), annotations
    assert annotations[overcommit.RATIO_KEY["cpu"]] == str(CPU_RATIO)
    assert annotations[overcommit.RATIO_KEY["memory"]] == str(MEMORY_RATIO)
    assert milli_cpu(annotations[overcommit.OVERCOMMIT_ALLOCATABLE_KEY["cpu"]]) == AMPLIFIED["cpu"], annotations


def is_amplified(node):
    return amounts(node.status.allocatable) == AMPLIFIED and amounts(node.status.capacity) == AMPLIFIED


def wait_amplified(core, what):
    wait_for(what, lambda: all(is_amplified(core.read_node(n)) for n in POOL_NODES), timeout=TIMEOUT)
    for name in POOL_NODES:
        assert_amplified_once(core.read_node(name))


def watch_heartbeats(core, names, check, count=HEARTBEATS):
    """Wait until each node has sent `count` more status heartbeats (its Ready lastHeartbeatTime moved), calling
    `check(node)` on every read in between: it holds before, during and after each heartbeat."""
    seen = {name: {heartbeat_time(core.read_node(name))} for name in names}

    def enough():
        for name in names:
            node = core.read_node(name)
            check(node)
            seen[name].add(heartbeat_time(node))
        return all(len(times) > count for times in seen.values())
    wait_for("%d more heartbeats of %s" % (count, ", ".join(names)), enough, timeout=TIMEOUT)


def failed_open(state):
    """How many webhook calls kube-apiserver logged as failed under failurePolicy Ignore (it went on without them)."""
    log = (state / "logs" / "kube-apiserver.log").read_text(errors="replace")
    return sum(1 for line in log.splitlines() if "failing open" in line and WEBHOOK_NAME in line)


def kubelet_heartbeat(core, name):
    """What a real kubelet's status update carries: the measured (raw) capacity and allocatable; the stored Node back."""
    return core.patch_node_status(name, {"status": {"capacity": dict(RAW), "allocatable": dict(RAW),
                                                    "conditions": conditions(now_seconds(), now_seconds())}})


def check_webhook(env):
    core = env["core"]
    check_registration(env)
    join_pool(env)
    # the controller annotates, then the next heartbeat through the real apiserver comes back amplified
    wait_amplified(core, "the pool's nodes amplified by their heartbeats through the real apiserver")
    outsider = core.read_node(OUTSIDER)       # in no pool: the controller gives it ratio 1, the webhook leaves it as it is
    assert amounts(outsider.status.allocatable) == raw_amounts()
    assert (outsider.metadata.annotations or {}).get(overcommit.RATIO_KEY["cpu"], "1") == "1", outsider.metadata.annotations
    mutated = webhook_reviews(env, "mutated")
    assert mutated >= len(POOL_NODES)

    # never twice: kwok heartbeats pass the stored (amplified) values through; the webhook keeps the true originals
    unchanged = webhook_reviews(env, "unchanged")
    watch_heartbeats(core, POOL_NODES, assert_amplified_once)
    assert webhook_reviews(env, "unchanged") >= unchanged + HEARTBEATS * len(POOL_NODES)
    # a kubelet's update reports the raw values again: amplified from them, once
    for name in POOL_NODES:
        assert_amplified_once(kubelet_heartbeat(core, name))

    # the webhook stopped: failurePolicy Ignore, heartbeats still go through (the apiserver fails open). A kwok
    # heartbeat carries only conditions, so the stored values stay; a kubelet's raw values are stored as sent.
    failed_before = failed_open(env["state"])
    stop_service(env["base"], "katalyst-webhook-localhost")
    watch_heartbeats(core, POOL_NODES, assert_amplified_once, count=1)
    assert all(node_ready(core.read_node(n)) for n in POOL_NODES)
    wait_for("the apiserver to log that it failed open", lambda: failed_open(env["state"]) > failed_before, timeout=TIMEOUT)
    for name in POOL_NODES:
        node = kubelet_heartbeat(core, name)
        assert amounts(node.status.allocatable) == raw_amounts() and amounts(node.status.capacity) == raw_amounts(), node.status
        assert node.metadata.annotations[overcommit.RATIO_KEY["cpu"]] == str(CPU_RATIO)

    # the webhook role brings it back (starting it is its only change: same certificate, same registration); the
    # next heartbeats are amplified again from the kubelet's values, once
    tasks = run_site(env["base"], env["extra"], WEBHOOK_ROLE)
    changed = sorted(name for name, result in tasks.items() if result.get("changed"))
    assert changed == [WEBHOOK_START_TASK], changed
    wait_amplified(core, "the pool's nodes amplified again after the webhook came back")
    watch_heartbeats(core, POOL_NODES, assert_amplified_once)


# -- part 2: the scheduler extender ----------------------------------------------------------------------------------
def numa_cnr_status(cpus_per_numa):
    """A CNR status as katalyst-agent reports it: 2 sockets x 2 NUMA nodes, cpu and memory per NUMA zone."""
    sockets = {}
    for numa, cpus in enumerate(cpus_per_numa):
        resources = {"cpu": str(cpus), "memory": "32Gi"}
        sockets.setdefault(str(numa // 2), []).append({"type": "Numa", "name": str(numa),
                                                       "resources": {"allocatable": resources, "capacity": dict(resources)}})
    return {"topologyPolicy": "SingleNUMANodeContainerLevel",
            "topologyZone": [{"type": "Socket", "name": socket, "children": zones} for socket, zones in sorted(sockets.items())]}


def ensure_cnr(custom, name, annotations, status=None):
    """Play the node's katalyst-agent: its CNR's annotations and status (the controller may have created the CNR)."""
    try:
        custom.create_cluster_custom_object(*CNR_ARGS, {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
                                                        "metadata": {"name": name}})
    except kubernetes.client.exceptions.ApiException as err:
        if err.status != 409:
            raise
    custom.patch_cluster_custom_object(*CNR_ARGS, name, {"metadata": {"annotations": annotations}})
    if status is not None:
        # status is a subresource on a real apiserver: a create or a main-resource patch would drop it
        custom.patch_cluster_custom_object_status(*CNR_ARGS, name, {"status": status})
        stored = custom.get_cluster_custom_object(*CNR_ARGS, name)
        assert stored["status"]["topologyZone"] == status["topologyZone"], stored


def pod_body(name, cpu, labels=None, annotations=None, node_selector=None, guaranteed=True):
    resources = {"requests": {"cpu": cpu, "memory": "1Gi"}}
    if guaranteed:
        resources["limits"] = dict(resources["requests"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"containers": [{"name": "main", "image": "registry.invalid/app", "resources": resources}],
                     "nodeSelector": node_selector or {}, "automountServiceAccountToken": False}}


def numa_pod(name, cpu, role, node_selector=None, anti_role=None):
    """A dedicated_cores pod with numa_binding (Guaranteed), labelled app=tf,role=`role`; optionally with a required
    NUMA-level anti-affinity to the pods of role `anti_role`."""
    annotations = {PREFIX + "qos_level": "dedicated_cores", PREFIX + "memory_enhancement": json.dumps({"numa_binding": "true"})}
    if anti_role:
        annotations[placement.ANTI_AFFINITY_KEY] = json.dumps({"required": [{"matchLabels": {"app": "tf", "role": anti_role}, "zone": "numa"}]})
    return pod_body(name, cpu, {"app": "tf", "role": role}, annotations, node_selector or dict(NUMA_GROUP))


def on_node(name):
    return {"kubernetes.io/hostname": name}


def probe(env, pod, nodes):
    """Ask the extender what kube-scheduler asks it (filter, node names): (passing names, {failed name: reason})."""
    env["probes"] = env.get("probes", 0) + 1
    body = json.dumps({"pod": pod, "nodenames": list(nodes)}).encode()
    request = urllib.request.Request("http://127.0.0.1:%d/filter" % env["ports"]["extender"], data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (our own loopback daemon)
        result = json.load(response)
    return result.get("nodenames") or [], result.get("failedNodes") or {}


def wait_extender_sees(env, what, pod, nodes, passing):
    """The extender's cache caught up (informers): its filter answers `passing` for `nodes`; the failed reasons."""
    found = {}

    def agrees():
        found["answer"] = probe(env, pod, nodes)
        return sorted(found["answer"][0]) == sorted(passing)
    wait_for("the extender to see %s" % what, agrees, timeout=TIMEOUT)
    return found["answer"][1]


def create(core, body):
    core.create_namespaced_pod("default", body)
    return body["metadata"]["name"]


def wait_bound(core, name):
    return wait_for("pod %s bound by kube-scheduler" % name, lambda: core.read_namespaced_pod(name, "default").spec.node_name, timeout=TIMEOUT)


def wait_unschedulable(core, name, reason):
    """kube-scheduler gave up on the pod for now and says why: the extender's reason is in its message."""
    def condition():
        pod = core.read_namespaced_pod(name, "default")
        assert pod.spec.node_name is None, "%s was bound to %s" % (name, pod.spec.node_name)
        found = [c for c in pod.status.conditions or [] if c.type == "PodScheduled" and c.status == "False"]
        return found and reason in (found[0].message or "") and found[0].message
    return wait_for("pod %s unschedulable with %r" % (name, reason), condition, timeout=TIMEOUT)


def prepare_extender_nodes(env):
    """CNRs with NUMA topology for the NUMA nodes, a static CPU manager on an overcommitted node."""
    core, custom = env["core"], env["custom"]
    wait_for("the NUMA fake nodes Ready", lambda: all(node_ready(core.read_node(n)) for n in NUMA_CPUS), timeout=TIMEOUT)
    manager = {overcommit.CNR_CPU_MANAGER_KEY: "none", overcommit.CNR_MEMORY_MANAGER_KEY: "None", overcommit.CNR_GUARANTEED_CPUS_KEY: "0"}
    for name, cpus in NUMA_CPUS.items():
        core.patch_node(name, {"metadata": {"labels": NUMA_GROUP}})
        ensure_cnr(custom, name, manager, numa_cnr_status(cpus))
    ensure_cnr(custom, POOL_NODES[0], dict(manager, **{overcommit.CNR_CPU_MANAGER_KEY: overcommit.CPU_MANAGER_STATIC}))
    wait_for("the default ServiceAccount (pods need it)", lambda: core.read_namespaced_service_account("default", "default"), timeout=TIMEOUT)


def check_numa_fit(env, core):
    """A numa_binding pod that fits only numa-node-0's big NUMA node goes there; one that fits no NUMA node waits."""
    names = list(NUMA_CPUS)
    wait_extender_sees(env, "the NUMA topology", numa_pod("probe-fit", "8", "probe"), names, ["numa-node-0"])
    reason = wait_unschedulable(core, create(core, numa_pod("numa-too-big", "17", "big")), "cannot align")
    core.delete_namespaced_pod("numa-too-big", "default", grace_period_seconds=0)
    assert wait_bound(core, create(core, numa_pod("numa-fit", "8", "ps", anti_role="worker"))) == "numa-node-0"
    return reason


def check_numa_anti_affinity(env, core):
    """The parameter server (pinned on NUMA 0 by its agent: here the test) keeps workers off its NUMA node: a worker
    pinned to numa-node-0 waits, a free one goes to numa-node-1, a pod of another role fits next to it."""
    core.patch_namespaced_pod("numa-fit", "default", {"metadata": {"annotations": {placement.NUMA_BIND_RESULT_KEY: "0"}}})
    wait_extender_sees(env, "the parameter server's NUMA binding", numa_pod("probe-worker", "4", "worker"), ["numa-node-0"], [])
    reason = wait_unschedulable(core, create(core, numa_pod("worker-pinned", "4", "worker", on_node("numa-node-0"))),
                                placement.UNSCHEDULABLE_AFFINITY)
    assert wait_bound(core, create(core, numa_pod("worker", "4", "worker"))) == "numa-node-1"
    assert wait_bound(core, create(core, numa_pod("other-pinned", "4", "other", on_node("numa-node-0")))) == "numa-node-0"
    assert core.read_namespaced_pod("worker-pinned", "default").spec.node_name is None
    return reason


def check_overcommit_filter(env, core):
    """On the overcommitted node (32 CPUs shown as 64, static CPU manager), 40 cpuset-bound CPUs are refused while 40
    shared CPUs fit: kube-scheduler's own fit sees 64 for both."""
    node = core.read_node(POOL_NODES[0])
    assert is_amplified(node), node.status.allocatable
    big = pod_body("probe-cpuset", "40")
    wait_extender_sees(env, "the static CPU manager of %s" % POOL_NODES[0], big, [POOL_NODES[0]], [])
    reason = wait_unschedulable(core, create(core, pod_body("cpuset-40", "40", node_selector=on_node(POOL_NODES[0]))),
                                "node overcommitment insufficient cpu")
    assert wait_bound(core, create(core, pod_body("shared-40", "40", node_selector=on_node(POOL_NODES[0]), guaranteed=False))) == POOL_NODES[0]
    return reason


def check_scoring(core):
    """A pod with two feasible nodes: kube-scheduler scores them and asks the extender's prioritize too (with a single
    feasible node it skips scoring, as for every pod above)."""
    assert wait_bound(core, create(core, pod_body("scored", "1", node_selector=dict(NUMA_GROUP), guaranteed=False))) in NUMA_CPUS


def check_extender(env):
    core = env["core"]
    prepare_extender_nodes(env)
    before = extender_metrics(env)
    env["probes"] = 0
    reasons = [check_numa_fit(env, core), check_numa_anti_affinity(env, core), check_overcommit_filter(env, core)]
    check_scoring(core)
    after = extender_metrics(env)
    # the real kube-scheduler called the extender: more filter calls than the test's probes, and prioritize (only it)
    name, labels = "katalyst_http_requests_total", {"daemon": "katalyst-scheduler-extender", "code": "200"}
    filtered = metric_total(after, name, path="filter", **labels) - metric_total(before, name, path="filter", **labels)
    assert filtered > env["probes"], (filtered, env["probes"], after)
    assert metric_total(after, name, path="prioritize", **labels) > metric_total(before, name, path="prioritize", **labels), after
    for plugin in ("NUMA", "NodeOvercommitment"):
        name, labels = "katalyst_extender_filter_verdicts_total", {"plugin": plugin, "code": overcommit.UNSCHEDULABLE}
        assert metric_total(after, name, **labels) > metric_total(before, name, **labels), (plugin, after)
    assert "urlPrefix: http://127.0.0.1:%d" % env["ports"]["extender"] in (env["state"] / "scheduler-config.yaml").read_text()
    return reasons


@pytest.mark.slow
@needs_build
def test_webhook_and_extender_on_the_real_control_plane(env):
    snippet = yaml.safe_load(env["extender_config"].read_text())
    assert snippet["extenders"][0]["urlPrefix"] == "http://127.0.0.1:%d" % env["ports"]["extender"]
    timings, mark = env["timings"], time.monotonic()
    check_webhook(env)
    timings["webhook"] = time.monotonic() - mark
    mark = time.monotonic()
    reasons = check_extender(env)
    timings["extender"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - env["started"]
    print("kube-scheduler's messages: %s" % reasons)
    print("timings: " + ", ".join("%s %.1f s" % item for item in timings.items()))
