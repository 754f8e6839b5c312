"""kubernetes.core, the node webhook and tide on the REAL kubelet node (sandbox/kube/node.py): containerd + runc + the
pinned kubelet joined to a real control plane, pods that really run (locally built images, `imagePullPolicy: Never`).

1. kubernetes.core through ansible-playbook, as a user runs it: `k8s` waits for a Deployment to be available, `k8s_exec`
   and `k8s_log` reach a pod through the apiserver and the kubelet, `k8s_drain` evicts the pods (they come back
   Pending: kube-node-0 is the only schedulable node) and `state: uncordon` lets them run again.
2. The node webhook (installed by its role, registered in the real apiserver with its caBundle) amplifies the real
   kubelet's own `nodes/status` updates: once the overcommit controller annotated the node, every status update the
   kubelet sends (with the raw allocatable it measures) is amplified again, exactly once, and the original values are
   kept in the annotations of the spec. (While the stored node shows other values than it measures, the kubelet
   sends its status every nodeStatusUpdateFrequency, 10 s, instead of every nodeStatusReportFrequency.)
3. Tide: kube-node-0 flipped offline by katalyst-controller gets the online-not-used NoExecute taint; the real
   kube-controller-manager evicts the online pod on it and the real kubelet stops its containers (the pod object goes
   away only when the kubelet confirmed), the offline pod that tolerates the taint keeps running. Tide keeps at least
   one online tide node, so the pool has a second, kubelet-less node (sandbox.kube.fakenodes) that stays online.

Each test uses its own namespace, names and daemons and leaves the node as it found it (schedulable, no labels,
taints or annotations of ours), so the tests run alone or in any order next to the other real-node modules.
"""

import base64
import contextlib
import fractions
import pathlib
import ssl
import time

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit, tide
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import WEBHOOK_CONFIGURATION_NAME, WEBHOOK_NAME
from sandbox.kube import cluster as kube_cluster, images
from tests.integration import realnode
from tests.integration.ansible_runner import REPO, run_playbook
from tests.integration.realcluster import start_fakenodes, stop_fakenodes, wait_for
from tests.integration.test_real_node import container_pids
from tests.integration.test_real_tide_lease_kubectl import OFFLINE_TOLERATION, POOL_LABEL, ControlPlane, Replica, drop_pool, ensure_crds, pool_body, \
    tide_view
from tests.integration.test_real_webhook_extender import amounts, heartbeat_time, memory_bytes, metric_total, milli_cpu, scrape, \
    stop_service

kubernetes = pytest.importorskip("kubernetes")

pytestmark = realnode.marks
NODE = realnode.NODE_NAME
TIMEOUT = 300           # one condition on a loaded 2-core machine (process starts, the kubelet's next status update)
HEARTBEATS = 3          # kubelet status updates the amplification must survive


# -- shared helpers --------------------------------------------------------------------------------------------------
def api_client(real_node):
    return kubernetes.config.new_client_from_config(config_file=real_node.kubeconfig)


def not_found(err):
    return isinstance(err, kubernetes.client.exceptions.ApiException) and err.status == 404


def read_or_none(read, *args):
    try:
        return read(*args)
    except kubernetes.client.exceptions.ApiException as err:
        if not_found(err):
            return None
        raise


def ensure_namespace(core, name):
    """A namespace whose default ServiceAccount exists (the ServiceAccount admission needs it before pods)."""
    try:
        core.create_namespace({"metadata": {"name": name}})
    except kubernetes.client.exceptions.ApiException as err:
        if err.status != 409:
            raise
    wait_for("the default ServiceAccount of %s" % name, lambda: core.read_namespaced_service_account("default", name), timeout=TIMEOUT)


def delete_namespace(core, name):
    """Delete the namespace and wait until it is gone (the real kubelet confirms its pods' termination)."""
    with contextlib.suppress(kubernetes.client.exceptions.ApiException):
        core.delete_namespace(name)
    wait_for("namespace %s gone" % name, lambda: read_or_none(core.read_namespace, name) is None, timeout=TIMEOUT)


