"""Benchmark: katalyst-scheduler-extender filter + prioritize for one pod over 1,000 nodes with 4 NUMA nodes each.

    python tests/benchmarks/extender.py [--nodes 1000] [--rounds 200] [--http] [--cold] [--diverse]

The cluster: every node has a CNR (2 sockets x 2 NUMA, cpu/memory and reclaimed resources per NUMA, topology
policy SingleNUMANodeContainerLevel) and three pods (a TensorFlow parameter server bound to one NUMA with
required anti-affinity to workers, a worker bound to another NUMA, a shared_cores pod). Each round schedules a
new TensorFlow worker (dedicated_cores, numa_binding, required anti-affinity to parameter servers): filter over
all nodes (plugins NodeOvercommitment then NUMA, node names only, as with nodeCacheCapable) and prioritize over
the nodes that passed; then the pod is bound to one of the best nodes (in turn among equal scores, as kube-scheduler
picks one at random), so that node's state changes as in a real scheduler (its cached view is rebuilt in the next
round). Bound pods of distinct templates leave distinct node states, so later rounds evaluate more states: the HTTP
phase starts again from a fresh cluster, to be comparable with the in-process one.

Before measuring, the benchmark does what the daemon does once its informers have synced: ``warm()`` (every
node's view parsed) and ``freeze_heap()`` (one collection, then the long-lived heap is left out of the garbage
collector's full passes); ``--cold`` skips both. It prints milliseconds for the first request, then wall-clock
p50/p95/p99/max and CPU p50/p99 (``time.process_time``: this process's CPU, so other load on the machine does
not count) of filter + prioritize per pod, for replicas of one pod template (verdicts shared until a node changes)
and for pods that all differ (novel pods: evaluated once per distinct node state), with the count of full garbage
collections that fell inside the measured requests. The nodes come in four states (which NUMA node holds the
parameter server) until pods are bound; ``--diverse`` gives every node a different NUMA memory size, so no two
nodes share an evaluation (the worst case for novel pods).

Baselines measured in the same run, so a slower machine shows the same ratios: ``per-node`` evaluates a novel pod
on every node alone (``NumaPlugin.evaluate`` and ``filter_node_overcommitment`` per node, what grouping by node
state saves); with --http, the requests go through the daemon's server over one keep-alive connection (as
kube-scheduler's HTTP client keeps its connection), and ``echo`` is the same server and client answering the
recorded answers of the same size without deciding anything (the HTTP + JSON floor). The client runs in the same
process as the server: the CPU figures over HTTP include both ends.
"""

import argparse
import gc
import http.client
import json
import os
import socket
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, ".build", "collections"))

