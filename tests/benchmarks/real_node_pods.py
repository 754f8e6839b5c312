"""Benchmark: real pods on the real kubelet node (sandbox/kube/node.py) with katalyst-agent installed by the agent role.

    python tests/benchmarks/real_node_pods.py [--pods 50] [--state-dir DIR]

Starts a control plane and the real node (containerd + runc + the pinned kubelet), installs the agent as
tests/integration/realnode.py does, then creates the pods one after the other, cycling through the four QoS levels
with different `oom_priority` values. Per pod it measures
- created -> Running: from the create call until the API says Running (polled every 20 ms);
- Running -> oom_score_adj ordered: until the processes of every pod running so far have oom_score_adj values that
  follow their priorities strictly (a pod of lower priority has a higher value than every pod of higher priority).
Prints p50 / p95 / max of both. Needs root and `make kube-build`; says why and exits 0 where it cannot run.
"""

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO]

from kubernetes import client, config  # noqa: E402  pylint: disable=wrong-import-position

from tests.integration import realnode  # noqa: E402  pylint: disable=wrong-import-position
from tests.integration.test_real_node_agent import effective_priorities, ordered, pod  # noqa: E402  pylint: disable=wrong-import-position

LEVELS = (("reclaimed_cores", (-100, -60, -20)), ("shared_cores", (10, 50, 90)), ("dedicated_cores", (110, 150, 190)),
          ("system_cores", (210, 250, 290)))


def percentile(values, fraction):
    ordered_values = sorted(values)
    return ordered_values[min(len(ordered_values) - 1, int(round(fraction * (len(ordered_values) - 1))))]


def wait(check, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError("timed out after %.0fs waiting for %s" % (timeout, what))


def running_pod(api, name):
    found = api.read_namespaced_pod(name, "default")
    return found if found.status.phase == "Running" else None


def in_order(uids, priorities):
    adjs = realnode.pods_oom_score_adj(uids)
    return adjs is not None and ordered(adjs, priorities)


def run(args, state):
    pods = []
    for index in range(args.pods):
        level, priorities = LEVELS[index % len(LEVELS)]
        pods.append(("bench-%02d" % index, level, priorities[(index // len(LEVELS)) % len(priorities)]))
    priorities = effective_priorities(pods)
    with realnode.real_node(state) as node:
        rc, _tasks, output = realnode.install_agent(node, os.path.join(state, "agent"))
        if rc != 0:
            raise RuntimeError("the agent role failed:\n" + output[-3000:])
        api = client.CoreV1Api(config.new_client_from_config(node.kubeconfig))
        to_running, to_ordered, uids = [], [], {}
        try:
            for name, level, wanted in pods:
                created = time.monotonic()
                api.create_namespaced_pod("default", pod(name, level, wanted, "exec katalyst-workload sleep"))
                found = wait(lambda n=name: running_pod(api, n), 300, name + " Running")
                running = time.monotonic()
                uids[name] = found.metadata.uid
                wait(lambda: in_order(uids, priorities), 120, "ordered with " + name)
                to_running.append(running - created)
                to_ordered.append(time.monotonic() - running)
                print("%s (%s, oom_priority %d): Running after %.2fs, ordered %.3fs later" % (name, level, wanted, to_running[-1], to_ordered[-1]),
                      flush=True)
        finally:
            api.delete_collection_namespaced_pod("default", label_selector="test=oom", grace_period_seconds=0)
            realnode.stop_agent(node, os.path.join(state, "agent"))
    print("\n%d pods, load average %s" % (len(to_running), open("/proc/loadavg", encoding="utf-8").read().split()[0]))
    for label, values in (("created -> Running", to_running), ("Running -> oom_score_adj ordered", to_ordered)):
        print("%-34s p50 %.3fs  p95 %.3fs  max %.3fs" % (label, percentile(values, 0.5), percentile(values, 0.95), max(values)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--state-dir", help="the control plane's state dir (default: a temporary one)")
    args = parser.parse_args()
    reason = realnode.skip_reason()
    if reason:
        print("real_node_pods: not run: " + reason)
        return 0
    if args.state_dir:
        run(args, args.state_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="real-node-bench-") as state:
            run(args, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