def node_schedulable_again(core, labels=(), annotations=()):
    """Undo what a test may have left on kube-node-0: cordon, tide taints, the given labels and annotations."""
    node = core.read_node(NODE)
    taints = [t for t in node.spec.taints or [] if not t.key.startswith(tide.GROUP)]
    body = {"spec": {"unschedulable": None, "taints": core.api_client.sanitize_for_serialization(taints) or None}}
    meta = {}
    if labels:
        meta["labels"] = {key: None for key in labels}
    if annotations:
        meta["annotations"] = {key: None for key in annotations}
    if meta:
        body["metadata"] = meta
    core.patch_node(NODE, body)


def pod_running(core, namespace, name):
    pod = core.read_namespaced_pod(name, namespace)
    statuses = pod.status.container_statuses or []
    return pod if pod.status.phase == "Running" and statuses and all(c.ready for c in statuses) else None


def process_identity(pid):
    """(pid, start time) of a live process, or None: a pid alone could be reused."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else (pid, fields[19])


# -- 1. kubernetes.core ----------------------------------------------------------------------------------------------
CORE_NAMESPACE = "rnc-core"
DEPLOYMENT = "sleeper"
REPLICAS = 2

DEPLOY_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: deploy
      kubernetes.core.k8s: {kubeconfig: "{{ kc }}", state: present, definition: "{{ deployment }}", wait: true, wait_timeout: 300, wait_sleep: 1}
    - name: pods
      kubernetes.core.k8s_info: {kubeconfig: "{{ kc }}", kind: Pod, namespace: "{{ ns }}", label_selectors: ["app={{ app }}"]}
      register: pods
    - name: exec
      kubernetes.core.k8s_exec:
        kubeconfig: "{{ kc }}"
        namespace: "{{ ns }}"
        pod: "{{ pods.resources[0].metadata.name }}"
        command: sh -c 'hostname; cat /proc/1/cmdline | tr "\\\\0" " "'
    - name: log
      kubernetes.core.k8s_log: {kubeconfig: "{{ kc }}", namespace: "{{ ns }}", name: "{{ pods.resources[0].metadata.name }}"}
      register: log
      until: log.log is search('workload .* up')
      retries: 60
      delay: 1
"""

# k8s_drain evicts through the Eviction API with the pods' own grace period (kubernetes.core 6.2.0 drops a
# delete_options.terminate_grace_period of 0, `if value:`; a real kubelet confirms a graceful termination anyway).
DRAIN_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: drain
      kubernetes.core.k8s_drain: {kubeconfig: "{{ kc }}", name: "{{ node }}", delete_options: {wait_timeout: 300, wait_sleep: 1}}
"""

UNCORDON_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: uncordon
      kubernetes.core.k8s_drain: {kubeconfig: "{{ kc }}", name: "{{ node }}", state: uncordon}
    - name: available again
      kubernetes.core.k8s_info:
        kubeconfig: "{{ kc }}"
        api_version: apps/v1
        kind: Deployment
        namespace: "{{ ns }}"
        name: "{{ app }}"
        wait: true
        wait_timeout: 300
        wait_sleep: 1
"""


def deployment_body():
    labels = {"app": DEPLOYMENT}
    container = {"name": "main", "image": images.WORKLOAD_IMAGE, "imagePullPolicy": "Never",
                 "command": ["sh", "-c", "echo workload $(hostname) up; exec katalyst-workload sleep"],
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT, "namespace": CORE_NAMESPACE},
            "spec": {"replicas": REPLICAS, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"terminationGracePeriodSeconds": 10, "containers": [container]}}}}


def deployment_pods(core):
    return core.list_namespaced_pod(CORE_NAMESPACE, label_selector="app=" + DEPLOYMENT).items


def playbook(play, tmp_path, real_node, **extra):
    started = time.monotonic()
    variables = {"kc": real_node.kubeconfig, "ns": CORE_NAMESPACE, "app": DEPLOYMENT, "node": NODE}
    variables.update(extra)
    rc, tasks, output = run_playbook(play, tmp_path, extra_vars=variables)
    assert rc == 0, output[-6000:]
    return tasks, time.monotonic() - started


