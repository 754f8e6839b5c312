"""Benchmark: the agent's rootfs eviction loop (docs/eviction.md): decision latency and CPU per pass.

    python tests/benchmarks/eviction.py [--pods 200] [--rounds 10] [--period 1]

Real parts: the API emulator over HTTP (Eviction API with PodDisruptionBudgets), katalyst-agent's eviction loop
in-process (its pod informer, its loop at --period seconds), a loop-mounted 64 MiB ext4 image as the kubelet's
directory, filled by `dd`. Needs root (loop mount).

1. Latency: each round one reclaimed pod's emptyDir is filled by `dd` until the free-space threshold (20%) is crossed;
   the clock runs from the end of `dd` to the Eviction API call the emulator receives. The evicted pod's directory is
   then removed (as the kubelet would) and a new pod takes its place; each fill starts at a seeded random point of the
   loop's period P, as a real crossing does. Prints p50/p95/max: about P/2 and P plus the pass itself.
2. CPU per pass with --pods pods, each with a few files on the filesystem: the thread CPU time of one pass (dry run)
   while the threshold is met (every pod's directory walked) next to the baseline of a pass while it is not (one
   statvfs), averaged over 30 passes each.
"""

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, ".build", "collections"))

from kubernetes import client  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent import Agent  # noqa: E402  pylint: disable=wrong-import-position
from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig  # noqa: E402  pylint: disable=wrong-import-position
from tests.integration import backends  # noqa: E402  pylint: disable=wrong-import-position
from tests.integration.waiting import wait_until  # noqa: E402  pylint: disable=wrong-import-position

NODE = "bench-node"
QOS = "katalyst.kubewharf.io/qos_level"


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


