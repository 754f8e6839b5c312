"""A sandbox kubelet: registers one Node from its sysroot, heartbeats nodes/status, runs bound pods.

Like kwok, it plays the part of a kubelet that cannot run here. The Node's capacity comes from the
node's sysroot (its /sys and /proc directories), and heartbeats go through `nodes/status` PATCHes, so
admission webhooks see them exactly as they would see a real kubelet's.
"""

import datetime
import hashlib
import logging
import threading

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.informer import Informer
from ansible_collections.katalyst.colocation.plugins.module_utils.podcgroups import qos_class
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS

LOG = logging.getLogger("sandbox.kubelet")
RESERVED_MILLICPU = 500
RESERVED_MEMORY_BYTES = 1 << 30
MAX_PODS = 110


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def count_cpus(cpu_list):
    """Number of CPUs in a kernel cpu list such as ``0-7,16-23``."""
    total = 0
    for part in cpu_list.split(","):
        part = part.strip()
        if not part:
            continue
        low, _sep, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


def read_capacity(sysroot):
    """Node capacity (cpu cores, memory bytes) read from a sysroot."""
    fs = SysFS(sysroot)
    cpus = count_cpus(fs.read_text("/sys/devices/system/cpu/online"))
    memory_bytes = 0
    for line in fs.read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            memory_bytes = int(line.split()[1]) * 1024
    return cpus, memory_bytes


def node_status(cpus, memory_bytes):
    capacity = {"cpu": str(cpus), "memory": "%dKi" % (memory_bytes // 1024), "pods": str(MAX_PODS)}
    allocatable = {"cpu": "%dm" % (cpus * 1000 - RESERVED_MILLICPU),
                   "memory": "%dKi" % ((memory_bytes - RESERVED_MEMORY_BYTES) // 1024), "pods": str(MAX_PODS)}
    stamp = now_rfc3339()
    conditions = [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "sandbox kubelet is posting ready status",
                   "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]
    for cond_type, reason in (("MemoryPressure", "KubeletHasSufficientMemory"), ("DiskPressure", "KubeletHasNoDiskPressure"),
                              ("PIDPressure", "KubeletHasSufficientPID")):
        conditions.append({"type": cond_type, "status": "False", "reason": reason, "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
    return {"capacity": capacity, "allocatable": allocatable, "conditions": conditions,
            "nodeInfo": {"kubeletVersion": "v1.30.0-sandbox", "containerRuntimeVersion": "sandbox://1.0",
                         "operatingSystem": "linux", "architecture": "amd64", "kernelVersion": "sandbox",
                         "osImage": "katalyst.colocation sandbox", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": ""}}


class SandboxKubelet:
    def __init__(self, core_api, node_name, sysroot, heartbeat_seconds=5.0):
        self.core = core_api
        self.node_name = node_name
        self.sysroot = sysroot
        self.heartbeat_seconds = heartbeat_seconds
        self.pods = Informer(core_api.list_pod_for_all_namespaces, handler=self.on_pod,
                             list_kwargs={"field_selector": "spec.nodeName=%s" % node_name},
                             resync_seconds=30, name="kubelet-pods-%s" % node_name)

    # -- node --------------------------------------------------------------------------------
    def register(self):
        from kubernetes.client.rest import ApiException  # pylint: disable=import-outside-toplevel
        cpus, memory_bytes = read_capacity(self.sysroot)
        labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "node.kubernetes.io/instance-type": "sandbox"}
        try:
            self.core.read_node(self.node_name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": labels},
                                   "spec": {}})
            LOG.info("registered node %s (%d CPUs, %d bytes)", self.node_name, cpus, memory_bytes)
        self.heartbeat()

    def heartbeat(self):
        cpus, memory_bytes = read_capacity(self.sysroot)
        self.core.patch_node_status(self.node_name, {"status": node_status(cpus, memory_bytes)})

    # -- pods --------------------------------------------------------------------------------
    def on_pod(self, event_type, pod):
        if event_type == "DELETED":
            return
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            # No containers to stop: the pod is gone as soon as it is asked to go.
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0)
            return
        status = pod.get("status") or {}
        if status.get("phase") in ("Running", "Succeeded", "Failed"):
            return
        self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": self.running_status(pod)})

    def running_status(self, pod):
        stamp = now_rfc3339()
        statuses = []
        for container in pod["spec"].get("containers", []):
            digest = hashlib.sha256((pod["metadata"].get("uid", "") + container["name"]).encode()).hexdigest()
            statuses.append({"name": container["name"], "ready": True, "restartCount": 0, "image": container.get("image", ""),
                             "imageID": "", "containerID": "containerd://" + digest, "started": True,
                             "state": {"running": {"startedAt": stamp}}})
        conditions = [{"type": cond, "status": "True", "lastTransitionTime": stamp}
                      for cond in ("Initialized", "Ready", "ContainersReady", "PodScheduled")]
        return {"phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": stamp,
                "conditions": conditions, "containerStatuses": statuses, "qosClass": qos_class(pod)}

    def run(self, stop):
        self.register()
        self.pods.start(stop)
        while not stop.wait(self.heartbeat_seconds):
            try:
                self.heartbeat()
            except Exception as exc:  # pylint: disable=broad-except
                LOG.warning("node %s: heartbeat failed: %s", self.node_name, exc)

    def start(self, stop):
        thread = threading.Thread(target=self.run, args=(stop,), name="kubelet-%s" % self.node_name, daemon=True)
        thread.start()
        return thread