def unschedulable_replacements(core, evicted):
    """The ReplicaSet's new pods, Pending because the only node is cordoned (None until all are there)."""
    pods = [p for p in deployment_pods(core) if p.metadata.deletion_timestamp is None]
    if len(pods) != REPLICAS or {p.metadata.name for p in pods} & evicted:
        return None
    for pod in pods:
        waiting = [c for c in pod.status.conditions or [] if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"]
        if pod.status.phase != "Pending" or pod.spec.node_name or not waiting:
            return None
    return pods


def check_deploy_exec_log(tasks):
    deployed = tasks["deploy"]
    assert deployed["changed"] is True and deployed["result"]["status"]["availableReplicas"] == REPLICAS, deployed
    pods = tasks["pods"]["resources"]
    assert len(pods) == REPLICAS and all(p["spec"]["nodeName"] == NODE and p["status"]["podIP"].startswith("10.244.0.") for p in pods), pods
    name = pods[0]["metadata"]["name"]
    executed = tasks["exec"]
    assert executed["rc"] == 0, executed
    assert executed["stdout_lines"][0] == name, executed                  # the pod's own hostname: it ran in the pod
    assert executed["stdout_lines"][1].startswith("katalyst-workload sleep"), executed      # PID 1 is the workload
    assert "workload %s up" % name in tasks["log"]["log"], tasks["log"]
    return {p["metadata"]["name"] for p in pods}


def test_kubernetes_core_deploys_execs_logs_and_drains_on_the_real_node(real_node, tmp_path):
    client = api_client(real_node)
    core = kubernetes.client.CoreV1Api(client)
    timings = {}
    try:
        ensure_namespace(core, CORE_NAMESPACE)
        tasks, timings["k8s wait (2 replicas available) + exec + log"] = playbook(DEPLOY_PLAY, tmp_path, real_node, deployment=deployment_body())
        first = check_deploy_exec_log(tasks)

        tasks, timings["k8s_drain"] = playbook(DRAIN_PLAY, tmp_path, real_node)
        drained = tasks["drain"]
        assert drained["changed"] is True, drained
        assert drained["result"] == "node %s marked unschedulable. %d Pod(s) deleted from node." % (NODE, REPLICAS), drained
        assert not drained.get("warnings"), drained          # no pod outlived wait_timeout, no unmanaged pod
        assert all(read_or_none(core.read_namespaced_pod, name, CORE_NAMESPACE) is None for name in first)   # the kubelet confirmed
        assert core.read_node(NODE).spec.unschedulable is True
        pending = wait_for("the replacements Pending (the only node is cordoned)", lambda: unschedulable_replacements(core, first), timeout=TIMEOUT)

        tasks, timings["uncordon + available again"] = playbook(UNCORDON_PLAY, tmp_path, real_node)
        assert tasks["uncordon"]["changed"] is True and tasks["uncordon"]["result"] == "node %s marked schedulable." % NODE
        assert tasks["available again"]["resources"][0]["status"]["availableReplicas"] == REPLICAS
        assert not core.read_node(NODE).spec.unschedulable
        running = [p for p in deployment_pods(core) if p.metadata.deletion_timestamp is None]
        assert sorted(p.metadata.name for p in running) == sorted(p.metadata.name for p in pending), (running, pending)
        assert all(p.status.phase == "Running" and p.spec.node_name == NODE for p in running), running
        print("\n[real node: kubernetes.core] " + ", ".join("%s %.1fs" % item for item in timings.items()))
    finally:
        node_schedulable_again(core)
        delete_namespace(core, CORE_NAMESPACE)
        client.close()


# -- 2. the node webhook on the real kubelet's heartbeats ------------------------------------------------------------
OVERCOMMIT_POOL = "rnc-overcommit"
RATIOS = {"cpu": "2", "memory": "1.5"}
CONTROL_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Install the Katalyst-compatible CRDs
      katalyst.colocation.crds: {kubeconfig: "{{ katalyst_kubeconfig }}", state: present, wait: true}

- hosts: localhost
  gather_facts: false
  roles:
    - role: katalyst.colocation.tide
      tide_extra_controllers: [overcommit]
    - role: katalyst.colocation.webhook
"""
SERVICES = ("katalyst-controller-localhost", "katalyst-webhook-localhost")
NOC_ARGS = ("overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs")
OVERCOMMIT_ANNOTATIONS = tuple(key for keys in (overcommit.RATIO_KEY, overcommit.REALTIME_RATIO_KEY, overcommit.ORIGINAL_CAPACITY_KEY,
                                                overcommit.ORIGINAL_ALLOCATABLE_KEY, overcommit.OVERCOMMIT_CAPACITY_KEY,
                                                overcommit.OVERCOMMIT_ALLOCATABLE_KEY) for key in keys.values())


def control_vars(base, kubeconfig, port):
    """The controller (tide + overcommit) and the webhook on this host under the sandbox's service stand-in, as
    test_real_webhook_extender runs site.yml's cluster plays; the webhook registered at https://127.0.0.1:PORT/node."""
    extra = {"katalyst_kubeconfig": kubeconfig, "tide_kubeconfig_src": kubeconfig, "katalyst_sandbox_dir": str(base / "services"), "tide_metrics_port": 0,
             "webhook_listen_address": "127.0.0.1", "webhook_service_host": "127.0.0.1", "webhook_port": port,
             # a slow answer on a loaded machine must not make the apiserver fail open (failurePolicy Ignore)
             "webhook_timeout_seconds": 30}
    for role in ("tide", "webhook"):
        extra.update({role + "_service_manager": "sandbox", role + "_python_mode": "current",
                      role + "_install_dir": str(base / "control" / "opt"), role + "_config_dir": str(base / "control" / "etc")})
    return extra


def expected_amplified(raw):
    """original x ratio, truncated (cpu in milli, memory in bytes), as Katalyst's quantity arithmetic does."""
    return {res: int(raw[res] * fractions.Fraction(RATIOS[res])) for res in RATIOS}


def check_registration(admission, base, port):
    hook = admission.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION_NAME).webhooks[0]
    assert hook.name == WEBHOOK_NAME and hook.client_config.url == "https://127.0.0.1:%d/node" % port
    assert hook.failure_policy == "Ignore" and hook.rules[0].resources == ["nodes/status"]
    assert base64.b64decode(hook.client_config.ca_bundle).decode() == (base / "control" / "etc" / "pki" / "ca.crt").read_text()