class Bench:
    def __init__(self, workdir, period):
        self.workdir = workdir
        self.server = KubeAPIServer().start()
        self.server.backend = "emulator"
        self.kubeconfig = os.path.join(workdir, "kubeconfig")
        write_kubeconfig(self.kubeconfig, self.server.url)
        self.server.kubeconfig = self.kubeconfig
        self.api_client = backends.api_client(self.server)
        self.core = client.CoreV1Api(self.api_client)
        self.core.create_node({"metadata": {"name": NODE}})
        self.sysroot = os.path.join(workdir, "root")
        self.kubelet = os.path.join(self.sysroot, "var", "lib", "kubelet")
        os.makedirs(self.kubelet)
        image = os.path.join(workdir, "rootfs.img")
        subprocess.run(["truncate", "-s", "64M", image], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-N", "16384", image], check=True)
        subprocess.run(["mount", "-o", "loop", image, self.kubelet], check=True)
        self.evicted_at = {}
        self.period = period
        self.agent = None
        self.index = 0

    def pod(self, qos="reclaimed_cores"):
        """A new Running pod on the node; returns (name, uid)."""
        self.index += 1
        name = "p%04d" % self.index
        pod = self.core.create_namespaced_pod("default", {"metadata": {"name": name, "annotations": {QOS: qos}},
                                                          "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}})
        self.core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        return name, pod.metadata.uid

    def pod_dir(self, uid):
        return os.path.join(self.kubelet, "pods", uid, "volumes", "kubernetes.io~empty-dir", "scratch")

    def fill(self, uid, name, mib):
        directory = self.pod_dir(uid)
        os.makedirs(directory, exist_ok=True)
        subprocess.run(["dd", "if=/dev/zero", "of=%s" % os.path.join(directory, name), "bs=1M", "count=%d" % mib, "conv=fsync",
                        "status=none"], check=True)

    def start_agent(self, **settings):
        config = dict({"node_name": NODE, "kubeconfig": self.kubeconfig, "sysroot": self.sysroot, "qos_cgroups_enabled": False,
                       "oom_priority_enabled": False, "reclaimed_resources_enabled": False, "numa_binding_enabled": False,
                       "realtime_overcommit_enabled": False, "eviction_enabled": True, "eviction_period_seconds": self.period,
                       "eviction_rootfs_minimum_free": "20%", "eviction_rootfs_reclaimed_pod_used_priority": "1Mi",
                       "eviction_max_per_period": 1000, "eviction_pod_cooldown_seconds": 0,
                       "eviction_condition_transition_seconds": 0.5}, **settings)
        path = os.path.join(self.workdir, "agent.yaml")
        with open(path, "w") as handle:
            json.dump(config, handle)
        self.agent = Agent(path).build()
        # the eviction's arrival time, seen where it is served
        evict = self.server.api.evict

        def timed_evict(namespace, name, body, dry_run=False):
            self.evicted_at.setdefault(name, time.monotonic())
            return evict(namespace, name, body, dry_run)
        self.server.api.evict = timed_evict
        for informer in (self.agent.pods, self.agent.node):
            informer.start(self.agent.daemon.stop_event)
        self.agent.daemon.start()
        wait_until(self.agent.pods.synced.is_set, what="the agent's pod informer")

    def stop_agent(self):
        self.agent.daemon.stop()
        for informer in (self.agent.pods, self.agent.node):
            informer.stop()

    def close(self):
        if self.agent is not None:
            self.stop_agent()
        subprocess.run(["umount", "-l", self.kubelet], check=False)
        self.api_client.close()
        self.server.stop()


def latency(bench, rounds):
    """Seconds from the end of the `dd` that crosses the threshold to the Eviction API call, per round."""
    free = os.statvfs(bench.kubelet)
    capacity_mib = free.f_blocks * free.f_frsize >> 20
    # a web pod holds most of the disk; each round a new reclaimed pod crosses 20% free
    web, web_uid = bench.pod(qos="shared_cores")
    bench.fill(web_uid, web, int(capacity_mib * 0.7))
    bench.start_agent()
    samples = []
    phases = random.Random(16)
    for _round in range(rounds):
        name, uid = bench.pod()
        wait_until(lambda name=name: any(p["metadata"]["name"] == name for p in bench.agent.pods.items()), what="the agent to see %s" % name)
        available_mib = os.statvfs(bench.kubelet).f_bavail * free.f_frsize >> 20
        # a real crossing falls anywhere within the loop's period: start the fill at a seeded random phase
        time.sleep(phases.uniform(0, bench.period))
        bench.fill(uid, name, max(1, available_mib - int(capacity_mib * 0.2) + 2))
        crossed = time.monotonic()
        wait_until(lambda name=name: name in bench.evicted_at, timeout=bench.period * 4 + 30, what="%s evicted" % name)
        samples.append(bench.evicted_at[name] - crossed)
        shutil.rmtree(os.path.join(bench.kubelet, "pods", uid))    # the kubelet cleans the evicted pod up
    bench.stop_agent()
    bench.agent = None
    return samples


def pass_cpu(bench, pods, passes=30):
    """(CPU seconds of a pass under pressure, of a pass without) with ``pods`` pods, dry run, run in this thread."""
    free = os.statvfs(bench.kubelet)
    for _index in range(pods):
        name, uid = bench.pod()
        directory = bench.pod_dir(uid)
        os.makedirs(directory)
        for number in range(5):
            with open(os.path.join(directory, "f%d" % number), "wb") as handle:
                handle.write(b"x" * 4096)
    bench.start_agent(eviction_dry_run=True, eviction_period_seconds=3600)
    wait_until(lambda: len(bench.agent.pods.items()) >= pods, what="the agent to see %d pods" % pods)
    loop = next(loop for loop in bench.agent.daemon.loops if loop.name == "eviction")

    def measure():
        spent = []
        for _index in range(passes):
            started = time.thread_time()
            loop.run_once()
            spent.append(time.thread_time() - started)
        return statistics.mean(spent)
    idle = measure()
    filler = os.path.join(bench.kubelet, "filler")
    # the threshold met: fill to 90%
    subprocess.run(["dd", "if=/dev/zero", "of=%s" % filler, "bs=1M", "count=%d" % max(1, (free.f_bavail * free.f_frsize >> 20) - 6),
                    "status=none"], check=False)
    pressured = measure()
    os.unlink(filler)
    return pressured, idle


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--period", type=float, default=1.0, help="the eviction loop's period (the agent's default 1 s; Katalyst's 5 s)")
    args = parser.parse_args()
    logging.getLogger("katalyst").setLevel(logging.ERROR)     # one "evicted ..." line per pass is not the figure
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        print("skipped: needs root and mkfs.ext4 (a loop-mounted filesystem)")
        return
    with tempfile.TemporaryDirectory() as workdir:
        bench = Bench(workdir, args.period)
        try:
            samples = latency(bench, args.rounds)
        finally:
            bench.close()
    print("eviction decision latency, threshold crossed -> Eviction API call (period %.1f s, %d rounds): p50 %.2f s, p95 %.2f s, max %.2f s"
          % (args.period, len(samples), percentile(samples, 0.5), percentile(samples, 0.95), max(samples)))
    with tempfile.TemporaryDirectory() as workdir:
        bench = Bench(workdir, args.period)
        try:
            pressured, idle = pass_cpu(bench, args.pods)
        finally:
            bench.close()
    print("agent CPU per eviction pass, %d pods (dry run): %.1f ms under pressure (every pod's directory walked); baseline %.2f ms "
          "without pressure (one statvfs): x%.0f" % (args.pods, pressured * 1000, idle * 1000, pressured / idle if idle else float("inf")))


if __name__ == "__main__":
    main()
