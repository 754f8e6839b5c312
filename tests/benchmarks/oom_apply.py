"""Benchmark: how fast katalyst-agent puts a new pod's processes in OOM-priority order, and what a reconcile costs.

    python tests/benchmarks/oom_apply.py [--pods 100] [--containers 2]

Real parts: the API emulator over HTTP, katalyst-agent as a subprocess (its pod watch, its oom_priority
loop at the default 1 s period, woken by pod events), real processes in real cgroup v1 memory cgroups
(kubelet layout under a private --cgroup-root). Needs root and a writable cgroup v1 memory hierarchy.

1. Latency: for each of --pods pods (reclaimed_cores, so the agent must raise oom_score_adj above 0),
   the pod's processes are started in its cgroups, then the pod turns Running in the emulator; the clock
   runs until every process of the pod carries a positive oom_score_adj. Prints p50/p95/max.
2. Cost: with all pods (pods x containers processes) in place, the agent's CPU time (utime+stime from
   /proc) over a window divided by the oom_priority reconciles it ran (its own loop counter).
"""

import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, ".build", "collections"))


from tests.benchmarks.oombench import QOS, options, percentile, start_node, write_agent_config  # noqa: E402  pylint: disable=wrong-import-position
from tests.integration import oomlib  # noqa: E402  pylint: disable=wrong-import-position

NODE = "bench-node"
SLEEPER = "import time\nwhile True: time.sleep(3600)\n"


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port, name, labels):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    found = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(found.group(1)) if found else 0.0


def main():
    args = options(10.0, "seconds over which reconcile CPU is measured").parse_args()
    started = start_node("oom_apply", "oom-bench", NODE)
    if started is None:
        return 0
    tmp, server, kubeconfig, core, domain = started
    processes, agent = [], None
    try:
        config = os.path.join(tmp, "agent.yaml")
        write_agent_config(config, NODE, kubeconfig, domain)
        log_path = os.path.join(tmp, "agent.log")
        agent = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent",
                                  "--config", config], stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PYTHONPATH=os.path.join(REPO, ".build", "collections")))
        port = None
        while port is None:
            found = re.search(r"on 127\.0\.0\.1:(\d+)", open(log_path).read())
            port = int(found.group(1)) if found else time.sleep(0.1)
        latencies = []
        # one online pod first: reclaimed pods must then be raised above it (alone, nothing needs ordering)
        specs = [("web", "shared_cores")] + [("batch-%03d" % index, "reclaimed_cores") for index in range(args.pods)]
        for index, (name, qos_level) in enumerate(specs):
            containers = [{"name": "c%d" % c, "image": "x", "resources": {"requests": {"memory": "1Mi"}}} for c in range(args.containers)]
            pod = core.create_namespaced_pod("default", {"metadata": {"name": name, "annotations": {QOS: qos_level}},
                                                         "spec": {"nodeName": NODE, "containers": containers}})
            pids = []
            qos_class = "BestEffort" if qos_level == "reclaimed_cores" else "Burstable"
            for container in range(args.containers):
                cgroup = os.path.join(domain.path, "kubepods", qos_class.lower(), "pod" + pod.metadata.uid, "ctr%d" % container)
                os.makedirs(cgroup)
                process = subprocess.Popen([sys.executable, "-c", SLEEPER], preexec_fn=lambda c=cgroup: open(c + "/cgroup.procs", "w").write(
                    str(os.getpid())))  # pylint: disable=subprocess-popen-preexec-fn
                processes.append(process)
                pids.append(process.pid)
            time.sleep(0.05)   # the interpreters are up (their oom_score_adj is 0)
            start = time.monotonic()
            core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "qosClass": qos_class}})
            if name == "web":
                continue
            while not all(oomlib.oom_score_adj(pid) > 0 for pid in pids):
                if time.monotonic() - start > 30:
                    raise RuntimeError("pod %s not ordered after 30 s; agent log:\n%s" % (name, open(log_path).read()[-2000:]))
                time.sleep(0.002)
            latencies.append(time.monotonic() - start)
            if index % 25 == 0:
                print("  %d pods placed, last latency %.3f s" % (index, latencies[-1]), flush=True)
        print("latency pod Running -> processes ordered (%d pods, %d containers each): p50 %.3f s  p95 %.3f s  max %.3f s" % (
            args.pods, args.containers, statistics.median(latencies), percentile(latencies, 0.95), max(latencies)))
        labels = 'daemon="katalyst-agent",loop="oom_priority",outcome="success"'
        runs0, cpu0 = metric(port, "katalyst_loop_runs_total", labels), cpu_seconds(agent.pid)
        time.sleep(args.window)
        runs1, cpu1 = metric(port, "katalyst_loop_runs_total", labels), cpu_seconds(agent.pid)
        reconciles = runs1 - runs0
        print("agent CPU per full oom_priority reconcile with %d containers: %.1f ms (%d reconciles in %.0f s, %.1f%% of a core)" % (
            args.pods * args.containers, 1000 * (cpu1 - cpu0) / max(reconciles, 1), reconciles, args.window,
            100 * (cpu1 - cpu0) / args.window))
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        for process in processes:
            process.kill()
            process.wait()
        domain.close()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
