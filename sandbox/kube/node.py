"""A real kubelet node on this host, joined to a control plane of sandbox.kube.cluster.

    python -m sandbox.kube.node up     --cluster-state DIR [--name kube-node-0]
    python -m sandbox.kube.node status --cluster-state DIR
    python -m sandbox.kube.node down   --cluster-state DIR

Debian's containerd and runc run the pods (cgroupfs driver, overlayfs snapshots); the pinned release's kubelet
drives them through CRI. Images are built here (sandbox.kube.images) and imported: nothing is pulled. Pods get
their network from the CNI `bridge` + `host-local` plugins (Debian's containernetworking-plugins) on a bridge of
our own, so pod IPs are real and the host reaches them.

Everything lives under DIR/node/ (containerd root and state, network namespaces, CNI configuration and IPAM, logs,
pids) but the unix sockets and the kubelet's root dir, under /run/katalyst-node/<hash of DIR>/ (a socket's path is
limited to 107 bytes), and what the kernel keeps elsewhere; `down` removes all of it again: the kubelet's cgroup
tree (--cgroup-root /katalyst-node in every v1 hierarchy), the bridge, and the sysctls the kubelet sets at start
(vm.overcommit_memory, kernel.panic, ...: their values from before the first `up` are put back).
"""

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import yaml

from sandbox.kube import cluster, images

CGROUP_ROOT = "/katalyst-node"
# The unix sockets (containerd's, and the kubelet's below its root dir) live under a short path of their own, whatever
# the length of the state dir's: a socket's path may not exceed 107 bytes. One dir per state dir, removed by `down`.
RUN_BASE = "/run/katalyst-node"
BRIDGE = "katalyst-cni0"
POD_CIDR = "10.244.0.0/24"
# The node's address: the bridge's own (the CNI bridge plugin's gateway). The kubelet refuses a loopback node IP,
# and this one is on a link of ours, so nothing listens on the host's real addresses.
NODE_IP = "10.244.0.1"
# What the kubelet's container manager writes at start (pkg/kubelet/cm: setupKernelTunables) unless
# protectKernelDefaults is set; `down` restores the values recorded before the first `up`.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
CAP_SYS_RESOURCE = 24


def has_capability(bit):
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def host_problems():
    """Why a kubelet node cannot run here (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    for binary in ("containerd", "containerd-shim-runc-v2", "runc", "ctr"):
        if not any(os.access(os.path.join(d, binary), os.X_OK) for d in os.environ.get("PATH", "/usr/bin").split(os.pathsep) + ["/usr/bin"]):
            problems.append("%s is not installed (Debian: containerd, runc; .ci/apt-packages.txt)" % binary)
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.access(os.path.join("/usr/lib/cni", plugin), os.X_OK):
            problems.append("CNI plugin %s is missing (Debian: containernetworking-plugins)" % plugin)
    if not os.path.isdir("/sys/fs/cgroup/memory") and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        problems.append("no cgroup memory controller")
    return problems


def listening(path):
    """Whether a process accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def cgroup_dirs(root=CGROUP_ROOT):
    """Every hierarchy's directory for `root` (v1: one per mounted controller; v2: one)."""
    base = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(base, "cgroup.controllers")):
        return [base + root]
    return [os.path.join(base, entry) + root for entry in sorted(os.listdir(base))
            if os.path.isdir(os.path.join(base, entry)) and not os.path.islink(os.path.join(base, entry)) and entry != "unified"]


