"""Nodes without a kubelet, kept alive the way kwok does it, against any real apiserver.

    python -m sandbox.kube.fakenodes --kubeconfig FILE --count N [--prefix fake-node-] [--delete-on-exit]

Creates (or adopts) N Node objects, then until SIGTERM/SIGINT: renews each node's `coordination.k8s.io/v1` Lease in
`kube-node-lease` every --lease-seconds (10, as the kubelet does) and sends a status heartbeat through the
`nodes/status` subresource every --status-seconds (40; the kubelet's nodeStatusReportFrequency is 5 min when the
lease works, kwok's default is close to this), so kube-controller-manager's node lifecycle controller keeps them
Ready and every admission webhook on nodes/status sees real updates. One thread pool serves all nodes and the first
heartbeats are spread over the interval, so a few thousand nodes do not all renew in the same second.
"""

import argparse
import concurrent.futures
import datetime
import logging
import random
import signal
import sys
import threading
import time

from sandbox.kube.cluster import pinned_version

LOG = logging.getLogger("sandbox.kube.fakenodes")
LEASE_NAMESPACE = "kube-node-lease"


def now_micro():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_seconds():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions(heartbeat, transition):
    """The kubelet's node conditions: Ready, and no memory, disk or PID pressure."""
    pressure = {"MemoryPressure": "KubeletHasSufficientMemory", "DiskPressure": "KubeletHasNoDiskPressure",
                "PIDPressure": "KubeletHasSufficientPID"}
    result = [{"type": kind, "status": "False", "reason": reason, "message": "fake node: no pressure",
               "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition} for kind, reason in pressure.items()]
    result.append({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node kept alive by sandbox.kube.fakenodes",
                   "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition})
    return result


def node_manifest(name, index, args):
    stamp = now_seconds()
    resources = {"cpu": args.cpu, "memory": args.memory, "pods": str(args.pods), "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                              "kubernetes.io/arch": "amd64", "type": "kwok"},
                     "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {},
        "status": {
            "capacity": dict(resources), "allocatable": dict(resources),
            "conditions": conditions(stamp, stamp),
            "addresses": [{"type": "InternalIP", "address": "10.%d.%d.%d" % (200 + index // 65536 % 50, index // 256 % 256, index % 256)},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": args.kubelet_version,
                         "kubeProxyVersion": "", "containerRuntimeVersion": "fake://0", "kernelVersion": "fake",
                         "osImage": "fake", "machineID": "", "systemUUID": "", "bootID": ""},
        },
    }


class FakeNode:  # pylint: disable=too-many-instance-attributes
    """One node: its object, its Lease, its heartbeats."""

    def __init__(self, apis, name, index, args):
        self.core, self.coordination = apis
        self.name, self.index, self.args = name, index, args
        self.uid = None
        self.lease_version = None
        self.transition = now_seconds()
        self.next_lease = self.next_status = 0.0

    def register(self):
        from kubernetes.client.exceptions import ApiException  # pylint: disable=import-outside-toplevel
        try:
            node = self.core.create_node(node_manifest(self.name, self.index, self.args))
            LOG.info("created node %s", self.name)
        except ApiException as err:
            if err.status != 409:
                raise
            node = self.core.read_node(self.name)
            LOG.info("adopted node %s", self.name)
        self.uid = node.metadata.uid
        self.due(time.monotonic())  # the first heartbeat and Lease now (errors: retried by the loop)

    def heartbeat(self):
        """A status update through nodes/status: all conditions with a fresh lastHeartbeatTime (merge patch)."""
        self.core.patch_node_status(self.name, {"status": {"conditions": conditions(now_seconds(), self.transition)}})

    def renew_lease(self):
        from kubernetes.client.exceptions import ApiException  # pylint: disable=import-outside-toplevel
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE,
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}]},
                "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": now_micro()}}
        for attempt in range(3):
            # The resourceVersion of our last write: one request per renewal; read again only after a conflict.
            if self.lease_version is None:
                try:
                    self.lease_version = self.coordination.read_namespaced_lease(self.name, LEASE_NAMESPACE).metadata.resource_version
                except ApiException as err:
                    if err.status != 404:
                        raise
                    created = self.coordination.create_namespaced_lease(LEASE_NAMESPACE, body)
                    self.lease_version = created.metadata.resource_version
                    return
            body["metadata"]["resourceVersion"] = self.lease_version
            try:
                self.lease_version = self.coordination.replace_namespaced_lease(
                    self.name, LEASE_NAMESPACE, body).metadata.resource_version
                return
            except ApiException as err:
                self.lease_version = None
                if err.status not in (404, 409) or attempt == 2:
                    raise

    def due(self, now):
        """Run what is due (lease, status); errors are logged and retried at the next tick."""
        try:
            if now >= self.next_lease:
                self.renew_lease()
                self.next_lease = now + self.args.lease_seconds
            if now >= self.next_status:
                self.heartbeat()
                self.next_status = now + self.args.status_seconds
        except Exception as err:  # pylint: disable=broad-except
            LOG.warning("node %s: %s (retrying)", self.name, str(err).splitlines()[0] if str(err) else err)


def run(args, stop):
    # pylint: disable=import-outside-toplevel
    from kubernetes import client, config
    configuration = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = max(4, args.workers)  # one connection per worker, kept
    api_client = client.ApiClient(configuration)
    apis = (client.CoreV1Api(api_client), client.CoordinationV1Api(api_client))
    nodes = [FakeNode(apis, "%s%d" % (args.prefix, i), i, args) for i in range(args.count)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(lambda n: n.register(), nodes))
        LOG.info("%d fake nodes registered; renewing leases every %gs, status every %gs",
                 len(nodes), args.lease_seconds, args.status_seconds)
        start = time.monotonic()
        for node in nodes:  # spread the next renewals over the intervals
            node.next_lease = min(node.next_lease, start + random.uniform(0, args.lease_seconds))
            node.next_status = min(node.next_status, start + random.uniform(0, args.status_seconds))
        while not stop.is_set():
            now = time.monotonic()
            due = [n for n in nodes if now >= min(n.next_lease, n.next_status)]
            list(pool.map(lambda n: n.due(now), due))
            upcoming = min(min(n.next_lease, n.next_status) for n in nodes)
            stop.wait(max(0.05, min(1.0, upcoming - time.monotonic())))
        if args.delete_on_exit:
            list(pool.map(lambda n: apis[0].delete_node(n.name), nodes))
            LOG.info("deleted %d fake nodes", len(nodes))
    api_client.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sandbox.kube.fakenodes", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="fake-node-")
    parser.add_argument("--lease-seconds", type=float, default=10.0)
    parser.add_argument("--status-seconds", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--cpu", default="32")
    parser.add_argument("--memory", default="256Gi")
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--kubelet-version", default=pinned_version(), help="status.nodeInfo.kubeletVersion (the pinned release)")
    parser.add_argument("--delete-on-exit", action="store_true", help="delete the nodes on SIGTERM/SIGINT (kept by default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="fakenodes: %(asctime)s %(message)s", stream=sys.stdout)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(args, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
