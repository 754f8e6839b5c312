"""Benchmark: katalyst-agent's CPU on a node where nothing changes, per loop, and how fast it still reacts.

    python tests/benchmarks/agent_idle.py [--pods 100] [--containers 2] [--window 20] [--samples 10]

Real parts, as in oom_apply.py: the API emulator over HTTP, katalyst-agent as a subprocess at its default periods
(oom_priority every 1 s, woken by pod events), real processes in real cgroup v1 memory cgroups (kubelet layout under a
private --cgroup-root). Needs root and a writable cgroup v1 memory hierarchy.

The same node (--pods pods of --containers containers, one `sleep` each: one online pod, the others reclaimed_cores) is
measured under three agents, one after the other:

- previous: the agent of BASELINE_COMMIT (``git archive``), the last tree before unchanged passes were skipped: every
  oom_priority pass a full pass, every cgroup tree walked with a stat per entry;
- full every pass: this tree with ``oom_priority_full_pass_seconds: 0`` (the skip off, the cheaper full pass kept);
- this tree: unchanged passes skipped.

For each: CPU % of one core per thread over --window seconds of nothing changing (each loop runs in a thread of its
own, named after it here through prctl, read from /proc/<pid>/task), the whole process, and then the reaction times:
a new pod turning Running -> every process of it has a positive oom_score_adj, and a new process in an existing
container's cgroup -> its positive oom_score_adj (p50/p95/max over --samples each). Prints numbers, asserts nothing.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, ".build", "collections"))


from tests.benchmarks.oombench import QOS, options, percentile, start_node, write_agent_config  # noqa: E402  pylint: disable=wrong-import-position
from tests.integration import oomlib  # noqa: E402  pylint: disable=wrong-import-position

NODE = "idle-node"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# runs the agent's main with every thread's kernel name (comm, 15 characters) set to its Python name minus the daemon's
LAUNCHER = """
import ctypes, sys, threading
libc = ctypes.CDLL(None)
run = threading.Thread.run
def named(self):
    libc.prctl(15, self.name.replace("katalyst-agent-", "")[:15].encode(), 0, 0, 0)
    run(self)