class Amplification:
    """What the node must show: the kubelet's raw values, amplified once."""

    def __init__(self, node):
        self.raw = {"allocatable": amounts(node.status.allocatable), "capacity": amounts(node.status.capacity)}
        self.amplified = {field: expected_amplified(values) for field, values in self.raw.items()}
        self.twice = {field: expected_amplified(values) for field, values in self.amplified.items()}

    def shown(self, node):
        return {"allocatable": amounts(node.status.allocatable), "capacity": amounts(node.status.capacity)}

    def is_amplified(self, node):
        return self.shown(node) == self.amplified

    def is_raw(self, node):
        return self.shown(node) == self.raw

    def check_once(self, node):
        """Exactly original x ratio (never x ratio squared), the originals and ratios in the spec's annotations."""
        shown, annotations = self.shown(node), node.metadata.annotations or {}
        assert shown != self.twice, "amplified twice: %s (raw %s)" % (shown, self.raw)
        assert shown == self.amplified, "shown %s, expected %s (raw %s)" % (shown, self.amplified, self.raw)
        for res in RATIOS:
            assert annotations[overcommit.RATIO_KEY[res]] == RATIOS[res], annotations
            value = milli_cpu if res == "cpu" else memory_bytes
            assert value(annotations[overcommit.ORIGINAL_ALLOCATABLE_KEY[res]]) == self.raw["allocatable"][res], annotations
            assert value(annotations[overcommit.ORIGINAL_CAPACITY_KEY[res]]) == self.raw["capacity"][res], annotations


def webhook_mutations(base, port):
    context = ssl.create_default_context(cafile=str(base / "control" / "etc" / "pki" / "ca.crt"))
    return metric_total(scrape("https://127.0.0.1:%d/metrics" % port, context), "katalyst_webhook_reviews_total", outcome="mutated")


def watch_heartbeats(core, amplification, count=HEARTBEATS):
    """Until the real kubelet sent `count` more status updates (Ready's lastHeartbeatTime moved), checking on every
    read that the node is amplified once; the heartbeat times seen."""
    seen = [heartbeat_time(core.read_node(NODE))]

    def enough():
        node = core.read_node(NODE)
        amplification.check_once(node)
        if heartbeat_time(node) != seen[-1]:
            seen.append(heartbeat_time(node))
        return len(seen) > count
    wait_for("%d more status updates of the real kubelet" % count, enough, timeout=TIMEOUT, interval=0.3)
    return seen


