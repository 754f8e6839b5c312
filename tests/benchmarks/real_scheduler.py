"""Benchmark: scheduling throughput of the real kube-scheduler at 1,000 nodes, with and without our scheduler extender.

    python tests/benchmarks/real_scheduler.py [--nodes 1000] [--pods 1000] [--quick] [--state-dir DIR]

The control plane is the pinned release of sandbox/kube (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
with kube-controller-manager's node-lifecycle-controller turned off: the nodes have no kubelet, and without that
controller nothing marks them unreachable (keeping 1,000 nodes alive with fakenodes.py would add ~125 writes/s to a
2-core machine while the scheduler is measured). The nodes are Node objects with a Ready condition whose
`node.kubernetes.io/not-ready` taint (added by the TaintNodesByCondition admission plugin at creation, removed by that
controller on a real cluster) is removed here; each has a CustomNodeResource with 2 sockets x 2 NUMA nodes
(tests/benchmarks/extender.py's CNR, topology policy SingleNUMANodeContainerLevel).

katalyst-scheduler-extender runs as its own process from its configuration file (the scheduler_extender role's
settings: plugins NodeOvercommitment + NUMA, error_policy fail_node, plain HTTP on loopback), and kube-scheduler gets
its `extenders` entry from the file the role writes (`up --scheduler-extender-config`, urlPrefix, filter, prioritize,
weight 1, nodeCacheCapable, ignorable, httpTimeout 5s).

Each run: the scheduler is stopped, N pods are created (TensorFlow workers: dedicated_cores with NUMA binding, 2 cpu /
2Gi), the scheduler is started (without, then with the extender) and a watch records when each pod is bound. Prints
pods/s from the first to the last binding (and from the scheduler's start), and with the extender its request count
and latency per verb from the extender's own /metrics histogram (the p50/p99 are interpolated inside the histogram's
buckets, as Prometheus' histogram_quantile does; the mean is exact). The pods are deleted after each run, so both runs
see the same empty nodes.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO, os.path.dirname(os.path.abspath(__file__))]

import yaml  # noqa: E402  pylint: disable=wrong-import-position
from kubernetes import client, watch  # noqa: E402  pylint: disable=wrong-import-position
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.katalyst.colocation.plugins.module_utils import crd_manifests  # noqa: E402  pylint: disable=wrong-import-position
import extender as extender_bench  # noqa: E402  pylint: disable=wrong-import-position
import kube_backends  # noqa: E402  pylint: disable=wrong-import-position

QUICK = {"nodes": 50, "pods": 20}
CONTROL_PLANE = ("--disable-controller", "node-lifecycle-controller")
CNR_GROUP, CNR_VERSION, CNR_PLURAL = "node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources"
EXTENDER_MODULE = "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender"
LATENCY_METRIC = "katalyst_http_request_duration_seconds"
STALL_SECONDS = 120.0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the cluster's contents ------------------------------------------------------------------------
def ready_node(name):
    node = extender_bench.node(name)
    del node["metadata"]["resourceVersion"]
    node["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "benchmark node"}]
    return node


def populate(api_client, nodes):
    """CNR CRD, N Ready nodes without the not-ready taint, one CNR with 4 NUMA zones each (the setup: not measured)."""
    kube_backends.create_crds(api_client, crd_manifests.crds(["customnoderesources"]))
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    names = ["node-%04d" % index for index in range(nodes)]
    kube_backends.bulk_write("created %d nodes" % nodes, lambda name: core.create_node(ready_node(name), _preload_content=False), names, "real")
    kube_backends.bulk_write("removed the not-ready taint of %d nodes" % nodes,
                             lambda name: core.patch_node(name, {"spec": {"taints": None}}, _preload_content=False), names, "real")

    def create_cnr(name):
        cnr = extender_bench.cnr(name)
        for key in ("uid", "resourceVersion"):
            del cnr["metadata"][key]
        custom.create_cluster_custom_object(CNR_GROUP, CNR_VERSION, CNR_PLURAL, dict(cnr, status=None))
        custom.patch_cluster_custom_object_status(CNR_GROUP, CNR_VERSION, CNR_PLURAL, name, {"status": cnr["status"]})
    kube_backends.bulk_write("created %d CNRs (2 sockets x 2 NUMA)" % nodes, create_cnr, names, "real")
    return names


def worker_pod(index):
    """A TensorFlow worker as in extender.py, unbound: dedicated_cores, NUMA binding, 2 cpu / 2Gi."""
    pod = extender_bench.pod("worker-%05d" % index, {"app": "tf", "role": "worker"})
    for key in ("uid", "resourceVersion", "namespace"):
        del pod["metadata"][key]
    del pod["status"]
    return pod


# -- the extender, as the scheduler_extender role runs it --------------------------------------------
def write_extender_files(work_dir, kubeconfig, port):
    """The daemon's configuration and the KubeSchedulerConfiguration with its `extenders` entry (the role's defaults)."""
    config = {"kubeconfig": kubeconfig, "listen_address": "127.0.0.1", "port": port, "tls_cert_file": "", "tls_key_file": "",
              "log_level": "info", "resync_seconds": 300, "plugins": ["NodeOvercommitment", "NUMA"], "numa_resource_policy": "dynamic",
              "numa_aligned_resources": ["cpu", "memory"], "error_policy": "fail_node"}
    entry = {"urlPrefix": "http://127.0.0.1:%d" % port, "filterVerb": "filter", "prioritizeVerb": "prioritize", "weight": 1,
             "enableHTTPS": False, "nodeCacheCapable": True, "ignorable": True, "httpTimeout": "5s", "managedResources": []}
    paths = {"daemon": os.path.join(work_dir, "scheduler-extender.yaml"), "scheduler": os.path.join(work_dir, "kube-scheduler-extender.yaml")}
    with open(paths["daemon"], "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    with open(paths["scheduler"], "w", encoding="utf-8") as handle:
        handle.write("# as roles/scheduler_extender/templates/kube-scheduler-config.yaml.j2 renders it\n"
                     "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nextenders:\n"
                     + yaml.safe_dump([entry], sort_keys=False))
    return paths


def start_extender(config_path, log_path, port, timeout=300.0):
    """The daemon in its own process; returns once /healthz answers (its informers have synced by then)."""
    log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with  # closed by stop_extender
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, ".build", "collections"))
    process = subprocess.Popen([sys.executable, "-m", EXTENDER_MODULE, "--config", config_path], stdout=log, stderr=subprocess.STDOUT,
                               env=env, cwd=REPO)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the extender exited (%d); see %s" % (process.returncode, log_path))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=5) as response:
                if response.status == 200:
                    return process, log
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the extender did not answer /healthz in %.0fs; see %s" % (timeout, log_path))


def stop_extender(process, log):
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
    log.close()


def latency_histograms(port):
    """{verb: [(upper bound, cumulative count), ...], plus (sum, count)} from the extender's /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as response:
        text = response.read().decode()
    result = {}
    for family in text_string_to_metric_families(text):
        if family.name != LATENCY_METRIC:
            continue
        for sample in family.samples:
            verb = sample.labels.get("path")
            entry = result.setdefault(verb, {"buckets": {}, "sum": 0.0, "count": 0.0})
            if sample.name.endswith("_bucket"):
                entry["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
            elif sample.name.endswith("_count"):
                entry["count"] = sample.value
    return result


def quantile(buckets, q):
    """histogram_quantile: linear interpolation inside the bucket that holds the q-th request."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-9)
        lower, below = bound, buckets[bound]
    return lower


def latency_summary(before, after):
    """Per verb: requests, mean, p50, p99 (ms) of the requests between two scrapes."""
    lines = []
    for verb in sorted(after):
        old = before.get(verb, {"buckets": {}, "sum": 0.0, "count": 0.0})
        buckets = {bound: count - old["buckets"].get(bound, 0.0) for bound, count in after[verb]["buckets"].items()}
        count = after[verb]["count"] - old["count"]
        if count <= 0:
            continue
        mean = (after[verb]["sum"] - old["sum"]) / count
        lines.append({"verb": verb, "requests": int(count), "mean_ms": mean * 1000, "p50_ms": quantile(buckets, 0.5) * 1000,
                      "p99_ms": quantile(buckets, 0.99) * 1000})
    return lines


# -- one run ---------------------------------------------------------------------------------------
class BindingWatch:
    """Records when each pod of a namespace is seen bound (spec.nodeName set), from a watch."""

    def __init__(self, api_client, namespace):
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.bound = {}
        self.stop = threading.Event()
        self.thread = None

    def start(self):
        listed = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        body = json.loads(listed.data)
        for pod in body["items"]:
            if pod["spec"].get("nodeName"):
                self.bound[pod["metadata"]["name"]] = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(body["metadata"]["resourceVersion"],), daemon=True)
        self.thread.start()

    def _run(self, resource_version):
        while not self.stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(self.core.list_namespaced_pod, self.namespace, resource_version=resource_version, timeout_seconds=30):
                pod = event["raw_object"]
                resource_version = pod["metadata"].get("resourceVersion", resource_version)
                if pod.get("spec", {}).get("nodeName") and pod["metadata"]["name"] not in self.bound:
                    self.bound[pod["metadata"]["name"]] = time.monotonic()
                if self.stop.is_set():
                    stream.stop()
                    return

    def wait_all(self, count):
        """Until ``count`` pods are bound, or nothing was bound for STALL_SECONDS."""
        last_progress, seen = time.monotonic(), 0
        while len(self.bound) < count and time.monotonic() - last_progress < STALL_SECONDS:
            if len(self.bound) != seen:
                seen, last_progress = len(self.bound), time.monotonic()
            time.sleep(0.2)
        self.stop.set()


def delete_pods(api_client, namespace, count_before):
    """Force-delete (no kubelet confirms a graceful deletion) and wait until the namespace is empty."""
    core = client.CoreV1Api(api_client)
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0, _preload_content=False)
    deadline = time.monotonic() + 300
    while json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]:
        if time.monotonic() > deadline:
            raise RuntimeError("%d pods of %s not deleted after 300 s" % (count_before, namespace))
        time.sleep(0.5)


def run(plane, label, pods, scheduler_args, extender_port=None):
    """Create the pods with the scheduler stopped, start it, time the bindings."""
    api_client = plane.api_client
    plane.up("--without", "kube-scheduler")
    namespace = "default"
    kube_backends.bulk_write("%s: created %d pods (scheduler stopped)" % (label, pods),
                             lambda index: client.CoreV1Api(api_client).create_namespaced_pod(namespace, worker_pod(index), _preload_content=False),
                             range(pods), "real")
    bindings = BindingWatch(api_client, namespace)
    bindings.start()
    before = latency_histograms(extender_port) if extender_port else {}
    started = time.monotonic()
    plane.up(*scheduler_args)
    bindings.wait_all(pods)
    after = latency_histograms(extender_port) if extender_port else {}
    times = sorted(bindings.bound.values())
    row = {"run": label, "pods": pods, "bound": len(times), "load": kube_backends.load_average(),
           "pods_per_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan"),
           "from_start_per_s": len(times) / (times[-1] - started) if times else float("nan"),
           "seconds": (times[-1] - times[0]) if times else float("nan"), "latency": latency_summary(before, after)}
    print_row(row)
    if len(times) < pods:
        print_unscheduled_reason(api_client, namespace)
    delete_pods(api_client, namespace, pods)
    return row


def print_unscheduled_reason(api_client, namespace):
    """Why a pod was left unbound: its PodScheduled condition, as kube-scheduler wrote it."""
    for pod in json.loads(client.CoreV1Api(api_client).list_namespaced_pod(namespace, _preload_content=False).data)["items"]:
        if not pod["spec"].get("nodeName"):
            conditions = [c for c in pod.get("status", {}).get("conditions") or [] if c.get("type") == "PodScheduled"]
            print("unbound pod %s: %s" % (pod["metadata"]["name"], conditions[0].get("message", "")[:600] if conditions else "not tried"))
            return


def print_row(row):
    print("%-17s %d/%d pods bound: %.1f pods/s first to last binding (%.1f s), %.1f pods/s from the scheduler's start; %s"
          % (row["run"], row["bound"], row["pods"], row["pods_per_s"], row["seconds"], row["from_start_per_s"], row["load"]), flush=True)
    for verb in row["latency"]:
        print("%-17s extender %-10s %5d requests, mean %6.1f ms, p50 %6.1f ms, p99 %6.1f ms (histogram-interpolated)"
              % (row["run"], verb["verb"], verb["requests"], verb["mean_ms"], verb["p50_ms"], verb["p99_ms"]), flush=True)


def print_side_by_side(rows, nodes):
    print("\nside by side (%d nodes; %s):" % (nodes, kube_backends.load_average()))
    print("%-17s %6s %8s %9s %18s %16s %16s" % ("run", "pods", "bound", "pods/s", "pods/s from start", "filter p99 ms", "prioritize p99 ms"))
    for row in rows:
        p99 = {verb["verb"]: "%.1f" % verb["p99_ms"] for verb in row["latency"]}
        print("%-17s %6d %8d %9.1f %18.1f %16s %16s" % (
            row["run"], row["pods"], row["bound"], row["pods_per_s"], row["from_start_per_s"], p99.get("filter", "-"), p99.get("prioritize", "-")))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="%(nodes)d nodes, %(pods)d pods: a smoke test" % QUICK)
    parser.add_argument("--state-dir", help="the control plane's state directory (default: a temporary one)")
    args = parser.parse_args()
    sizes = dict(QUICK) if args.quick else {"nodes": args.nodes, "pods": args.pods}
    print("kube-scheduler throughput over %(nodes)d nodes x 4 NUMA, %(pods)d pods per run" % sizes + "; %s" % kube_backends.load_average(),
          flush=True)
    with kube_backends.real_control_plane(args.state_dir, CONTROL_PLANE, ("--without", "kube-scheduler")) as plane:
        populate(plane.api_client, sizes["nodes"])
        kube_backends.ensure_default_service_account(plane.api_client)
        rows = [run(plane, "without extender", sizes["pods"], ())]
        port = free_port()
        paths = write_extender_files(plane.state_dir, plane.kubeconfig, port)
        process, log = kube_backends.timed_step("extender started (informers synced)", start_extender, paths["daemon"],
                                                os.path.join(plane.state_dir, "scheduler-extender.log"), port)
        try:
            rows.append(run(plane, "with extender", sizes["pods"], ("--scheduler-extender-config", paths["scheduler"]), port))
        finally:
            stop_extender(process, log)
        print_side_by_side(rows, sizes["nodes"])


if __name__ == "__main__":
    main()
