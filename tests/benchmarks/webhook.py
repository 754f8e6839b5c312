"""Benchmark: katalyst-webhook AdmissionReviews per second and latency over HTTPS with concurrent clients.

    python tests/benchmarks/webhook.py [--clients 8] [--seconds 10] [--no-baseline] [--no-pin] [--no-orjson]

The webhook runs as its own process (as under systemd); each client thread keeps one TLS connection
(as the API server does) and posts kubelet-style ``UPDATE nodes/status`` reviews of a realistic Node
(labels, overcommit annotations, 12 conditions, 40 images, addresses) whose allocatable is amplified.
Prints reviews/s and p50/p90/p99 latency. Goal: >= 2500/s with p99 < 10 ms on 2 cores.

With two or more CPUs the server is pinned to one and this load generator to the others, so the client's
work does not eat into the server's. First a baseline runs the same way: the webhook's HTTP stack with a
handler answering one fixed AdmissionReview (no JSON, no review), the ceiling of HTTP + TLS on this machine;
the webhook's figure is printed next to it as a ratio, which carries over to a slower or faster machine.
"""

import argparse
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


SERVER = "import sys; sys.path.insert(0, %r)\nfrom plugins.module_utils.daemons import webhook\n" % REPO
# the baseline: the webhook daemon as it is (HTTP stack, TLS, metrics), its route answering one fixed AdmissionReview
ECHO = ("import json\nFIXED = json.dumps({'apiVersion': 'admission.k8s.io/v1', 'kind': 'AdmissionReview', 'response': {'uid': 'u', "
        "'allowed': True, 'patchType': 'JSONPatch', 'patch': 'W10='}}).encode()\n"
        "webhook.WebhookDaemon.handle_raw = lambda self, raw: (200, FIXED)\n")
MAIN = "sys.exit(webhook.main(sys.argv[1:]))\n"


def cpu_split(pin):
    """(the server's CPUs, the client's CPUs): one CPU for the server, the others for this load generator."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def read_response(sock, pending):
    """One HTTP/1.1 response off ``sock``: (status, body, bytes read past it). Lean on purpose: the load generator's
    CPU time must not be what the benchmark measures."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        pending += chunk
    head, _sep, pending = pending.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _colon, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(pending) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        pending += chunk
    return status, pending[:length], pending[length:]


def run(label, prelude, args, certs, requests, expect):
    """Start a server (``prelude`` + main), load it for ``args.seconds``, stop it; print and return its figures."""
    server_cpus, client_cpus = cpu_split(not args.no_pin)
    port = free_port()
    config = pathlib.Path(certs["cert"]).parent / ("%s.json" % label)
    config.write_text(json.dumps({"listen_address": "127.0.0.1", "port": port, "tls_cert_file": certs["cert"],
                                  "tls_key_file": certs["key"], "log_level": "warning"}))
    pin = "import os; os.sched_setaffinity(0, %r)\n" % (server_cpus,) if server_cpus else ""
    server = subprocess.Popen([sys.executable, "-c", pin + SERVER + prelude + MAIN, "--config", str(config)])
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    context = ssl.create_default_context(cafile=certs["ca"])
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        latencies, errors = [], []
        lock = threading.Lock()
        ready = threading.Barrier(args.clients + 1)
        timing = {}

        def client(offset):
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mine, index, pending = [], offset, b""
            ready.wait()
            stop_at = timing["stop_at"]
            while time.time() < stop_at:
                request = requests[index % len(requests)]
                index += args.clients
                started = time.perf_counter()
                sock.sendall(request)
                status, data, pending = read_response(sock, pending)
                mine.append(time.perf_counter() - started)
                if status != 200 or expect not in data:
                    errors.append(status)
            sock.close()
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        timing["stop_at"] = time.time() + args.seconds
        began = time.time()
        ready.wait()
        for thread in threads:
            thread.join()
        elapsed = time.time() - began
        latencies.sort()

        def pct(p):
            return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

        rate = len(latencies) / elapsed
        print("%s: clients=%d reviews=%d errors=%d seconds=%.1f server CPUs=%s client CPUs=%s"
              % (label, args.clients, len(latencies), len(errors), elapsed, sorted(server_cpus or []) or "any", sorted(client_cpus or []) or "any"))
        print("%s: throughput: %.0f reviews/s" % (label, rate))
        print("%s: latency ms: p50=%.2f p90=%.2f p99=%.2f max=%.2f" % (label, pct(0.50), pct(0.90), pct(0.99), latencies[-1] * 1000))
        return {"rate": rate, "p50": pct(0.50), "p99": pct(0.99), "errors": len(errors)}
    finally:
        server.terminate()
        server.wait(timeout=10)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus | server_cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the echo server's baseline run")
    parser.add_argument("--baseline-only", action="store_true", help="run only the echo server (to profile the HTTP stack)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and the client to separate CPUs")
    parser.add_argument("--no-orjson", action="store_true", help="the webhook parses with the stdlib even when orjson is installed")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    certs = make_ca_and_server_cert(workdir)
    bodies = [review_body(i) for i in range(200)]
    requests = [b"POST /node HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body) for body in bodies]
    print("AdmissionReview size: %d bytes" % len(bodies[0]))
    baseline = None if args.no_baseline else run("echo", ECHO, args, certs, requests, b'"patch"')
    if args.baseline_only:
        return
    try:
        import orjson   # pylint: disable=import-outside-toplevel
        parser_name = "stdlib json (--no-orjson)" if args.no_orjson else "orjson %s" % orjson.__version__
    except ImportError:
        parser_name = "stdlib json (orjson not installed)"
    print("webhook JSON parser: %s" % parser_name)
    result = run("webhook", "webhook.orjson = None\n" if args.no_orjson else "", args, certs, requests, b'"patch"')
    if baseline:
        print("webhook/echo: %.2f of the baseline's throughput (%.0f vs %.0f reviews/s), p99 %.2f vs %.2f ms"
              % (result["rate"] / baseline["rate"], result["rate"], baseline["rate"], result["p99"], baseline["p99"]))


if __name__ == "__main__":
    main()