class Node:  # pylint: disable=too-many-instance-attributes
    """One kubelet + containerd under CLUSTER_STATE/node."""

    def __init__(self, cluster_state, name="kube-node-0", bin_dir=None, progress=None):
        self.cluster = cluster.Cluster(cluster_state, bin_dir, progress=progress)
        self.progress = self.cluster.progress
        self.name = name
        self.state = os.path.join(self.cluster.state, "node")
        self.kubelet_bin = os.path.join(self.cluster.bin_dir, "kubelet")
        self.run_dir = os.path.join(RUN_BASE, hashlib.sha256(self.state.encode()).hexdigest()[:12])
        self.socket = os.path.join(self.run_dir, "containerd.sock")
        self.kubeconfig = os.path.join(self.state, "kubelet.kubeconfig")

    # --- paths and files ------------------------------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.state, *parts)

    def containerd_config(self):
        """containerd 1.6's config (version 2): everything under our state dir, our pause image, our CNI config."""
        restrict_oom = not has_capability(CAP_SYS_RESOURCE)
        return "\n".join([
            "version = 2",
            'root = "%s"' % self.path("containerd", "root"),
            'state = "%s"' % self.path("containerd", "state"),
            "[grpc]",
            '  address = "%s"' % self.socket,
            "[plugins]",
            '  [plugins."io.containerd.internal.v1.opt"]',
            '    path = "%s"' % self.path("containerd", "opt"),
            '  [plugins."io.containerd.grpc.v1.cri"]',
            '    sandbox_image = "%s"' % images.PAUSE_IMAGE,
            # the netns bind mounts under our state dir rather than /var/run/netns, so `down` finds them all
            "    netns_mounts_under_state_dir = true",
            # Without CAP_SYS_RESOURCE (some of these machines) a container may not get an oom_score_adj below
            # containerd's own: clamp instead of failing the container (the kubelet asks -997 for Guaranteed pods).
            "    restrict_oom_score_adj = %s" % str(restrict_oom).lower(),
            "    enable_selinux = false",
            '    stream_server_address = "127.0.0.1"',
            '    stream_server_port = "0"',
            '    [plugins."io.containerd.grpc.v1.cri".cni]',
            '      bin_dir = "/usr/lib/cni"',
            '      conf_dir = "%s"' % self.path("cni", "net.d"),
            '    [plugins."io.containerd.grpc.v1.cri".containerd]',
            '      snapshotter = "overlayfs"',
            '      default_runtime_name = "runc"',
            '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
            '        runtime_type = "io.containerd.runc.v2"',
            '        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
            "          SystemdCgroup = false",
            # runc's state under ours too (default: /run/containerd/runc)
            '          Root = "%s"' % self.path("containerd", "runc"),
            "",
        ])

    def cni_config(self):
        return json.dumps({
            "cniVersion": "0.4.0", "name": "katalyst-node",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": self.path("cni", "ipam"),
                          "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"},
            ]}, indent=1) + "\n"

    def kubelet_config(self):
        pki, ports = self.cluster.pki, self.ports()
        return yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": ports["kubelet"], "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports["kubelet_healthz"], "readOnlyPort": 0,
            "tlsCertFile": os.path.join(self.state, "pki", "kubelet-serving.crt"),
            "tlsPrivateKeyFile": os.path.join(self.state, "pki", "kubelet-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": os.path.join(pki, "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": "unix://" + self.socket,
            "cgroupDriver": "cgroupfs", "cgroupRoot": CGROUP_ROOT, "cgroupsPerQOS": True,
            # the hosts are cgroup v1 (hybrid); the kubelet refuses v1 unless told otherwise since 1.35
            "failCgroupV1": False, "failSwapOn": False,
            "podCIDR": POD_CIDR, "clusterDomain": "cluster.local", "resolvConf": "/etc/resolv.conf",
            "registerNode": True, "rotateCertificates": False, "serverTLSBootstrap": False,
            "staticPodPath": "", "syncFrequency": "10s", "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "10s", "nodeStatusReportFrequency": "1m",
            # Never evict because the build machine's disk is fuller than a node's would be; eviction has its own tests.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "maxPods": 110, "serializeImagePulls": False, "shutdownGracePeriod": "0s",
            "logging": {"format": "text"},
        }, sort_keys=False)

    def argv(self):
        return [self.kubelet_bin, "--config=" + self.path("kubelet-config.yaml"), "--kubeconfig=" + self.kubeconfig,
                "--root-dir=" + os.path.join(self.run_dir, "kubelet"), "--hostname-override=" + self.name, "--node-ip=" + NODE_IP,
                "--cert-dir=" + self.path("pki"), "--v=2"]

    def control_plane_ports(self):
        """The control plane's ports (its ports.json, written by its `up`): the node's own are picked beside them."""
        with open(os.path.join(self.cluster.state, "ports.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def ports(self):
        path = self.path("ports.json")
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        taken = set((self.cluster.ports or self.control_plane_ports()).values())
        ports = {}
        for key in ("kubelet", "kubelet_healthz"):
            ports[key] = cluster.pick_port(taken | set(ports.values()))
        cluster.write_file(path, json.dumps(ports) + "\n")
        return ports

    def ensure_pki(self):
        pki = self.path("pki")
        if os.path.exists(os.path.join(pki, "complete")):
            return
        os.makedirs(pki, mode=0o700, exist_ok=True)
        crypto = cluster.crypto_modules()
        ca_pki = self.cluster.pki
        with open(os.path.join(ca_pki, "ca.key"), "rb") as handle:
            ca_key = crypto.serialization.load_pem_private_key(handle.read(), None)
        with open(os.path.join(ca_pki, "ca.crt"), "rb") as handle:
            ca_cert = crypto.x509.load_pem_x509_certificate(handle.read())
        # The Node authorizer and NodeRestriction know a kubelet by this name and group.
        cluster.issue_certificate(pki, "kubelet-client", "system:node:" + self.name, (ca_key, ca_cert), ["system:nodes"], client=True)
        cluster.issue_certificate(pki, "kubelet-serving", "system:node:" + self.name, (ca_key, ca_cert), server=True,
                                  dns=(self.name, "localhost"), ips=(NODE_IP, "127.0.0.1"))
        with open(os.path.join(ca_pki, "ca.crt"), "rb") as handle:  # the kubeconfig names the CA from the same dir
            cluster.write_file(os.path.join(pki, "ca.crt"), handle.read(), 0o644)
        cluster.write_file(os.path.join(pki, "complete"), "")

    # --- host state the kubelet changes -------------------------------------------------------------------------
    def record_sysctls(self):
        path = self.path("host-sysctls.json")
        if os.path.exists(path):
            return
        values = {}
        for key in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                with open("/proc/sys/" + key, encoding="utf-8") as handle:
                    values[key] = handle.read().strip()
        cluster.write_file(path, json.dumps(values, indent=1) + "\n")

    def restore_sysctls(self):
        path = self.path("host-sysctls.json")
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
            for key, value in values.items():
                with contextlib.suppress(OSError):
                    with open("/proc/sys/" + key, "w", encoding="utf-8") as handle:
                        handle.write(value)
            os.unlink(path)

    # --- processes ----------------------------------------------------------------------------------------------
    def start_containerd(self, timeout):
        record = cluster.recorded(self.state, "containerd")
        if cluster.alive(record) and self.containerd_answers():
            self.progress("containerd already runs (pid %d)" % record["pid"])
            return 0
        for sub in (("containerd", "root"), ("containerd", "state"), ("cni", "net.d"), ("cni", "ipam")):
            os.makedirs(self.path(*sub), mode=0o700, exist_ok=True)
        cluster.write_file(self.path("containerd", "config.toml"), self.containerd_config(), 0o644)
        cluster.write_file(self.path("cni", "net.d", "10-katalyst.conflist"), self.cni_config(), 0o644)
        record, process = cluster.start(self.state, "containerd", ["containerd", "--config", self.path("containerd", "config.toml")])
        self.progress("containerd started (pid %d, log %s): waiting for its socket" % (record["pid"], record["log"]))
        self.wait(lambda: process.poll() is None and self.containerd_answers(), timeout, "containerd to answer on " + self.socket,
                  record, process)
        return 1

    def containerd_answers(self):
        return subprocess.run(["ctr", "--address", self.socket, "version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30, check=False).returncode == 0

    def wait(self, predicate, timeout, what, record=None, process=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError("%s exited (code %s) while waiting for %s; its log %s ends:\n%s"
                                   % (os.path.basename(record["argv"][0]), process.poll(), what, record["log"], cluster.log_tail(record["log"])))
            if predicate():
                return
            time.sleep(0.5)
        tail = "; its log %s ends:\n%s" % (record["log"], cluster.log_tail(record["log"])) if record else ""
        raise RuntimeError("timed out after %.0fs waiting for %s%s" % (timeout, what, tail))

    def node_ready(self, client):
        try:
            node = client.read_node(self.name)
        except Exception:  # pylint: disable=broad-except
            return False
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    def api(self):
        from kubernetes import client, config  # pylint: disable=import-outside-toplevel
        return client.CoreV1Api(config.new_client_from_config(self.cluster.kubeconfig))

    def up(self, timeout=240.0):
        problems = host_problems()
        if problems:
            raise RuntimeError("a kubelet node cannot run here: " + "; ".join(problems))
        if not os.access(self.kubelet_bin, os.X_OK):
            raise RuntimeError("%s is missing: build the pinned release first (`make kube-build`)" % self.kubelet_bin)
        os.makedirs(self.path("logs"), mode=0o700, exist_ok=True)
        os.makedirs(self.path("run"), mode=0o700, exist_ok=True)
        others = [os.path.join(RUN_BASE, entry) for entry in os.listdir(RUN_BASE)] if os.path.isdir(RUN_BASE) else []
        running = [other for other in others if other != self.run_dir and listening(os.path.join(other, "containerd.sock"))]
        if running:     # its bridge, cgroup root and sysctls are this host's too
            raise RuntimeError("another real node runs on this host (%s): stop it first (`python -m sandbox.kube.node down` "
                               "with its --cluster-state)" % running[0])
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        with self.cluster.locked():
            self.cluster.ports = self.control_plane_ports()
            self.record_sysctls()
            self.create_cgroups()
            self.ensure_bridge()
            self.ensure_pki()
            server = "https://127.0.0.1:%d" % self.cluster.ports["apiserver"]
            cluster.write_kubeconfig(self.kubeconfig, server, self.path("pki"), "kubelet-client", "system:node:" + self.name)
            started = self.start_containerd(timeout)
            images.import_into(self.socket, progress=self.progress)
            changed_config = cluster.write_if_changed(self.path("kubelet-config.yaml"), self.kubelet_config())
            record = cluster.recorded(self.state, "kubelet")
            if cluster.alive(record) and (changed_config or record["argv"] != self.argv()):
                self.progress("kubelet runs with another configuration: restarting it")
                self.stop_process("kubelet", 30.0)
                record = None
            if not cluster.alive(record):
                record, process = cluster.start(self.state, "kubelet", self.argv())
                started += 1
                self.progress("kubelet started (pid %d, log %s): waiting until node %s is Ready" % (record["pid"], record["log"], self.name))
            else:
                process = cluster.Adopted(record)
            api = self.api()    # one client for the whole wait, not one per poll
            self.wait(lambda: self.node_ready(api), timeout, "node %s to be Ready" % self.name, record, process)
            self.progress("node %s Ready (%s)" % (self.name, "up in %.1fs" % self.progress.elapsed() if started else "already ran"))
            return started

    def stop_process(self, name, timeout):
        record = cluster.recorded(self.state, name)
        if not cluster.alive(record):
            return False
        self.progress("stopping %s (pid %d)" % (name, record["pid"]))
        with contextlib.suppress(ProcessLookupError):
            os.kill(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while cluster.alive(record) and time.monotonic() < deadline:
            time.sleep(0.2)
        if cluster.alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGKILL)
            while cluster.alive(record):
                time.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state, "run", name + ".json"))
        return True

    # --- down ---------------------------------------------------------------------------------------------------
    def shim_pids(self):
        """The containerd-shim-runc-v2 processes of our containerd (they outlive it)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    argv = handle.read().split(b"\0")
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and self.socket.encode() in argv:
                    pids.append(int(entry))
        return pids

    def kill_pod_processes(self):
        """SIGKILL every process in the kubelet's cgroup tree, until none is left."""
        deadline = time.monotonic() + 60
        while True:
            pids = set()
            for top in cgroup_dirs():
                for dirpath, _dirs, files in os.walk(top):
                    if "cgroup.procs" in files:
                        with contextlib.suppress(OSError):
                            with open(os.path.join(dirpath, "cgroup.procs"), encoding="utf-8") as handle:
                                pids.update(int(p) for p in handle.read().split())
            if not pids:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("processes left in %s: %s" % (CGROUP_ROOT, sorted(pids)))
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def unmount_all(self):
        """Unmount everything below the node's state and run dirs (overlay rootfs, shm, netns, kubelet volumes), deepest first."""
        prefixes = (self.state + "/", self.run_dir + "/")
        for _attempt in range(5):
            with open("/proc/self/mountinfo", encoding="utf-8") as handle:
                points = [line.split()[4].replace("\\040", " ") for line in handle]
            ours = sorted({p for p in points if p.startswith(prefixes)}, key=len, reverse=True)
            if not ours:
                return
            for point in ours:
                subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        raise RuntimeError("could not unmount everything under %s and %s" % (self.state, self.run_dir))

    @staticmethod
    def ensure_bridge():
        """The pod bridge with the node's address, before the kubelet starts (the CNI plugin adopts it)."""
        def ip(*args):
            return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if ip("link", "show", BRIDGE).returncode != 0:
            ip("link", "add", BRIDGE, "type", "bridge")
        if NODE_IP + "/" not in ip("-4", "addr", "show", "dev", BRIDGE).stdout:
            result = ip("addr", "add", NODE_IP + "/" + POD_CIDR.split("/")[1], "dev", BRIDGE)
            if result.returncode != 0:
                raise RuntimeError("cannot give %s the address %s: %s" % (BRIDGE, NODE_IP, result.stderr.strip()))
        ip("link", "set", BRIDGE, "up")

    def create_cgroups(self):
        """The kubelet wants its --cgroup-root to exist in every hierarchy; a v1 cpuset child starts with no CPUs and
        no memory nodes, so it gets its parent's."""
        for path in cgroup_dirs():
            os.makedirs(path, exist_ok=True)
            if "/cpuset/" in path:
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    with open(os.path.join(os.path.dirname(path), knob), encoding="utf-8") as handle:
                        value = handle.read().strip()
                    with open(os.path.join(path, knob), "r+", encoding="utf-8") as handle:
                        if not handle.read().strip():
                            handle.write(value)

    @staticmethod
    def remove_shim_sockets():
        """containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir; a killed shim leaves its own.
        Remove the ones nobody listens on, then the directories if that left them empty (they may be another
        containerd's)."""
        base = "/run/containerd/s"
        for entry in os.listdir(base) if os.path.isdir(base) else []:
            path = os.path.join(base, entry)
            if not listening(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for path in (base, "/run/containerd/runc/k8s.io", "/run/containerd/runc", "/run/containerd"):
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def remove_cgroups(self):
        for top in cgroup_dirs():
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    def down(self, timeout=30.0):
        if not os.path.isdir(self.state):
            self.progress("no node state under %s: nothing runs" % self.cluster.state)
            return False
        with self.cluster.locked():
            ran = self.stop_process("kubelet", timeout)
            self.kill_pod_processes()
            for pid in self.shim_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            ran = self.stop_process("containerd", timeout) or ran
            self.unmount_all()
            self.remove_cgroups()
            self.remove_shim_sockets()
            subprocess.run(["ip", "link", "delete", BRIDGE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            self.restore_sysctls()
            # containerd's snapshots and the kubelet's pod dirs are unmounted now: the next `up` starts clean
            for sub in ("containerd", "kubelet", "cni"):
                subprocess.run(["rm", "-rf", "--one-file-system", self.path(sub)], check=False)
            subprocess.run(["rm", "-rf", "--one-file-system", self.run_dir], check=False)
            with contextlib.suppress(OSError):
                os.rmdir(RUN_BASE)      # another state dir's node may still use it
        self.progress("node %s down" % self.name if ran else "node %s: nothing ran" % self.name)
        return ran

    def status(self):
        return {name: cluster.recorded(self.state, name) if cluster.alive(cluster.recorded(self.state, name)) else None
                for name in ("containerd", "kubelet")}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sandbox.kube.node", description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--cluster-state", required=True, help="the state dir of sandbox.kube.cluster (its control plane must run for `up`)")
    parser.add_argument("--name", default="kube-node-0")
    parser.add_argument("--bin-dir")
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)
    node = Node(args.cluster_state, args.name, args.bin_dir)

    def status():
        states = node.status()
        return ["%-12s %s" % (name, "pid %d" % record["pid"] if record else "not running") for name, record in states.items()], all(states.values())
    return cluster.run_command("node", args.command, lambda: node.up(timeout=args.timeout or 240.0),
                               lambda: node.down(timeout=args.timeout or 30.0), status)


if __name__ == "__main__":
    sys.exit(main())
