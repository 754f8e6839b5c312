"""A katalyst-agent process against the API emulator and a sandbox sysroot (cgroup v1), with pods of mixed QoS whose
cgroups, processes (fake /proc/<pid> entries) and containers exist in the sysroot, and a sampler that reads what the
agent writes (oom_score_adj, TCP limits, QoS and NUMA-binding cpusets, the CNR, numa_bind_result) every 50 ms.

Used by test_agent_chaos.py: restarts (SIGKILL / SIGTERM) and filesystem faults.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from kubernetes import client

from sandbox.sysroot import build_sysroot, populate_cgroup_dir
from tests.integration.ansible_runner import REPO
from tests.integration.waiting import wait_until

QOS = "katalyst.kubewharf.io/qos_level"
MEM = "katalyst.kubewharf.io/memory_enhancement"
BIND_RESULT = "katalyst.kubewharf.io/numa_bind_result"
CNR_ARGS = ("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources")
TCP_DEFAULT = "9223372036854771712"
CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset")
LOOPS = ("qos_cgroups", "oom_priority", "tcp_memory", "reclaimed_resources", "numa_binding", "realtime_overcommit")
AGENT_MODULE = "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent"


def pod_specs(count, binding):
    """``[(name, annotations, resources, qos class, kubelet oom_score_adj)]``: ``count`` pods of mixed QoS, then ``binding``
    dedicated_cores + numa_binding pods (Guaranteed, 2 CPUs)."""
    specs = []
    for index in range(count):
        kind = index % 10
        name = "p%03d" % index
        if kind <= 3:        # shared_cores with a user OOM priority (pairs share one)
            specs.append((name, {MEM: json.dumps({"oom_priority": str(10 * ((index // 2) % 10))})},
                          {"limits": {"memory": "%dMi" % (512 + 64 * kind)}, "requests": {"memory": "256Mi", "cpu": "100m"}}, "Burstable", 700))
        elif kind <= 5:
            specs.append((name, {QOS: "reclaimed_cores"}, {}, "BestEffort", 1000))
        elif kind <= 7:
            specs.append((name, {}, {"limits": {"memory": "1Gi", "cpu": "1"}, "requests": {"memory": "1Gi", "cpu": "1"}}, "Guaranteed", -997))
        elif kind == 8:
            specs.append((name, {QOS: "system_cores", MEM: json.dumps({"oom_priority": "150"})},
                          {"limits": {"memory": "2Gi"}, "requests": {"memory": "128Mi"}}, "Burstable", 900))
        else:
            specs.append((name, {}, {"limits": {"memory": "768Mi"}, "requests": {"memory": "64Mi"}}, "Burstable", 990))
    for index in range(binding):
        specs.append(("bind%d" % index, {QOS: "dedicated_cores", MEM: json.dumps({"numa_binding": "true"})},
                      {"limits": {"memory": "2Gi", "cpu": "2"}, "requests": {"memory": "2Gi", "cpu": "2"}}, "Guaranteed", -997))
    return specs


class AgentRig:
    """One node: its pods in the emulator, its sysroot, the agent process (``start``/``stop``), a sampler."""

    def __init__(self, emulator, tmp_path, node, count, binding, **config):
        self.emulator, self.node, self.tmp_path = emulator, node, tmp_path
        self.core = client.CoreV1Api(emulator.client)
        self.custom = client.CustomObjectsApi(emulator.client)
        self.sysroot = build_sysroot(str(tmp_path / "sysroot"), cgroup="v1")
        self.config = {"node_name": node, "kubeconfig": emulator.kubeconfig, "sysroot": self.sysroot, "port": 0, "resync_seconds": 5,
                       "state_dir": str(tmp_path / "state"), "oom_bpf_pin_dir": str(tmp_path / "no-bpf"),
                       "qos_cgroups_period_seconds": 0.5, "oom_priority_period_seconds": 0.5, "tcp_memory_enabled": True,
                       "tcp_memory_period_seconds": 0.5, "reclaimed_resources_period_seconds": 0.3, "reclaimed_window_seconds": 0.9,
                       "cnr_topology_policy": "SingleNUMANodeContainerLevel", "numa_binding_period_seconds": 0.5,
                       "realtime_overcommit_enabled": True, "realtime_overcommit_period_seconds": 0.5}
        self.config.update(config)
        self.process, self.log, self.port, self.starts = None, None, None, 0
        self.pods = {}          # name -> {uid, pid, qos, adj, dirs: {controller: (pod dir, container dir)}, limits}
        self.namespace = node
        self.core.create_node({"metadata": {"name": node}})
        self.core.create_namespace({"metadata": {"name": node}})
        for name, annotations, resources, klass, adj in pod_specs(count, binding):
            self.add_pod(name, annotations, resources, klass, adj, 30000 + len(self.pods))

    # -- the node -------------------------------------------------------------------------------
    def path(self, kernel_path):
        return self.sysroot + kernel_path

    def write(self, kernel_path, content):
        with open(self.path(kernel_path), "w") as handle:
            handle.write(content)

    def read(self, kernel_path):
        try:
            with open(self.path(kernel_path)) as handle:
                return handle.read().strip()
        except OSError as exc:
            return "<%s>" % type(exc).__name__

    def add_pod(self, name, annotations, resources, klass, adj, pid):
        body = {"metadata": {"name": name, "namespace": self.namespace, "annotations": annotations},
                "spec": {"nodeName": self.node, "containers": [{"name": "main", "image": "x", "resources": resources}]}}
        uid = self.core.create_namespaced_pod(self.namespace, body).metadata.uid
        cid = "c%s" % uid.replace("-", "")[:12]
        tier = "" if klass == "Guaranteed" else "/" + klass.lower()
        pod = {"uid": uid, "pid": pid, "qos": klass, "adj": str(adj), "limits": bool(resources.get("limits", {}).get("memory")),
               "dirs": {}, "annotations": annotations}
        for controller in CONTROLLERS:
            pod_dir = "/sys/fs/cgroup/%s/kubepods%s/pod%s" % (controller, tier, uid)
            pod["dirs"][controller] = (pod_dir, pod_dir + "/" + cid)
        self.pods[name] = pod
        self.make_cgroups(name)
        self.make_process(name)
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {"phase": "Running", "qosClass": klass, "containerStatuses": [
            {"name": "main", "containerID": "containerd://" + cid, "ready": True, "restartCount": 0, "image": "x", "imageID": ""}]}})

    def make_cgroups(self, name):
        pod = self.pods[name]
        for controller, dirs in pod["dirs"].items():
            for directory in dirs:
                os.makedirs(self.path(directory), exist_ok=True)
                populate_cgroup_dir(self.sysroot, directory, "v1", cpus="0-31", mems="0-3")
        self.write(pod["dirs"]["memory"][1] + "/cgroup.procs", "%d\n" % pod["pid"])

    def make_process(self, name):
        pod = self.pods[name]
        base = "/proc/%d" % pod["pid"]
        os.makedirs(self.path(base), exist_ok=True)
        self.write(base + "/statm", "%d %d 0 0 0 0 0\n" % (50000, 2000 + 37 * (pod["pid"] % 100)))
        self.write(base + "/status", "Name:\tmain\nVmSwap:\t0 kB\n")
        self.write(base + "/oom_score_adj", pod["adj"] + "\n")

    # -- what the agent writes -------------------------------------------------------------------
    def watched_files(self):
        files = ["/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares"]
        files += ["/sys/fs/cgroup/cpuset/kubepods/besteffort-%d/%s" % (numa, name) for numa in range(4) for name in ("cpuset.cpus", "cpuset.mems")]
        for name, pod in sorted(self.pods.items()):
            files.append("/proc/%d/oom_score_adj" % pod["pid"])
            if pod["limits"]:
                files.append(pod["dirs"]["memory"][1] + "/memory.kmem.tcp.limit_in_bytes")
            if name.startswith("bind"):
                files += [directory + "/" + file for directory in pod["dirs"]["cpuset"] for file in ("cpuset.cpus", "cpuset.mems")]
        return files

    def api_values(self, with_pods=True):
        values = {}
        try:
            cnr = self.custom.get_cluster_custom_object(*CNR_ARGS, self.node)
        except client.ApiException as exc:
            cnr = {} if exc.status == 404 else None
        if cnr is None:
            return None          # the API did not answer: no reading (not a regression of the agent)
        status = cnr.get("status") or {}
        for field in ("resources", "topologyZone", "topologyPolicy"):
            if field in status:
                values["cnr.status." + field] = json.dumps(status[field], sort_keys=True)
        for key, value in ((cnr.get("metadata") or {}).get("annotations") or {}).items():
            values["cnr.annotation." + key] = value
        if with_pods:
            for pod in self.core.list_namespaced_pod(self.namespace, field_selector="spec.nodeName=%s" % self.node).items:
                if pod.metadata.name.startswith("bind"):
                    values["pod.%s.%s" % (pod.metadata.name, BIND_RESULT)] = (pod.metadata.annotations or {}).get(BIND_RESULT)
        return values

    def snapshot(self, with_pods=True):
        values = {path: self.read(path) for path in self.watched_files()}
        api = self.api_values(with_pods)
        if api is None:
            return None
        values.update(api)
        return values

    def complete(self, values):
        """Whether every value the agent is expected to set is set (the pods' oom_score_adj need not move)."""
        if values is None or values["/sys/fs/cgroup/cpu/kubepods/besteffort/cpu.shares"] != "2":
            return False
        for key in ("cnr.status.resources", "cnr.status.topologyZone", "cnr.status.topologyPolicy"):
            if key not in values:
                return False
        if not any(key.startswith("cnr.annotation.") for key in values):
            return False
        for name, pod in self.pods.items():
            if pod["limits"] and values[pod["dirs"]["memory"][1] + "/memory.kmem.tcp.limit_in_bytes"] == TCP_DEFAULT:
                return False
            if name.startswith("bind") and (not values.get("pod.%s.%s" % (name, BIND_RESULT))
                                            or values[pod["dirs"]["cpuset"][1] + "/cpuset.cpus"] == "0-31"):
                return False
        return True

    # -- the agent ------------------------------------------------------------------------------
    def start(self):
        path = self.tmp_path / "agent.yaml"
        path.write_text(json.dumps(self.config))
        self.starts += 1
        self.log = open(self.tmp_path / ("agent-%d.log" % self.starts), "w+")
        env = dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO)
        self.process = subprocess.Popen([sys.executable, "-m", AGENT_MODULE, "--config", str(path)], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env)
        found = {}

        def started():
            match = re.search(r"on 127\.0\.0\.1:(\d+)", self.log_text())
            if self.process.poll() is not None:
                raise AssertionError("the agent exited with %s: %s" % (self.process.returncode, self.log_text()[-3000:]))
            found["port"] = int(match.group(1)) if match else None
            return match
        wait_until(started, timeout=120, what="the agent to start")
        self.port = found["port"]
        return self.process

    def log_text(self):
        with open(self.log.name) as handle:
            return handle.read()

    def stop(self, how=signal.SIGTERM):
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(how)
        code = self.process.wait(60)
        self.log.close()
        self.process = None
        return code

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=10) as response:
            return response.read().decode()

    def loop_runs(self, outcome=None):
        """{loop: finished passes} of this agent process (``outcome``: only passes that ended so)."""
        runs = {}
        for loop, ended, count in re.findall(r'^katalyst_loop_runs_total\{[^}]*loop="(\w+)",outcome="(\w+)"\} (\S+)$', self.metrics(), re.M):
            if outcome is None or ended == outcome:
                runs[loop] = runs.get(loop, 0) + float(count)
        return runs

    def wait_passes(self, passes=2, loops=LOOPS, timeout=60, outcome="success"):
        """Wait until every loop in ``loops`` finished ``passes`` more passes (ending in ``outcome``) from now."""
        before = self.loop_runs(outcome)
        wait_until(lambda: all(self.loop_runs(outcome).get(loop, 0) >= before.get(loop, 0) + passes for loop in loops),
                   timeout=timeout, interval=0.1, what="%d more passes of %s (log %s)" % (passes, ", ".join(loops), self.log.name))

    def converged(self, timeout=90):
        """The values once complete and unchanged across two passes of every loop."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            wait_until(lambda: self.complete(self.snapshot()), timeout=max(deadline - time.time(), 1), interval=0.1,
                       what="the agent to set every value (log %s)" % self.log.name)
            first = self.snapshot()
            self.wait_passes(2)
            if first is not None and self.snapshot() == first:
                return first
        raise AssertionError("the agent's values did not settle within %ss" % timeout)


class Sampler(threading.Thread):
    """Reads the watched values every ``interval`` seconds; counts departures from ``reference`` (a key whose value leaves
    its converged value, counted once per departure), keyed by the phase set with ``phase``."""

    def __init__(self, rig, reference, interval=0.05, keys=None):
        super().__init__(daemon=True)
        self.rig, self.reference, self.interval = rig, reference, interval
        self.keys = set(reference) if keys is None else set(keys)
        self.lock = threading.Lock()     # held over each sample: keys changed under it apply from the next sample on
        self.stopped = threading.Event()
        self.away = set()
        self.departures = []      # (phase, key, value seen)
        self.samples = 0
        self.phase = "start"

    def run(self):
        tick = 0
        while not self.stopped.is_set():
            with self.lock:
                self.sample(tick)
            tick += 1
            self.stopped.wait(self.interval)

    def sample(self, tick):
        try:
            values = self.rig.snapshot(with_pods=tick % 5 == 0)
        except Exception:  # pylint: disable=broad-except
            values = None    # the API emulator busy: no reading this tick
        if values is not None:
            self.samples += 1
            for key in self.keys:
                if key.startswith("pod.") and tick % 5:
                    continue
                seen = values.get(key, "<absent>")
                if seen != self.reference[key] and key not in self.away:
                    self.away.add(key)
                    self.departures.append((self.phase, key, seen))
                elif seen == self.reference[key]:
                    self.away.discard(key)

    def ignore(self, keys):
        with self.lock:
            self.keys.difference_update(keys)

    def watch(self, keys):
        with self.lock:
            self.keys.update(keys)
            self.away.difference_update(keys)

    def stop(self):
        self.stopped.set()
        self.join(30)
