"""Benchmark: a full overcommit resync of N nodes against the sandbox API emulator.

    python tests/benchmarks/overcommit_reconcile.py [--nodes 5000]

Creates N nodes (half in pool "a", with the webhook's original_* annotations), one NodeOvercommitConfig,
then times (1) the first pass, which annotates every node, and (2) a second pass, which writes nothing.
Prints seconds, API calls (KubeClient.calls) and the planning time alone.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO]

from kubernetes import client  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.katalyst.colocation.plugins.module_utils import crd_manifests, overcommit  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import overcommit_controller  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import KubeClient  # noqa: E402  pylint: disable=wrong-import-position
from sandbox.kubeapi.server import KubeAPIServer  # noqa: E402  pylint: disable=wrong-import-position

PREFIX = "katalyst.kubewharf.io/"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    args = parser.parse_args()
    server = KubeAPIServer(history_limit=4 * args.nodes + 1000).start()
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        api_client = client.ApiClient(configuration)
        ext = client.ApiextensionsV1Api(api_client)
        for crd in crd_manifests.crds():
            ext.create_custom_resource_definition(crd)
        core = client.CoreV1Api(api_client)
        started = time.time()
        for index in range(args.nodes):
            labels = {PREFIX + "overcommit_node_pool": "a"} if index % 2 == 0 else {}
            annotations = {PREFIX + "original_allocatable_cpu": "31850m", PREFIX + "original_capacity_cpu": "32",
                           PREFIX + "original_allocatable_memory": "124Gi", PREFIX + "original_capacity_memory": "128Gi"}
            core.create_node({"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": "node-%05d" % index, "labels": labels, "annotations": annotations},
                              "status": {"capacity": {"cpu": "32", "memory": "128Gi"}, "allocatable": {"cpu": "31850m", "memory": "124Gi"}}},
                             _preload_content=False)
        print("created %d nodes in %.1fs" % (args.nodes, time.time() - started))
        client.CustomObjectsApi(api_client).create_cluster_custom_object(
            "overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs",
            {"apiVersion": overcommit.NOC_API_VERSION, "kind": overcommit.NOC_KIND, "metadata": {"name": "pool-a"},
             "spec": {"nodeOvercommitSelectorVal": "a", "resourceOvercommitRatio": {"cpu": "1.5", "memory": "1.2"}}})
        kube = KubeClient(api_client=api_client)
        reconciler = overcommit_controller.OvercommitReconciler.standalone(kube)
        for label in ("first pass (writes)", "second pass (no-op)"):
            kube.calls = 0
            began = time.time()
            snapshot = reconciler.snapshot()
            listed = time.time()
            planned = overcommit.plan_node_overcommit(snapshot["configs"], snapshot["nodes"], snapshot["cnrs"], snapshot["pods"])
            plan_seconds = time.time() - listed
            summary = reconciler.reconcile_all(snapshot)
            print("%s: %.2fs total (list %.2fs, plan %.2fs), %d API calls, %d nodes patched, %d planned patches"
                  % (label, time.time() - began, listed - began, plan_seconds, kube.calls, summary["nodes_patched"],
                     len(planned.node_patches)))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
