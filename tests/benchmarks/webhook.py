"""Benchmark: katalyst-webhook AdmissionReviews per second and latency over HTTPS with concurrent clients.

    python tests/benchmarks/webhook.py [--clients 8] [--seconds 10]

The webhook runs as its own process (as under systemd); each client thread keeps one TLS connection
(as the API server does) and posts kubelet-style ``UPDATE nodes/status`` reviews of a realistic Node
(labels, overcommit annotations, 12 conditions, 40 images, addresses) whose allocatable is amplified.
Prints reviews/s and p50/p90/p99 latency. Goal: >= 1000/s with p99 < 20 ms (10,000 nodes at a 10 s heartbeat).
"""

import argparse
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import pathlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from tests.integration.tlsutil import make_ca_and_server_cert  # noqa: E402  pylint: disable=wrong-import-position

PREFIX = "katalyst.kubewharf.io/"


def realistic_node(index):
    name = "node-%05d" % index
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "node.kubernetes.io/instance-type": "m6i.8xlarge", "topology.kubernetes.io/zone": "zone-%d" % (index % 3),
              PREFIX + "overcommit_node_pool": "online"}
    annotations = {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                   PREFIX + "cpu_overcommit_ratio": "1.5", PREFIX + "memory_overcommit_ratio": "1.2",
                   PREFIX + "realtime_cpu_overcommit_ratio": "1.62", PREFIX + "original_allocatable_cpu": "31850m",
                   PREFIX + "original_capacity_cpu": "32", PREFIX + "original_allocatable_memory": "124Gi",
                   PREFIX + "original_capacity_memory": "128Gi", PREFIX + "overcommit_allocatable_cpu": "47775m",
                   PREFIX + "overcommit_capacity_cpu": "48"}
    stamp = "2025-01-01T00:00:00Z"
    conditions = [{"type": t, "status": "False", "reason": "Kubelet" + t, "message": "kubelet has no %s" % t.lower(),
                   "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable", "KernelDeadlock",
                            "ReadonlyFilesystem", "FrequentKubeletRestart", "FrequentDockerRestart", "FrequentContainerdRestart",
                            "CorruptDockerOverlay2", "FrequentUnregisterNetDevice")]
    conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                       "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
    images = [{"names": ["registry.example.com/team-%d/service-%d@sha256:%064x" % (i % 7, i, i), "registry.example.com/team-%d/service-%d:v%d"
                         % (i % 7, i, i)], "sizeBytes": 100000000 + i} for i in range(40)]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": "uid-%d" % index, "resourceVersion": str(1000 + index), "labels": labels,
                         "annotations": annotations, "creationTimestamp": stamp},
            "spec": {"podCIDR": "10.%d.%d.0/24" % (index // 256 % 256, index % 256), "providerID": "aws:///zone/i-%08x" % index},
            "status": {"capacity": {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "200Gi", "hugepages-2Mi": "0"},
                       "allocatable": {"cpu": "31850m", "memory": "124Gi", "pods": "110", "ephemeral-storage": "180Gi", "hugepages-2Mi": "0"},
                       "conditions": conditions, "addresses": [{"type": "InternalIP", "address": "10.0.%d.%d" % (index // 256 % 256, index % 256)},
                                                               {"type": "Hostname", "address": name}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                       "nodeInfo": {"kubeletVersion": "v1.28.5", "containerRuntimeVersion": "containerd://1.7.11", "osImage": "Ubuntu 22.04",
                                    "kernelVersion": "5.15.0", "architecture": "amd64", "operatingSystem": "linux"},
                       "images": images}}


def review_body(index):
    node = realistic_node(index)
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "uid-%d" % index, "operation": "UPDATE", "subResource": "status",
                                   "kind": {"group": "", "version": "v1", "kind": "Node"},
                                   "resource": {"group": "", "version": "v1", "resource": "nodes"},
                                   "name": node["metadata"]["name"], "object": node, "oldObject": node}}).encode()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    certs = make_ca_and_server_cert(workdir)
    port = free_port()
    config = workdir / "webhook.json"
    config.write_text(json.dumps({"listen_address": "127.0.0.1", "port": port, "tls_cert_file": certs["cert"],
                                  "tls_key_file": certs["key"], "log_level": "warning"}))
    code = "import sys; sys.path.insert(0, %r); from plugins.module_utils.daemons.webhook import main; sys.exit(main(sys.argv[1:]))" % REPO
    server = subprocess.Popen([sys.executable, "-c", code, "--config", str(config)])
    context = ssl.create_default_context(cafile=certs["ca"])
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        bodies = [review_body(i) for i in range(200)]
        print("AdmissionReview size: %d bytes" % len(bodies[0]))
        latencies, errors = [], []
        lock = threading.Lock()
        stop_at = time.time() + args.seconds

        def client(offset):
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
            mine, index = [], offset
            while time.time() < stop_at:
                body = bodies[index % len(bodies)]
                index += args.clients
                started = time.perf_counter()
                connection.request("POST", "/node", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
                mine.append(time.perf_counter() - started)
                if response.status != 200 or b'"patch"' not in data:
                    errors.append(response.status)
            connection.close()
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        began = time.time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.time() - began
        latencies.sort()

        def pct(p):
            return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

        print("clients=%d reviews=%d errors=%d seconds=%.1f" % (args.clients, len(latencies), len(errors), elapsed))
        print("throughput: %.0f reviews/s" % (len(latencies) / elapsed))
        print("latency ms: p50=%.2f p90=%.2f p99=%.2f max=%.2f" % (pct(0.50), pct(0.90), pct(0.99), latencies[-1] * 1000))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