def cleanup_overcommit(base, client, custom, core):
    for name in SERVICES:
        stop_service(base, name)
    with contextlib.suppress(kubernetes.client.exceptions.ApiException):
        kubernetes.client.AdmissionregistrationV1Api(client).delete_mutating_webhook_configuration(WEBHOOK_CONFIGURATION_NAME)
    with contextlib.suppress(kubernetes.client.exceptions.ApiException):
        kubernetes.client.CoordinationV1Api(client).delete_namespaced_lease("katalyst-controller", "kube-system")
    with contextlib.suppress(kubernetes.client.exceptions.ApiException):
        custom.delete_cluster_custom_object(*NOC_ARGS, OVERCOMMIT_POOL)
    node_schedulable_again(core, labels=(overcommit.POOL_LABEL,), annotations=OVERCOMMIT_ANNOTATIONS)


def test_webhook_amplifies_the_real_kubelets_status_updates_once(real_node, tmp_path):  # pylint: disable=too-many-locals
    client = api_client(real_node)
    core, custom = kubernetes.client.CoreV1Api(client), kubernetes.client.CustomObjectsApi(client)
    port = kube_cluster.pick_port(set())
    figures = {}
    try:
        amplification = Amplification(core.read_node(NODE))
        (tmp_path / "services").mkdir()
        started = time.monotonic()
        rc, _tasks, output = run_playbook(CONTROL_PLAY, tmp_path, extra_vars=control_vars(tmp_path, real_node.kubeconfig, port),
                                          env={"PYTHONPATH": REPO})
        assert rc == 0, output[-6000:]
        figures["install (CRDs, controller, webhook)"] = time.monotonic() - started
        check_registration(kubernetes.client.AdmissionregistrationV1Api(client), tmp_path, port)
        assert amplification.is_raw(core.read_node(NODE)), "not amplified before the config"

        core.patch_node(NODE, {"metadata": {"labels": {overcommit.POOL_LABEL: OVERCOMMIT_POOL}}})
        custom.create_cluster_custom_object(*NOC_ARGS, {
            "apiVersion": overcommit.NOC_API_VERSION, "kind": overcommit.NOC_KIND, "metadata": {"name": OVERCOMMIT_POOL},
            "spec": {"nodeOvercommitSelectorVal": OVERCOMMIT_POOL, "resourceOvercommitRatio": dict(RATIOS)}})
        created = time.monotonic()

        def amplified():
            found = core.read_node(NODE)
            return amplification.is_amplified(found) and found
        node = wait_for("kube-node-0 amplified by the webhook", amplified, timeout=TIMEOUT, interval=0.3)
        figures["NodeOvercommitConfig -> amplified allocatable"] = time.monotonic() - created
        amplification.check_once(node)
        assert node.status.node_info.kubelet_version == kube_cluster.pinned_version()   # the real kubelet's node

        mutated = webhook_mutations(tmp_path, port)
        mark = time.monotonic()
        seen = watch_heartbeats(core, amplification)
        figures["%d kubelet status updates, each re-amplified once" % HEARTBEATS] = time.monotonic() - mark
        assert webhook_mutations(tmp_path, port) >= mutated + HEARTBEATS, "the webhook mutated each of the kubelet's updates"
        print("\n[real node: webhook] raw %s, amplified %s, kubelet status updates at %s"
              % (amplification.raw, amplification.amplified, ", ".join(t.strftime("%H:%M:%S") for t in seen)))

        custom.delete_cluster_custom_object(*NOC_ARGS, OVERCOMMIT_POOL)
        core.patch_node(NODE, {"metadata": {"labels": {overcommit.POOL_LABEL: None}}})
        removed = time.monotonic()
        wait_for("kube-node-0 back to the kubelet's values", lambda: amplification.is_raw(core.read_node(NODE)), timeout=TIMEOUT, interval=0.3)
        figures["config removed -> original allocatable"] = time.monotonic() - removed
        assert core.read_node(NODE).metadata.annotations[overcommit.RATIO_KEY["cpu"]] == overcommit.DEFAULT_RATIO
        print("[real node: webhook] " + ", ".join("%s %.1fs" % item for item in figures.items()))
    finally:
        cleanup_overcommit(tmp_path, client, custom, core)
        client.close()


