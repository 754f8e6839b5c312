"""Real OOM kills in a small cgroup v1 memory domain, for the OOM-priority tests."""

import errno
import os
import re
import subprocess
import sys

from tests.integration.hostcgroups import own_memory_cgroup, remove_cgroups

MEMORY_ROOT = "/sys/fs/cgroup/memory"
KILLED = re.compile(r"Killed process (\d+)")

HOLDER = r"""
import sys, time
size = int(sys.argv[1]) << 20
block = bytearray(size)
block[::4096] = b"x" * len(block[::4096])
print("ready", flush=True)
if sys.stdin.readline().strip() == "grow":
    chunks = []
    for _ in range(int(sys.argv[2])):
        chunk = bytearray(1 << 20)
        chunk[::4096] = b"y" * 256
        chunks.append(chunk)
        time.sleep(0.005)
time.sleep(60)
"""


def oom_score_adj(pid):
    """A process's oom_score_adj in one read() call (OSError when it is gone): a buffered read while the agent writes
    the value can join two of them ("0\n00", see sysfs._read_whole)."""
    fd = os.open("/proc/%d/oom_score_adj" % pid, os.O_RDONLY)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


def usable():
    """None when real OOM tests can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root"
    if own_memory_cgroup() is None or not os.access(MEMORY_ROOT, os.W_OK):
        return "needs a writable cgroup v1 memory hierarchy"
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        return "cannot read the kernel log (/dev/kmsg): %s" % exc
    return None


class KernelLog:
    """Kernel log records written after construction."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def read(self):
        lines = []
        while True:
            try:
                record = os.read(self.fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return lines
                if exc.errno == errno.EPIPE:   # overwritten records: keep reading
                    continue
                raise
            lines.append(record.decode(errors="replace").split(";", 1)[-1].strip())

    def killed_pids(self):
        return [int(m.group(1)) for line in self.read() for m in [KILLED.search(line)] if m]

    def close(self):
        os.close(self.fd)


class Domain:
    """A memory cgroup with a hard limit (the OOM domain) and one child cgroup per pod."""

    def __init__(self, name, limit_bytes):
        self.cgroup = "%s/%s" % (own_memory_cgroup().rstrip("/"), name)
        self.path = MEMORY_ROOT + self.cgroup
        os.mkdir(self.path)
        self._write("memory.limit_in_bytes", str(limit_bytes))
        self._write("memory.swappiness", "0")
        self.limit_bytes = limit_bytes
        self.processes = []

    def _write(self, name, value, path=None):
        with open(os.path.join(path or self.path, name), "w") as handle:
            handle.write(value)

    def start(self, pod, size_mib, grow_mib=0):
        """A process holding ``size_mib`` in the pod's cgroup; returns the Popen once it holds it."""
        cgroup = os.path.join(self.path, pod)
        os.makedirs(cgroup, exist_ok=True)
        procs = os.path.join(cgroup, "cgroup.procs")

        def enter():
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))

        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(size_mib), str(grow_mib)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, preexec_fn=enter)  # pylint: disable=subprocess-popen-preexec-fn
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("holder in %s did not start" % pod)
        process.pod = pod
        self.processes.append(process)
        return process

    @staticmethod
    def rss_pages(pid):
        with open("/proc/%d/statm" % pid) as handle:
            return int(handle.read().split()[1])

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        remove_cgroups(["memory"], self.cgroup, [self.path])


OBSERVER_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "roles", "oom_hook", "files", "oom_observer.bpf.c")


class Observer:
    """The real BPF OOM observer, built with clang and loaded into a private bpffs mounted under ``directory``."""

    def __init__(self, directory, build_dir):
        from ansible_collections.katalyst.colocation.plugins.module_utils import bpf  # pylint: disable=import-outside-toplevel
        self.bpf = bpf
        self.mount = os.path.join(directory, "bpffs")
        os.makedirs(self.mount, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpffs", self.mount], check=True)
        self.pins = os.path.join(self.mount, "katalyst")
        try:
            obj, _built = bpf.build_observer(OBSERVER_SOURCE, build_dir)
            self.programs = bpf.load_observer(obj, self.pins)
        except Exception:
            self.close()
            raise

    def priority_map(self):
        return self.bpf.PinnedMap(os.path.join(self.pins, self.bpf.PRIORITY_MAP))

    def drain(self):
        return self.bpf.drain_events(self.pins)

    def close(self):
        self.bpf.unload_observer(self.pins)
        subprocess.run(["umount", "-l", self.mount], check=False)


def emulator_with_node(tmp, node_name):
    """(server, kubeconfig path, CoreV1Api): the API emulator started, a kubeconfig for it under ``tmp`` and the node
    ``node_name`` created, for an agent driven against real cgroups (the OOM benchmarks)."""
    from kubernetes import client  # pylint: disable=import-outside-toplevel
    from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig  # pylint: disable=import-outside-toplevel
    server = KubeAPIServer().start()
    kubeconfig = os.path.join(tmp, "kubeconfig")
    write_kubeconfig(kubeconfig, server.url)
    configuration = client.Configuration()
    configuration.host = server.url
    core = client.CoreV1Api(client.ApiClient(configuration))
    core.create_node({"metadata": {"name": node_name}})
    return server, kubeconfig, core
