"""Benchmark: the tide controller's pass (TideReconciler.reconcile_all) over a 5,000-node pool with 50,000 pods,
through an API server: the sandbox emulator or the real kube-apiserver + etcd.

    python tests/benchmarks/tide_pass.py [--nodes 5000] [--pods 50000] [--backend emulator|real|both] [--quick] [--state-dir DIR]

tide_plan.py times the planning alone (tide.plan_tide_pool on dicts in memory); this one runs what katalyst-controller
runs, with the API underneath: the nodes and pods are created in the API server, and each pass first lists nodes,
pods and pools with the controller's own Informer (a relist: what a starting controller, or one after 410 Gone, reads),
then runs the reconciler's pass on those caches (plan + writes: a node merge patch from the cache with its
resourceVersion as precondition, finalizer, status, Events).
Passes (tide_plan.py's scenarios, in the order a cluster goes through them):
  first pass   every node unlabelled: reserve/tide roles, labels and taints for all of them (the one big write)
  quiet        the nodes relabelled (setup, not measured) as tide_plan.py's labelled pool, no pending pod: the
               release phase checks the least-loaded online tide node
  pending      500 pending online pods (PodScheduled=False/Unschedulable) that fit no online node: one offline
               tide node is brought online
The pods are bound as tide_plan.py binds them to its labelled pool (every node nearly full; online pods on online
nodes, offline pods on offline ones). Prints seconds (relist, plan + writes), API calls (KubeClient.calls) and writes.
The real backend runs kube-apiserver + etcd only (no scheduler to bind the pending pods, no controller-manager to
evict on the NoExecute taints): the pass is measured, not what the cluster does after it.
Each pass also prints its HTTP requests by verb (RequestCounter) next to what the previous read-edit-replace of
the same node writes sent (a get and an update per node).
"""

import argparse
import datetime
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO, os.path.dirname(os.path.abspath(__file__))]

from kubernetes import client  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.katalyst.colocation.plugins.module_utils import crd_manifests, tide  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.tide_controller import TideReconciler  # noqa: E402  pylint: disable=C0413
import kube_backends  # noqa: E402  pylint: disable=wrong-import-position
import tide_plan  # noqa: E402  pylint: disable=wrong-import-position

QUICK = {"nodes": 100, "pods": 1000, "pending": 20}
PENDING = 500
REAL_CONTROL_PLANE = ("--without", "kube-controller-manager", "--without", "kube-scheduler")
POOL = {"apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": "big"},
        "spec": {"nodeConfigs": {"nodeSelector": {"pool": "big"}, "reserve": {"online": "10%", "offline": "25%"}}}}


def manifest(obj, kind):
    """An object as created through the API: kind and apiVersion, no uid, no status (the apiserver sets them)."""
    body = {"apiVersion": "v1", "kind": kind, "metadata": {k: v for k, v in obj["metadata"].items() if k != "uid"}, "spec": obj["spec"]}
    if kind == "Node":
        body["status"] = obj["status"]
    else:
        body["spec"] = dict(obj["spec"], containers=[dict(c, image="registry.invalid/bench:1") for c in obj["spec"]["containers"]])
    return body


def relabel(api_client, labelled, backend):
    """Labels and taints of every node as tide_plan.py's labelled pool has them (half the tide nodes offline), so the
    later passes start from the same pool as tide_plan.py's scenarios (the setup: not measured)."""
    core = client.CoreV1Api(api_client)
    kube_backends.bulk_write("relabelled %d nodes as tide_plan.py's labelled pool" % len(labelled),
                             lambda node: core.patch_node(node["metadata"]["name"], {"metadata": {"labels": node["metadata"]["labels"]},
                                                                                     "spec": {"taints": node["spec"]["taints"] or None}},
                                                          _preload_content=False), labelled, backend)


def populate(api_client, nodes, pods, backend):
    """The TideNodePool CRD, the nodes (unlabelled), the pods bound to them, the pool (the setup: not measured)."""
    kube_backends.create_crds(api_client, crd_manifests.crds(["tidenodepools"]))
    core = client.CoreV1Api(api_client)
    fresh = tide_plan.make_nodes(nodes, labelled=False)
    kube_backends.bulk_write("created %d nodes" % nodes, lambda node: core.create_node(manifest(node, "Node"), _preload_content=False),
                             fresh, backend)
    if backend == "real":
        # Ready nodes, as a kubelet would report them, without the not-ready taint that the TaintNodesByCondition admission
        # plugin adds at creation (the controller-manager removes it once the node is Ready; here there is none).
        kube_backends.bulk_write("removed the not-ready taint of %d nodes" % nodes,
                                 lambda node: core.patch_node(node["metadata"]["name"], {"spec": {"taints": None}}, _preload_content=False),
                                 fresh, backend)
    bound = tide_plan.make_pods(tide_plan.make_nodes(nodes, labelled=True), pods)
    kube_backends.bulk_write("created %d bound pods" % pods,
                             lambda pod: core.create_namespaced_pod("default", manifest(pod, "Pod"), _preload_content=False), bound, backend)
    client.CustomObjectsApi(api_client).create_cluster_custom_object(tide.GROUP, "v1alpha1", "tidenodepools", POOL)