# -- 3. tide: the real taint eviction of the real online pod ---------------------------------------------------------
TIDE_NAMESPACE = "rnc-tide"
TIDE_POOL = "rnc-tide"
PEER_PREFIX = "rnc-peer-"
PEER = PEER_PREFIX + "0"
ONLINE_GRACE = 10
# The online pod shuts down in 2 s on SIGTERM: its Terminating phase is seen before the kubelet confirms.
ONLINE_COMMAND = "trap 'echo stopping; sleep 2; exit 0' TERM; katalyst-workload sleep & wait"


def tide_pod(name, node, pod_type, command=None, tolerations=(), cpu="10m", memory="16Mi", grace=ONLINE_GRACE, image=images.WORKLOAD_IMAGE):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": TIDE_NAMESPACE, "labels": {tide.LABEL_POD_TYPE: pod_type}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": grace, "tolerations": list(tolerations),
                     "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command or "exec katalyst-workload sleep"],
                                     "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}


def peer_ready(core):
    node = read_or_none(core.read_node, PEER)
    ready = node is not None and any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    return ready and not node.spec.taints      # the node lifecycle controller removed the new node's not-ready taint


def terminating(core, name):
    pod = read_or_none(core.read_namespaced_pod, name, TIDE_NAMESPACE)
    return pod if pod is not None and pod.metadata.deletion_timestamp else None


def disruption(pod):
    return next(((c.status, c.reason) for c in pod.status.conditions or [] if c.type == "DisruptionTarget"), None)


def tide_cleanup(plane, replica, peer):
    core = plane.core
    if replica is not None:
        replica.kill_if_running()
    drop_pool(plane, TIDE_POOL)
    node_schedulable_again(core, labels=(POOL_LABEL, tide.LABEL_NODE_POOL, tide.LABEL_NODE_TYPE, tide.LABEL_TIDE, tide.LABEL_RESERVE),
                           annotations=(tide.ANNOTATION_LAST_FLIP,))
    with contextlib.suppress(kubernetes.client.exceptions.ApiException):      # bound to the peer: no kubelet confirms
        core.delete_namespaced_pod("big-online", TIDE_NAMESPACE, grace_period_seconds=0)
    if peer is not None:
        stop_fakenodes(*peer)
    with contextlib.suppress(kubernetes.client.exceptions.ApiException):
        core.delete_node(PEER)
    delete_namespace(core, TIDE_NAMESPACE)


def pod_events(core, field, value):
    return core.list_namespaced_event(TIDE_NAMESPACE, field_selector="%s=%s" % (field, value)).items


def check_eviction(core, online_pod, pids, flipped_at):
    """The taint manager's graceful eviction, completed by the real kubelet; seconds from the taint."""
    figures = {}
    pod = wait_for("the online pod marked for deletion by the taint manager", lambda: terminating(core, "online"), timeout=TIMEOUT, interval=0.1)
    figures["taint -> online pod Terminating"] = time.monotonic() - flipped_at
    assert disruption(pod) == ("True", "DeletionByTaintManager"), pod.status.conditions
    assert pod.metadata.deletion_grace_period_seconds == ONLINE_GRACE
    wait_for("the online pod gone", lambda: read_or_none(core.read_namespaced_pod, "online", TIDE_NAMESPACE) is None, timeout=TIMEOUT, interval=0.1)
    figures["taint -> online pod gone (kubelet confirmed)"] = time.monotonic() - flipped_at
    wait_for("the online pod's processes gone", lambda: not [p for p in pids if process_identity(p[0]) == p], timeout=TIMEOUT)
    # the taint manager's event names the pod without its uid; the kubelet's carry it
    wait_for("the taint manager's eviction event", lambda: "TaintManagerEviction" in {e.reason for e in pod_events(core, "involvedObject.name", "online")},
             timeout=TIMEOUT)
    killed = [e for e in pod_events(core, "involvedObject.uid", online_pod.metadata.uid) if e.reason == "Killing"]
    assert killed and killed[0].source.component == "kubelet", [(e.reason, e.source) for e in killed]
    return figures


