"""Benchmark: a full overcommit resync of N nodes against an API server: the sandbox emulator or the real one.

    python tests/benchmarks/overcommit_reconcile.py [--nodes 5000] [--backend emulator|real|both] [--quick] [--state-dir DIR]

Creates N nodes (half in pool "a", with the webhook's original_* annotations), one NodeOvercommitConfig,
then times (1) the first pass, which annotates every node, and (2) a second pass, which writes nothing.
Prints seconds, API calls (KubeClient.calls) and the planning time alone.

``--backend real`` runs the same code against the pinned kube-apiserver + etcd of sandbox/kube (started in its own
state directory, kube-apiserver and etcd only: nothing else writes to the nodes; stopped at the end); ``both`` runs
the emulator, then the real one, and prints the two side by side. One script for both backends, so that the only
difference between the two figures is the API server underneath.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO, os.path.dirname(os.path.abspath(__file__))]

from kubernetes import client  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.katalyst.colocation.plugins.module_utils import crd_manifests, overcommit  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import overcommit_controller  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient  # noqa: E402  pylint: disable=wrong-import-position
import kube_backends  # noqa: E402  pylint: disable=wrong-import-position

PREFIX = "katalyst.kubewharf.io/"
QUICK_NODES = 200
# The real apiserver starts without controller-manager and scheduler: nothing but the benchmark writes to the nodes.
REAL_CONTROL_PLANE = ("--without", "kube-controller-manager", "--without", "kube-scheduler")


def node_manifest(index):
    labels = {PREFIX + "overcommit_node_pool": "a"} if index % 2 == 0 else {}
    annotations = {PREFIX + "original_allocatable_cpu": "31850m", PREFIX + "original_capacity_cpu": "32",
                   PREFIX + "original_allocatable_memory": "124Gi", PREFIX + "original_capacity_memory": "128Gi"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-%05d" % index, "labels": labels, "annotations": annotations},
            "status": {"capacity": {"cpu": "32", "memory": "128Gi"}, "allocatable": {"cpu": "31850m", "memory": "124Gi"}}}


def populate(api_client, nodes, backend):
    """Our CRDs, N nodes and the NodeOvercommitConfig of pool "a" (the setup: not measured)."""
    kube_backends.create_crds(api_client, crd_manifests.crds())
    core = client.CoreV1Api(api_client)
    kube_backends.bulk_write("created %d nodes" % nodes, lambda index: core.create_node(node_manifest(index), _preload_content=False),
                             range(nodes), backend)
    client.CustomObjectsApi(api_client).create_cluster_custom_object(
        "overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs",
        {"apiVersion": overcommit.NOC_API_VERSION, "kind": overcommit.NOC_KIND, "metadata": {"name": "pool-a"},
         "spec": {"nodeOvercommitSelectorVal": "a", "resourceOvercommitRatio": {"cpu": "1.5", "memory": "1.2"}}})


def measure_passes(api_client, backend):
    """The first pass (writes) and the second (no-op) of OvercommitReconciler; a row per pass."""
    kube = KubeClient(api_client=api_client)
    reconciler = overcommit_controller.OvercommitReconciler.standalone(kube)
    rows = []
    for label in ("first pass (writes)", "second pass (no-op)"):
        kube.calls = 0
        began = time.time()
        snapshot = reconciler.snapshot()
        listed = time.time()
        planned = overcommit.plan_node_overcommit(snapshot["configs"], snapshot["nodes"], snapshot["cnrs"], snapshot["pods"])
        plan_seconds = time.time() - listed
        summary = reconciler.reconcile_all(snapshot)
        row = {"backend": backend, "pass": label, "seconds": time.time() - began, "list": listed - began, "plan": plan_seconds,
               "calls": kube.calls, "patched": summary["nodes_patched"], "planned": len(planned.node_patches)}
        rows.append(row)
        print("%-8s %s: %.2fs total (list %.2fs, plan %.2fs), %d API calls, %d nodes patched, %d planned patches"
              % (backend, label, row["seconds"], row["list"], row["plan"], row["calls"], row["patched"], row["planned"]), flush=True)
    return rows


def run_emulator(nodes):
    with kube_backends.emulator(history_limit=4 * nodes + 1000) as api_client:
        populate(api_client, nodes, "emulator")
        return measure_passes(api_client, "emulator")


def run_real(nodes, state_dir):
    with kube_backends.real_control_plane(state_dir, REAL_CONTROL_PLANE) as plane:
        populate(plane.api_client, nodes, "real")
        return measure_passes(plane.api_client, "real")


def print_side_by_side(rows):
    print("\nside by side (%s):" % kube_backends.load_average())
    print("%-22s %-9s %9s %9s %9s %10s %8s" % ("pass", "backend", "seconds", "list s", "plan s", "API calls", "patched"))
    for row in sorted(rows, key=lambda r: (r["pass"], r["backend"])):
        print("%-22s %-9s %9.2f %9.2f %9.2f %10d %8d" % (row["pass"], row["backend"], row["seconds"], row["list"], row["plan"],
                                                         row["calls"], row["patched"]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--backend", choices=kube_backends.BACKENDS + ("both",), default="emulator",
                        help="the API server underneath (real: the pinned kube-apiserver + etcd of sandbox/kube)")
    parser.add_argument("--quick", action="store_true", help="%d nodes: a smoke test" % QUICK_NODES)
    parser.add_argument("--state-dir", help="real backend: the control plane's state directory (default: a temporary one)")
    args = parser.parse_args()
    nodes = QUICK_NODES if args.quick else args.nodes
    print("overcommit resync of %d nodes, backend %s; %s" % (nodes, args.backend, kube_backends.load_average()), flush=True)
    kube_backends.run_backends(args.backend, lambda: run_emulator(nodes), lambda: run_real(nodes, args.state_dir), print_side_by_side)


if __name__ == "__main__":
    main()