def add_pending_pods(api_client, count, backend):
    """Unbound online pods that fit no online node, marked Unschedulable as kube-scheduler marks them."""
    core = client.CoreV1Api(api_client)
    pending = tide_plan.pending_pods(count, "8", "web")
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/N nodes are available",
                 "lastTransitionTime": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}

    def create(pod):
        core.create_namespaced_pod("default", manifest(pod, "Pod"), _preload_content=False)
        core.patch_namespaced_pod_status(pod["metadata"]["name"], "default", {"status": {"conditions": [condition]}}, _preload_content=False)
    kube_backends.bulk_write("created %d pending pods" % count, create, pending, backend)


def run_pass(context, reconciler, requests, backend, label):
    began = time.monotonic()
    context.relist()
    listed = time.monotonic()
    context.kube.calls = 0
    requests.reset()
    reconciler.reconcile_all()
    result = reconciler.last_plans[POOL["metadata"]["name"]]
    writes = len(result.plan) + (1 if result.status_changed else 0) + (1 if result.add_finalizer else 0)
    flip = "%s %s (%d pods)" % (result.flip["node"], result.flip["direction"], len(result.flip["pods"])) if result.flip else "none: " + result.flip_note
    row = {"backend": backend, "pass": label, "relist": listed - began, "pass_seconds": time.monotonic() - listed,
           "calls": context.kube.calls, "writes": writes, "flip": flip, "requests": str(requests)}
    print("%-8s %-12s relist %6.2fs  pass (plan + writes) %7.2fs  %6d API calls  %5d writes  flip: %s"
          % (backend, label, row["relist"], row["pass_seconds"], row["calls"], row["writes"], flip[:100]), flush=True)
    # by verb: a node edit is one patch from the cached node (its resourceVersion as precondition), where the previous
    # algorithm read and replaced it (a get and an update per node: the baseline, a machine-independent figure)
    print("%-8s %-12s requests: %s (read-edit-replace of the same node writes: %d get, %d update)"
          % (backend, label, requests, len(reconciler.last_plans[POOL["metadata"]["name"]].plan),
             len(reconciler.last_plans[POOL["metadata"]["name"]].plan)), flush=True)
    return row


def measure_passes(api_client, backend, sizes):
    context = kube_backends.PassContext(api_client, TideReconciler.informers)
    requests = kube_backends.RequestCounter(api_client)
    reconciler = TideReconciler(context)
    rows = [run_pass(context, reconciler, requests, backend, "first pass")]
    relabel(api_client, tide_plan.make_nodes(sizes["nodes"], labelled=True), backend)
    rows.append(run_pass(context, reconciler, requests, backend, "quiet"))
    pending = sizes["pending"]
    add_pending_pods(api_client, pending, backend)
    rows.append(run_pass(context, reconciler, requests, backend, "pending"))
    return rows


def run_emulator(sizes):
    with kube_backends.emulator(history_limit=4 * (sizes["nodes"] + sizes["pods"]) + 1000) as api_client:
        populate(api_client, sizes["nodes"], sizes["pods"], "emulator")
        return measure_passes(api_client, "emulator", sizes)


def run_real(sizes, state_dir):
    with kube_backends.real_control_plane(state_dir, REAL_CONTROL_PLANE) as plane:
        kube_backends.ensure_default_service_account(plane.api_client)
        populate(plane.api_client, sizes["nodes"], sizes["pods"], "real")
        return measure_passes(plane.api_client, "real", sizes)


def print_side_by_side(rows):
    print("\nside by side (%s):" % kube_backends.load_average())
    print("%-12s %-9s %9s %11s %10s %7s  %s" % ("pass", "backend", "relist s", "pass s", "API calls", "writes", "flip"))
    order = {"first pass": 0, "quiet": 1, "pending": 2}
    for row in sorted(rows, key=lambda r: (order[r["pass"]], r["backend"])):
        print("%-12s %-9s %9.2f %11.2f %10d %7d  %s" % (row["pass"], row["backend"], row["relist"], row["pass_seconds"], row["calls"],
                                                        row["writes"], row["flip"][:70]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=50000)
    parser.add_argument("--pending", type=int, default=PENDING)
    parser.add_argument("--backend", choices=kube_backends.BACKENDS + ("both",), default="real",
                        help="the API server underneath (real: the pinned kube-apiserver + etcd of sandbox/kube)")
    parser.add_argument("--quick", action="store_true", help="%(nodes)d nodes, %(pods)d pods, %(pending)d pending: a smoke test" % QUICK)
    parser.add_argument("--state-dir", help="real backend: the control plane's state directory (default: a temporary one)")
    args = parser.parse_args()
    sizes = dict(QUICK) if args.quick else {"nodes": args.nodes, "pods": args.pods, "pending": args.pending}
    print("tide pass over %(nodes)d nodes and %(pods)d pods (%(pending)d pending in the last pass)" % sizes
          + ", backend %s; %s" % (args.backend, kube_backends.load_average()), flush=True)
    kube_backends.run_backends(args.backend, lambda: run_emulator(sizes), lambda: run_real(sizes, args.state_dir), print_side_by_side)


if __name__ == "__main__":
    main()