threading.Thread.run = named
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import agent
sys.exit(agent.main(sys.argv[1:]))
"""


def adj(pid):
    try:
        return oomlib.oom_score_adj(pid)
    except OSError:
        return None


def threads_cpu(pid):
    """{thread name: CPU seconds} of a process's live threads, and the whole process's CPU seconds (exited threads too)."""
    per = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as handle:
                name = handle.read().strip()
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        per[name] = per.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return per, (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for %s" % what)
        time.sleep(0.002)


class Node:
    """Pods in the emulator and their `sleep` processes in real memory cgroups."""

    def __init__(self, core, domain):
        self.core = core
        self.domain = domain
        self.processes = {}      # pod name -> [Popen]
        self.cgroups = {}        # pod name -> [container cgroup dirs]

    def start(self, cgroup):
        process = subprocess.Popen(["sleep", "36000"], preexec_fn=lambda: open(cgroup + "/cgroup.procs", "w").write(
            str(os.getpid())))  # pylint: disable=subprocess-popen-preexec-fn
        return process

    def add_pod(self, name, qos_level, containers):
        """Creates the pod, its cgroups and processes; returns the status patch that makes it Running."""
        specs = [{"name": "c%d" % index, "image": "x", "resources": {"requests": {"memory": "1Mi"}}} for index in range(containers)]
        pod = self.core.create_namespaced_pod("default", {"metadata": {"name": name, "annotations": {QOS: qos_level}},
                                                          "spec": {"nodeName": NODE, "containers": specs}})
        qos_class = "BestEffort" if qos_level == "reclaimed_cores" else "Burstable"
        pod_dir = os.path.join(self.domain.path, "kubepods", qos_class.lower(), "pod" + pod.metadata.uid)
        self.cgroups[name] = [os.path.join(pod_dir, "ctr%d" % index) for index in range(containers)]
        self.processes[name] = []
        for cgroup in self.cgroups[name]:
            os.makedirs(cgroup)
            self.processes[name].append(self.start(cgroup))
        return {"status": {"phase": "Running", "qosClass": qos_class}}

    def run_pod(self, name, status):
        self.core.patch_namespaced_pod_status(name, "default", status)

    def remove_pod(self, name):
        self.core.delete_namespaced_pod(name, "default")
        for process in self.processes.pop(name):
            process.kill()
            process.wait()
        cgroups = self.cgroups.pop(name)
        for cgroup in cgroups + [os.path.dirname(cgroups[0])]:
            for _attempt in range(100):
                try:
                    os.rmdir(cgroup)
                    break
                except OSError:
                    time.sleep(0.05)

    def ordered(self, names):
        return all((adj(process.pid) or 0) > 0 for name in names for process in self.processes[name])


# the last commit before the steady-state skip and the scandir walks (the previous algorithm)
BASELINE_COMMIT = "e94c885"


def previous_collection(tmp):
    """The collection as of BASELINE_COMMIT (the previous algorithm) under ``tmp``: its PYTHONPATH, or None without git."""
    root = os.path.join(tmp, "previous")
    target = os.path.join(root, "ansible_collections", "katalyst", "colocation")
    os.makedirs(target)
    try:
        archive = subprocess.run(["git", "-C", REPO, "archive", BASELINE_COMMIT, "plugins"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print("previous algorithm: not measured (%s)" % exc)
        return None
    return root


def measure(label, pythonpath, extra_config, node, reclaimed, args, tmp, kubeconfig):
    config = os.path.join(tmp, "agent-%s.yaml" % re.sub(r"\W", "-", label))
    write_agent_config(config, NODE, kubeconfig, node.domain, extra_config)
    log_path = config[:-len(".yaml")] + ".log"
    agent = subprocess.Popen([sys.executable, "-c", LAUNCHER, "--config", config], stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=pythonpath))
    try:
        wait_for(lambda: re.search(r"on 127\.0\.0\.1:(\d+)", open(log_path).read()) or agent.poll() is not None, 120, "the agent to start")
        if agent.poll() is not None:
            raise RuntimeError("agent exited:\n%s" % open(log_path).read()[-2000:])
        wait_for(lambda: node.ordered(reclaimed), 120, "the node to be ordered")
        time.sleep(args.settle)     # the startup passes are over: from here on nothing changes
        before, total_before = threads_cpu(agent.pid)
        started = time.monotonic()
        time.sleep(args.window)
        after, total_after = threads_cpu(agent.pid)
        elapsed = time.monotonic() - started
        loops = {name: 100 * (after[name] - before.get(name, 0.0)) / elapsed for name in after}
        total = 100 * (total_after - total_before) / elapsed
        pod_latencies, pid_latencies = [], []
        for index in range(args.samples):
            name = "sample-%d" % index
            status = node.add_pod(name, "reclaimed_cores", args.containers)
            time.sleep(0.05)
            start = time.monotonic()
            node.run_pod(name, status)
            wait_for(lambda n=name: node.ordered([n]), 30, "pod %s to be ordered" % name)
            pod_latencies.append(time.monotonic() - start)
        for index in range(args.samples):
            cgroup = node.cgroups[reclaimed[index % len(reclaimed)]][0]
            start = time.monotonic()
            process = node.start(cgroup)
            wait_for(lambda p=process: (adj(p.pid) or 0) > 0, 30, "a new process in %s to be ordered" % cgroup)
            pid_latencies.append(time.monotonic() - start)
            process.kill()
            process.wait()
        for index in range(args.samples):
            node.remove_pod("sample-%d" % index)
        return {"loops": loops, "total": total, "pod": pod_latencies, "pid": pid_latencies}
    finally:
        agent.terminate()
        agent.wait(15)


def report(label, result):
    print("== %s" % label)
    for name, percent in sorted(result["loops"].items(), key=lambda item: -item[1]):
        print("   %-16s %6.2f %% of a core" % (name, percent))
    print("   %-16s %6.2f %% of a core (whole process)" % ("TOTAL", result["total"]))
    for what, key in (("new pod Running -> ordered", "pod"), ("new process in a container -> ordered", "pid")):
        values = result[key]
        print("   %s: p50 %.3f s  p95 %.3f s  max %.3f s  (%d samples)" % (
            what, statistics.median(values), percentile(values, 0.95), max(values), len(values)))


def main():
    parser = options(20.0, "seconds of nothing changing over which CPU is measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the node is ordered before the window")
    parser.add_argument("--samples", type=int, default=10, help="new pods (and new processes) timed per agent")
    args = parser.parse_args()
    started = start_node("agent_idle", "idle-bench", NODE)
    if started is None:
        return 0
    tmp, server, kubeconfig, core, domain = started
    node = Node(core, domain)
    try:
        specs = [("web", "shared_cores")] + [("batch-%03d" % index, "reclaimed_cores") for index in range(args.pods - 1)]
        for name, qos_level in specs:
            node.run_pod(name, node.add_pod(name, qos_level, args.containers))
        reclaimed = [name for name, _qos in specs[1:]]
        print("node: %d pods, %d containers (one process each); window %.0f s, %d samples per reaction" % (
            len(specs), len(specs) * args.containers, args.window, args.samples), flush=True)
        variants = []
        previous = previous_collection(tmp)
        if previous is not None:
            variants.append(("previous (%s): full pass every second" % BASELINE_COMMIT, previous, ""))
        here = os.path.join(REPO, ".build", "collections")
        variants += [("this tree, skip off (oom_priority_full_pass_seconds 0)", here, ', "oom_priority_full_pass_seconds": 0'),
                     ("this tree: unchanged passes skipped", here, "")]
        results = []
        for label, pythonpath, extra in variants:
            results.append((label, measure(label, pythonpath, extra, node, reclaimed, args, tmp, kubeconfig)))
            report(*results[-1])
            sys.stdout.flush()
        baseline_label, baseline = results[0]
        label, current = results[-1]
        print("== ratio: %s / %s" % (label, baseline_label))
        print("   total CPU %.2f %% vs %.2f %% of a core: %.1fx less" % (current["total"], baseline["total"],
                                                                         baseline["total"] / max(current["total"], 1e-9)))
        oom = [result["loops"].get("oom_priority", 0.0) for _label, result in (results[0], results[-1])]
        print("   oom_priority loop %.2f %% vs %.2f %%: %.1fx less" % (oom[1], oom[0], oom[0] / max(oom[1], 1e-9)))
        print("   p95 new pod -> ordered %.3f s vs %.3f s; p95 new process -> ordered %.3f s vs %.3f s" % (
            percentile(current["pod"], 0.95), percentile(baseline["pod"], 0.95), percentile(current["pid"], 0.95),
            percentile(baseline["pid"], 0.95)))
    finally:
        for name in list(node.processes):
            for process in node.processes[name]:
                process.kill()
                process.wait()
        domain.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
