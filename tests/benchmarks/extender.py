"""Benchmark: katalyst-scheduler-extender filter + prioritize for one pod over 1,000 nodes with 4 NUMA nodes each.

    python tests/benchmarks/extender.py [--nodes 1000] [--rounds 200] [--http]

The cluster: every node has a CNR (2 sockets x 2 NUMA, cpu/memory and reclaimed resources per NUMA, topology
policy SingleNUMANodeContainerLevel) and three pods (a TensorFlow parameter server bound to one NUMA with
required anti-affinity to workers, a worker bound to another NUMA, a shared_cores pod). Each round schedules a
new TensorFlow worker (dedicated_cores, numa_binding, required anti-affinity to parameter servers): filter over
all nodes (plugins NodeOvercommitment then NUMA, node names only, as with nodeCacheCapable) and prioritize over
the nodes that passed; then the pod is bound to the best node, so that node's state changes as in a real
scheduler (its cached view is rebuilt in the next round). Prints milliseconds for the first (cold) request, then
p50/p95/p99/max for replicas of one pod template (verdicts shared per node until the node changes) and for pods
that all differ (only the parsed node views are shared), and with --http the same through the HTTP server.
"""

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, ".build", "collections"))

# pylint: disable=wrong-import-position
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import (  # noqa: E402
    ClusterCache, ExtenderDaemon,
)

BINDING = json.dumps({"numa_binding": "true"})
ANTI = "katalyst.kubewharf.io/microtopology_antiaffinity"


def pod(name, labels, numa=None, anti=None, cpu="2", qos="dedicated_cores", node=None):
    annotations = {"katalyst.kubewharf.io/qos_level": qos}
    if qos == "dedicated_cores":
        annotations["katalyst.kubewharf.io/memory_enhancement"] = BINDING
    if anti:
        annotations[ANTI] = json.dumps({"required": [{"matchLabels": anti, "zone": "numa"}]})
    if numa is not None:
        annotations["katalyst.kubewharf.io/numa_bind_result"] = str(numa)
    resources = {"requests": {"cpu": cpu, "memory": "2Gi"}, "limits": {"cpu": cpu, "memory": "2Gi"}}
    spec = {"containers": [{"name": "main", "image": "tf", "resources": resources}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "uid": "uid-" + name,
                                                            "resourceVersion": "1", "labels": labels, "annotations": annotations},
            "spec": spec, "status": {"phase": "Running"}}


def node(name):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "1", "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"}, "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"}}}


def cnr(name):
    sockets = {}
    for numa in range(4):
        resources = {"cpu": "8", "memory": "16Gi", "resource.katalyst.kubewharf.io/reclaimed_millicpu": "4k",
                     "resource.katalyst.kubewharf.io/reclaimed_memory": "8Gi"}
        sockets.setdefault(str(numa // 2), []).append({"type": "Numa", "name": str(numa),
                                                       "resources": {"allocatable": resources, "capacity": dict(resources)}})
    return {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
            "metadata": {"name": name, "uid": "cnr-" + name, "resourceVersion": "1"},
            "status": {"topologyPolicy": "SingleNUMANodeContainerLevel",
                       "resources": {"allocatable": {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "16k",
                                                     "resource.katalyst.kubewharf.io/reclaimed_memory": "32Gi"}},
                       "topologyZone": [{"type": "Socket", "name": s, "children": c} for s, c in sorted(sockets.items())]}}


def build_cache(count):
    cache = ClusterCache()
    names = ["node-%04d" % i for i in range(count)]
    for index, name in enumerate(names):
        cache.on_node("ADDED", node(name))
        cache.on_cnr("ADDED", cnr(name))
        cache.on_pod("ADDED", pod(name + "-ps", {"app": "tf", "role": "ps"}, numa=index % 4, anti={"app": "tf", "role": "worker"},
                                  node=name))
        cache.on_pod("ADDED", pod(name + "-w", {"app": "tf", "role": "worker"}, numa=(index + 1) % 4, node=name))
        cache.on_pod("ADDED", pod(name + "-web", {"app": "web"}, qos="shared_cores", cpu="1", node=name))
    return cache, names


def percentiles(samples):
    ordered = sorted(samples)

    def pick(q):
        return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)] * 1000

    return "p50 %6.1f ms  p95 %6.1f ms  p99 %6.1f ms  max %6.1f ms  (n=%d, mean %.1f ms)" % (
        pick(0.5), pick(0.95), pick(0.99), ordered[-1] * 1000, len(ordered), statistics.mean(ordered) * 1000)


def schedule(call, cache, names, index, distinct=False):
    labels = {"app": "tf", "role": "worker"}
    if distinct:
        labels["job"] = "job-%d" % index      # a pod of its own template: no verdict to share with earlier pods
    worker = pod("bench-%d" % index, labels, anti={"app": "tf", "role": "ps"})
    started = time.perf_counter()
    result = call("filter", {"pod": worker, "nodenames": names})
    passing = result["nodenames"]
    scores = call("prioritize", {"pod": worker, "nodenames": passing}) if passing else []
    elapsed = time.perf_counter() - started
    if scores:
        best = max(scores, key=lambda item: (item["score"], item["host"]))["host"]
        worker["spec"]["nodeName"] = best
        worker["metadata"]["annotations"]["katalyst.kubewharf.io/numa_bind_result"] = "0"
        cache.on_pod("ADDED", worker)        # bound: that node's state changes
    return elapsed, len(passing or []), len(result["failedNodes"])


def run(label, call, cache, names, rounds, offset=0):
    cold, passing, failed = schedule(call, cache, names, offset)
    print("%-10s first request          %.1f ms (%d passed, %d failed)" % (label, cold * 1000, passing, failed))
    samples = [schedule(call, cache, names, offset + index)[0] for index in range(1, rounds + 1)]
    print("%-10s replicas of one pod     %s" % (label, percentiles(samples)))
    samples = [schedule(call, cache, names, offset + rounds + index, distinct=True)[0] for index in range(1, rounds + 1)]
    print("%-10s every pod different     %s" % (label, percentiles(samples)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--http", action="store_true", help="also measure through the HTTP server")
    args = parser.parse_args()
    cache, names = build_cache(args.nodes)
    daemon = ExtenderDaemon({"listen_address": "127.0.0.1", "port": 0, "plugins": ["NodeOvercommitment", "NUMA"], "json_logs": False},
                            cache=cache)
    extender = daemon.extender
    print("%d nodes x 4 NUMA, 3 pods per node; pod: TensorFlow worker with required NUMA anti-affinity" % args.nodes)
    run("in-process", lambda verb, body: getattr(extender, verb)(json.loads(json.dumps(body))), cache, names, args.rounds)
    numa = extender.plugins[1]
    print("node views built: %d" % numa.stats["views_built"])
    if args.http:
        port = daemon.start(wait_synced=0)

        def call(verb, body):
            request = urllib.request.Request("http://127.0.0.1:%d/%s" % (port, verb), data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        run("http", call, cache, names, args.rounds, offset=10 * args.rounds)
        daemon.stop()


if __name__ == "__main__":
    main()