# pylint: disable=wrong-import-position
from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit, placement  # noqa: E402
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import service  # noqa: E402
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.extender import (  # noqa: E402
    ClusterCache, ExtenderDaemon, freeze_heap,
)
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.http_server import (  # noqa: E402
    KeepAliveServer, json_bytes, parse_json,
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
        top = max(item["score"] for item in scores)
        ties = [item["host"] for item in scores if item["score"] == top]
        best = ties[index % len(ties)]        # kube-scheduler picks at random among the best: spread, not one node piling up
        worker["spec"]["nodeName"] = best
        worker["metadata"]["annotations"]["katalyst.kubewharf.io/numa_bind_result"] = "0"
        cache.on_pod("ADDED", worker)        # bound: that node's state changes
    return (elapsed, cpu), len(passing or []), len(result["failedNodes"])


def run(label, call, cache, names, rounds, offset=0):
    """Prints the three lines of one serving path; returns the novel pods' samples."""
    (first, first_cpu), passing, failed = schedule(call, cache, names, offset)
    print("%-10s first request        wall %.1f ms, CPU %.1f ms (%d passed, %d failed)" % (label, first * 1000, first_cpu * 1000, passing, failed))
    del FULL_COLLECTIONS[:]
    samples = [schedule(call, cache, names, offset + index)[0] for index in range(1, rounds + 1)]
    print("%-10s replicas of one pod  %s, %d full GC" % (label, percentiles(samples), len(FULL_COLLECTIONS)))
    del FULL_COLLECTIONS[:]
    samples = [schedule(call, cache, names, offset + rounds + index, distinct=True)[0] for index in range(1, rounds + 1)]
    print("%-10s novel pods           %s, %d full GC" % (label, percentiles(samples), len(FULL_COLLECTIONS)))
    return samples


def per_node(extender, cache, names, rounds, offset):
    """Baseline: a novel pod's filter and scores with every node evaluated alone (no grouping by node state)."""
    overcommitment, numa = extender.plugins
    samples = []
    for index in range(rounds):
        worker = pod("alone-%d" % (offset + index), {"app": "tf", "role": "worker", "job": "alone-%d" % index}, anti={"app": "tf", "role": "ps"})
        started, cpu_started = time.perf_counter(), time.process_time()
        query, pod_state = placement.PodQuery(worker, numa.policy), overcommit.pod_filter_state(worker)
        raw = {}
        for name in names:
            node_object = cache.node(name)
            if overcommit.filter_node_overcommitment(pod_state, node_object, overcommitment.node_states([name], cache)[0])[0] == overcommit.SUCCESS:
                verdict, _numas, _problems, score = numa.evaluate(worker, node_object, numa.view(name, cache), query)
                if verdict[0] == overcommit.SUCCESS:
                    raw[name] = score
        placement.normalize_scores(raw)
        samples.append((time.perf_counter() - started, time.process_time() - cpu_started))
    print("%-10s novel pods           %s" % ("per-node", percentiles(samples)))
    return samples


class KeepAliveClient:
    """POSTs JSON over one HTTP/1.1 connection, as kube-scheduler's extender client keeps its connection open."""

    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.connect()
        self.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # head and body are separate writes

    def __call__(self, verb, body):
        self.connection.request("POST", "/" + verb, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError("%s answered %d: %s" % (verb, response.status, payload[:200]))
        return json.loads(payload)

    def close(self):
        self.connection.close()


def echo_server(replies):
    """The extender's HTTP stack (with its own request metrics) answering recorded replies: it parses each body, decides nothing."""
    def route(verb):
        def answer(raw):
            parse_json(raw)
            return 200, replies[verb]
        return answer
    server = KeepAliveServer(service.Daemon("echo"), {verb: route(verb) for verb in replies}, "127.0.0.1", 0)
    server.start()
    return server


def ratio(label, samples, baseline):
    """p50 and p99 of ``samples`` over those of ``baseline`` (wall clock)."""
    wall, base = sorted(s[0] for s in samples), sorted(s[0] for s in baseline)
    print("%-10s p50 %.2fx  p99 %.2fx" % (label, pick(wall, 0.5) / pick(base, 0.5), pick(wall, 0.99) / pick(base, 0.99)))


def cluster(args):
    """A fresh cluster and an extender daemon over it, warmed up as after its informers synced (unless --cold)."""
    cache, names = build_cache(args.nodes, args.diverse)
    daemon = ExtenderDaemon({"listen_address": "127.0.0.1", "port": 0, "plugins": ["NodeOvercommitment", "NUMA"], "json_logs": False},
                            cache=cache)
    if not args.cold:
        cpu_started = time.process_time()
        seconds = daemon.warm()
        freeze_heap()
        print("warm-up    views of every node %.0f ms (CPU %.0f ms, with the collection)" % (seconds * 1000, (time.process_time() - cpu_started) * 1000))
    return daemon, cache, names


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--http", action="store_true", help="also measure through the HTTP server (and the echo baseline)")
    parser.add_argument("--cold", action="store_true", help="no warm-up and no freeze_heap before measuring")
    parser.add_argument("--diverse", action="store_true", help="every node in a different NUMA state")
    args = parser.parse_args()
    print("%d nodes x 4 NUMA, 3 pods per node%s; pod: TensorFlow worker with required NUMA anti-affinity"
          % (args.nodes, ", every node in a different NUMA state" if args.diverse else ""))
    gc.callbacks.append(count_full_collections)
    daemon, cache, names = cluster(args)
    extender = daemon.extender
    novel = run("in-process", lambda verb, body: getattr(extender, verb)(json.loads(json.dumps(body))), cache, names, args.rounds)
    alone = per_node(extender, cache, names, max(args.rounds // 10, 5), 100 * args.rounds)
    ratio("grouped/per-node", novel, alone)
    print("node views built: %d" % extender.plugins[1].stats["views_built"])
    if args.http:
        sample = pod("echo", {"app": "tf", "role": "worker"}, anti={"app": "tf", "role": "ps"})
        replies = {"filter": json_bytes(extender.filter({"pod": sample, "nodenames": names}))}
        replies["prioritize"] = json_bytes(extender.prioritize({"pod": sample, "nodenames": json.loads(replies["filter"])["nodenames"]}))
        echo = echo_server(replies)
        client = KeepAliveClient(echo.port)
        floor = []
        for index in range(args.rounds):
            started, cpu_started = time.perf_counter(), time.process_time()
            client("prioritize", {"pod": sample, "nodenames": client("filter", {"pod": sample, "nodenames": names})["nodenames"]})
            floor.append((time.perf_counter() - started, time.process_time() - cpu_started))
        print("%-10s filter + prioritize  %s" % ("echo", percentiles(floor)))
        client.close()
        echo.stop()
        del daemon, cache, extender          # the in-process cluster: freed before the next one is built
        daemon, cache, names = cluster(args)
        client = KeepAliveClient(daemon.start(wait_synced=0))
        novel = run("http", client, cache, names, args.rounds, offset=10 * args.rounds)
        ratio("http/echo", novel, floor)
        client.close()
        daemon.stop()


if __name__ == "__main__":
    main()