def test_tide_offline_flip_evicts_the_real_online_pod(real_node, tmp_path):  # pylint: disable=too-many-locals
    plane = ControlPlane(pathlib.Path(real_node.state))
    core = plane.core
    replica = peer = None
    try:
        ensure_crds(plane)
        ensure_namespace(core, TIDE_NAMESPACE)
        peer = start_fakenodes(real_node.kubeconfig, tmp_path / "peer.log", "--count", 1, "--prefix", PEER_PREFIX, "--delete-on-exit")
        wait_for("the peer node Ready without taints", lambda: peer_ready(core), timeout=TIMEOUT)
        # the peer carries the bigger (requested) load, so kube-node-0 is the online tide node tide releases first
        core.create_namespaced_pod(TIDE_NAMESPACE, tide_pod("big-online", PEER, "online", cpu="4", memory="1Gi", grace=0, image="registry.invalid/none"))
        core.create_namespaced_pod(TIDE_NAMESPACE, tide_pod("online", NODE, "online", command=ONLINE_COMMAND))
        core.create_namespaced_pod(TIDE_NAMESPACE, tide_pod("offline", NODE, "offline", tolerations=[OFFLINE_TOLERATION]))
        online = wait_for("the online pod Running", lambda: pod_running(core, TIDE_NAMESPACE, "online"), timeout=TIMEOUT)
        offline = wait_for("the offline pod Running", lambda: pod_running(core, TIDE_NAMESPACE, "offline"), timeout=TIMEOUT)
        pids = [process_identity(pid) for pid in wait_for("the online pod's processes", lambda: container_pids(online), timeout=TIMEOUT)]
        pids = [identity for identity in pids if identity]

        for name in (NODE, PEER):
            core.patch_node(name, {"metadata": {"labels": {POOL_LABEL: TIDE_POOL}}})
        replica = Replica(plane, "rnc-tide", leader_election=False)
        plane.custom.create_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, pool_body(TIDE_POOL, TIDE_POOL, {"online": 0, "offline": 0}))
        created = time.monotonic()
        offline_tainted = (tide.ROLE_TIDE_OFFLINE, [(tide.TAINT_EVICT_ONLINE_POD, "NoExecute")])
        wait_for("kube-node-0 flipped offline with the NoExecute taint", lambda: tide_view(plane, TIDE_POOL, NODE) == offline_tainted,
                 timeout=TIMEOUT, interval=0.1)
        flipped_at = time.monotonic()
        figures = {"pool created -> kube-node-0 offline + taint": flipped_at - created}
        # one online tide node is kept (the controller labels the nodes one after the other: wait, do not read once)
        wait_for("the peer kept online", lambda: tide_view(plane, TIDE_POOL, PEER) == (tide.ROLE_TIDE_ONLINE, []), timeout=TIMEOUT)
        figures.update(check_eviction(core, online, pids, flipped_at))

        still = pod_running(core, TIDE_NAMESPACE, "offline")
        assert still is not None and still.metadata.uid == offline.metadata.uid and still.metadata.deletion_timestamp is None, still
        assert still.status.container_statuses[0].restart_count == 0 and disruption(still) is None, still.status

        # deleting the pool while the controller runs takes its labels and taints off both nodes
        plane.custom.delete_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, TIDE_POOL)
        wait_for("the pool gone (finalizer dropped after the cleanup)",
                 lambda: read_or_none(plane.custom.get_cluster_custom_object, tide.GROUP, "v1alpha1", tide.PLURAL, TIDE_POOL) is None, timeout=TIMEOUT)
        node = core.read_node(NODE)
        assert not [t for t in node.spec.taints or [] if t.key.startswith(tide.GROUP)], node.spec.taints
        assert not [k for k in node.metadata.labels if k.startswith(tide.GROUP)], node.metadata.labels
        assert pod_running(core, TIDE_NAMESPACE, "offline") is not None
        print("\n[real node: tide] " + ", ".join("%s %.1fs" % item for item in figures.items()))
    finally:
        tide_cleanup(plane, replica, peer)
        plane.api_client.close()
