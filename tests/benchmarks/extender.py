"""Benchmark: katalyst-scheduler-extender filter + prioritize for one pod over 1,000 nodes with 4 NUMA nodes each.

    python tests/benchmarks/extender.py [--nodes 1000] [--rounds 200] [--http] [--cold] [--diverse]

The cluster: every node has a CNR (2 sockets x 2 NUMA, cpu/memory and reclaimed resources per NUMA, topology
policy SingleNUMANodeContainerLevel) and three pods (a TensorFlow parameter server bound to one NUMA with
required anti-affinity to workers, a worker bound to another NUMA, a shared_cores pod). Each round schedules a
new TensorFlow worker (dedicated_cores, numa_binding, required anti-affinity to parameter servers): filter over
all nodes (plugins NodeOvercommitment then NUMA, node names only, as with nodeCacheCapable) and prioritize over
the nodes that passed; then the pod is bound to the best node, so that node's state changes as in a real
scheduler (its cached view is rebuilt in the next round).

Before measuring, the benchmark does what the daemon does once its informers have synced: ``warm()`` (every
node's view parsed) and ``freeze_heap()`` (one collection, then the long-lived heap is left out of the garbage
collector's full passes); ``--cold`` skips both. It prints milliseconds for the first request, then wall-clock
p50/p95/p99/max and CPU p50/p99 (``time.process_time``: this process's CPU, so other load on the machine does
not count) per request, for replicas of one pod template (verdicts shared per node until the node changes) and
for pods that all differ (novel pods: only the parsed node views are shared, and within one request the
evaluation of nodes whose NUMA state is identical), with the count of full garbage collections that fell inside
the measured requests; with --http the same through the HTTP server. The nodes come in four states (which NUMA
node holds the parameter server) until pods are bound; ``--diverse`` gives every node a different NUMA memory
size, so no two nodes share an evaluation (the worst case for novel pods).
"""

import argparse
import gc
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
    ClusterCache, ExtenderDaemon, freeze_heap,
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


def cnr(name, memory="16Gi"):
    sockets = {}
    for numa in range(4):
        resources = {"cpu": "8", "memory": memory, "resource.katalyst.kubewharf.io/reclaimed_millicpu": "4k",
                     "resource.katalyst.kubewharf.io/reclaimed_memory": "8Gi"}
        sockets.setdefault(str(numa // 2), []).append({"type": "Numa", "name": str(numa),
                                                       "resources": {"allocatable": resources, "capacity": dict(resources)}})
    return {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
            "metadata": {"name": name, "uid": "cnr-" + name, "resourceVersion": "1"},
            "status": {"topologyPolicy": "SingleNUMANodeContainerLevel",
                       "resources": {"allocatable": {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "16k",
                                                     "resource.katalyst.kubewharf.io/reclaimed_memory": "32Gi"}},
                       "topologyZone": [{"type": "Socket", "name": s, "children": c} for s, c in sorted(sockets.items())]}}


def build_cache(count, diverse=False):
    cache = ClusterCache()
    names = ["node-%04d" % i for i in range(count)]
    for index, name in enumerate(names):
        cache.on_node("ADDED", node(name))
        cache.on_cnr("ADDED", cnr(name, "%dMi" % (16384 - index) if diverse else "16Gi"))
        cache.on_pod("ADDED", pod(name + "-ps", {"app": "tf", "role": "ps"}, numa=index % 4, anti={"app": "tf", "role": "worker"},
                                  node=name))
        cache.on_pod("ADDED", pod(name + "-w", {"app": "tf", "role": "worker"}, numa=(index + 1) % 4, node=name))
        cache.on_pod("ADDED", pod(name + "-web", {"app": "web"}, qos="shared_cores", cpu="1", node=name))
    return cache, names


def pick(ordered, q):
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)] * 1000


def percentiles(samples):
    """``samples``: [(wall seconds, CPU seconds)] of single requests."""
    wall, cpu = sorted(s[0] for s in samples), sorted(s[1] for s in samples)
    return ("wall p50 %5.1f  p95 %5.1f  p99 %5.1f  max %5.1f ms | CPU p50 %5.1f  p99 %5.1f ms  (n=%d, mean wall %.1f ms)"
            % (pick(wall, 0.5), pick(wall, 0.95), pick(wall, 0.99), wall[-1] * 1000, pick(cpu, 0.5), pick(cpu, 0.99), len(wall),
               statistics.mean(wall) * 1000))


FULL_COLLECTIONS = []


def count_full_collections(phase, info):
    if phase == "stop" and info["generation"] == 2:
        FULL_COLLECTIONS.append(info)


def schedule(call, cache, names, index, distinct=False):
    labels = {"app": "tf", "role": "worker"}
    if distinct:
        labels["job"] = "job-%d" % index      # a pod of its own template: no verdict to share with earlier pods
    worker = pod("bench-%d" % index, labels, anti={"app": "tf", "role": "ps"})
    started, cpu_started = time.perf_counter(), time.process_time()
    result = call("filter", {"pod": worker, "nodenames": names})
    passing = result["nodenames"]
    scores = call("prioritize", {"pod": worker, "nodenames": passing}) if passing else []
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if scores:
        best = max(scores, key=lambda item: (item["score"], item["host"]))["host"]
        worker["spec"]["nodeName"] = best
        worker["metadata"]["annotations"]["katalyst.kubewharf.io/numa_bind_result"] = "0"
        cache.on_pod("ADDED", worker)        # bound: that node's state changes
    return (elapsed, cpu), len(passing or []), len(result["failedNodes"])


def run(label, call, cache, names, rounds, offset=0):
    (first, first_cpu), passing, failed = schedule(call, cache, names, offset)
    print("%-10s first request        wall %.1f ms, CPU %.1f ms (%d passed, %d failed)" % (label, first * 1000, first_cpu * 1000, passing, failed))
    del FULL_COLLECTIONS[:]
    samples = [schedule(call, cache, names, offset + index)[0] for index in range(1, rounds + 1)]
    print("%-10s replicas of one pod  %s, %d full GC" % (label, percentiles(samples), len(FULL_COLLECTIONS)))
    del FULL_COLLECTIONS[:]
    samples = [schedule(call, cache, names, offset + rounds + index, distinct=True)[0] for index in range(1, rounds + 1)]
    print("%-10s novel pods           %s, %d full GC" % (label, percentiles(samples), len(FULL_COLLECTIONS)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--http", action="store_true", help="also measure through the HTTP server")
    parser.add_argument("--cold", action="store_true", help="no warm-up and no freeze_heap before measuring")
    parser.add_argument("--diverse", action="store_true", help="every node in a different NUMA state")
    args = parser.parse_args()
    cache, names = build_cache(args.nodes, args.diverse)
    daemon = ExtenderDaemon({"listen_address": "127.0.0.1", "port": 0, "plugins": ["NodeOvercommitment", "NUMA"], "json_logs": False},
                            cache=cache)
    extender = daemon.extender
    print("%d nodes x 4 NUMA, 3 pods per node%s; pod: TensorFlow worker with required NUMA anti-affinity"
          % (args.nodes, ", every node in a different NUMA state" if args.diverse else ""))
    if not args.cold:
        cpu_started = time.process_time()
        seconds = daemon.warm()
        freeze_heap()
        print("warm-up    views of every node %.0f ms (CPU %.0f ms, with the collection)" % (seconds * 1000, (time.process_time() - cpu_started) * 1000))
    gc.callbacks.append(count_full_collections)
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
