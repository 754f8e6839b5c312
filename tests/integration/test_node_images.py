"""The kubelet node's locally built images (sandbox/kube/images.py) in a real containerd 1.6 + runc.

The build is cached and reproducible; a PRIVATE containerd (its own root, state, socket and runc root in a temporary
directory, CRI plugin off) imports both images under their full names, unpacked, and runs them: the workload image's
shell and katalyst-workload (memory growth, a real OOM kill in the container's memory cgroup), the pause image
stopping on SIGTERM with exit 0, and the pause subcommand reaping orphans as PID 1 of a PID namespace.

The host is left as found: containers, shims and containerd are stopped, every mount under the temporary directory
is unmounted, the containers' cgroups are removed, and of /run/containerd (where containerd 1.6 puts shim sockets
whatever its state directory is) whatever was not there before.
"""

import ctypes
import errno
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from sandbox.kube import images
from tests.integration.waiting import wait_until

NAMESPACE = "k8s.io"  # the CRI plugin's namespace: where the node's kubelet will look for the images
TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2")
SHIM = "containerd-shim-runc-v2"
RUN_ROOT = "/run/containerd"  # containerd 1.6 puts shim sockets in RUN_ROOT/s whatever its state directory is
MNT_DETACH = 2


def build_unusable():
    """None when the images can be built here, else why not."""
    try:
        images.find_go()
    except RuntimeError as err:
        return str(err)
    if not os.access(images.BUSYBOX, os.X_OK):
        return "%s is missing (Debian's busybox-static)" % images.BUSYBOX
    return None


def containerd_unusable():
    """None when a private containerd can run containers here, else why not."""
    if os.geteuid() != 0:
        return "needs root (runs containerd and runc, mounts overlay snapshots)"
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        return "missing %s (Debian's containerd and runc, .ci/apt-packages.txt)" % ", ".join(missing)
    return build_unusable()


BUILD_REASON = build_unusable()
CONTAINERD_REASON = containerd_unusable()
needs_build = pytest.mark.skipif(BUILD_REASON is not None, reason=str(BUILD_REASON))
needs_containerd = pytest.mark.skipif(CONTAINERD_REASON is not None, reason=str(CONTAINERD_REASON))


def _cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as handle:
            return [arg.decode(errors="replace") for arg in handle.read().split(b"\0") if arg]
    except OSError:
        return []


def _alive(pid):
    """True while the process exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children():
    """{pid: [child pids]} of every process."""
    tree = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, encoding="utf-8") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


class PrivateContainerd:
    """A containerd of the test's own: everything in one short temporary directory (a unix socket path has at most
    107 bytes), the CRI plugin off. ``ctr()`` talks to it; ``run_options()`` keeps a container's FIFOs, runc state and
    cgroup off the host's defaults so that stop() can find and remove them."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kc-", dir="/tmp")
        self.address = os.path.join(self.dir, "containerd.sock")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self.cgroup_prefix = "katalyst-images-test-%d-" % os.getpid()
        # What of RUN_ROOT this test may create, hence remove at the end (only when empty: a node's containerd may
        # have started meanwhile and use it).
        self.run_dirs_created = [path for path in (RUN_ROOT, RUN_ROOT + "/s", RUN_ROOT + "/fifo") if not os.path.exists(path)]
        self.process = None

    def start(self, timeout=120):
        config = os.path.join(self.dir, "config.toml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write('version = 2\nroot = "%(d)s/root"\nstate = "%(d)s/state"\n'
                         'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                         '[grpc]\n  address = "%(a)s"\n[ttrpc]\n  address = "%(a)s.ttrpc"\n'
                         '[debug]\n  address = "%(d)s/debug.sock"\n'
                         # opt's default is /opt/containerd: keep it in here too
                         '[plugins."io.containerd.internal.v1.opt"]\n  path = "%(d)s/opt"\n' % {"d": self.dir, "a": self.address})
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(["containerd", "--config", config], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

        def answers():
            if self.process.poll() is not None:
                raise AssertionError("containerd exited with %s:\n%s" % (self.process.returncode, self.log_tail()))
            return self.ctr("version", check=False, timeout=30).returncode == 0
        wait_until(answers, timeout=timeout, what="containerd to answer `ctr version`", interval=0.2)
        return self

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    def ctr(self, *args, check=True, timeout=180, namespace=NAMESPACE):
        done = subprocess.run(["ctr", "--address", self.address, "--namespace", namespace, *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError("ctr %s: exit %d\n%s%s" % (" ".join(args), done.returncode, done.stdout, done.stderr))
        return done

    def run_options(self, container_id):
        return ["--fifo-dir", os.path.join(self.dir, "fifo"), "--runc-root", os.path.join(self.dir, "runc"),
                "--cgroup", "/" + self.cgroup_prefix + container_id]

    def task_status(self, container_id):
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:  # TASK PID STATUS
            fields = line.split()
            if len(fields) >= 3 and fields[0] == container_id:
                return fields[2]
        return None

    # -- stop: leave the host as found ---------------------------------------------------------------------------

    def _shims(self):
        """Pids of the shims this containerd started (their command line names its socket)."""
        found = []
        for entry in os.listdir("/proc"):
            args = _cmdline(entry) if entry.isdigit() else []
            if args and os.path.basename(args[0]) == SHIM and self.address in args and _alive(int(entry)):
                found.append(int(entry))
        return found

    def _cgroups(self):
        return glob.glob("/sys/fs/cgroup/*/%s*" % glob.escape(self.cgroup_prefix))

    def _mounts(self):
        """Mount points under the temporary directory, deepest first."""
        points = []
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                point = line.split()[4].replace("\\040", " ")
                if point == self.dir or point.startswith(self.dir + "/"):
                    points.append(point)
        return sorted(points, key=lambda p: p.count("/"), reverse=True)

    def _remove_containers(self):
        """Kill and delete every task and container through containerd itself (the orderly way)."""
        for namespace in self.ctr("namespaces", "ls", "-q", check=False, timeout=60).stdout.split():
            for line in self.ctr("task", "ls", check=False, timeout=60, namespace=namespace).stdout.splitlines()[1:]:
                task = line.split()[0]
                self.ctr("task", "kill", "-a", "-s", "SIGKILL", task, check=False, timeout=60, namespace=namespace)
                self.ctr("task", "delete", "-f", task, check=False, timeout=120, namespace=namespace)
            for container in self.ctr("containers", "ls", "-q", check=False, timeout=60, namespace=namespace).stdout.split():
                self.ctr("containers", "rm", container, check=False, timeout=60, namespace=namespace)

    def _kill_leftovers(self):
        """SIGKILL what an orderly stop left: our shims with everything below them, processes in our cgroups."""
        victims = set()
        tree = _children()
        pending = self._shims()
        while pending:
            pid = pending.pop()
            victims.add(pid)
            pending.extend(tree.get(pid, []))
        for cgroup in self._cgroups():
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), encoding="utf-8") as handle:
                    victims.update(int(pid) for pid in handle.read().split())
            except OSError:
                pass
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(_alive(pid) for pid in victims), timeout=60, what="leftover shims and containers to die")

    def _unmount_all(self):
        libc = ctypes.CDLL(None, use_errno=True)

        def unmounted():
            for point in self._mounts():
                if libc.umount2(point.encode(), 0) != 0 and ctypes.get_errno() == errno.EBUSY:
                    libc.umount2(point.encode(), MNT_DETACH)
            return not self._mounts()
        wait_until(unmounted, timeout=60, what="every mount under %s to be unmounted" % self.dir, interval=0.2)

    def _remove_cgroups(self):
        def removed():
            for cgroup in self._cgroups():
                try:
                    os.rmdir(cgroup)
                except OSError:
                    pass  # EBUSY while its last process is being torn down: try again
            return not self._cgroups()
        wait_until(removed, timeout=60, what="the containers' cgroups to be removed", interval=0.2)

    def _shim_sockets(self):
        """The shim sockets recorded in the task bundles (unix:///run/containerd/s/<hash>): a killed shim leaves its."""
        sockets = []
        for path in glob.glob(os.path.join(self.dir, "state", "io.containerd.runtime.v2.task", "*", "*", "address")):
            with open(path, encoding="utf-8") as handle:
                address = handle.read().strip()
            if address.startswith("unix://" + RUN_ROOT + "/"):
                sockets.append(address[len("unix://"):])
        return sockets

    def _stop_containerd(self, timeout):
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self._remove_containers()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)

    def _remove_files(self, stale_sockets):
        for socket_path in stale_sockets:
            try:
                os.unlink(socket_path)
            except FileNotFoundError:
                pass
        if self._mounts():  # rmtree would reach through a mount into what is mounted there
            raise AssertionError("still mounted: %s" % self._mounts())
        shutil.rmtree(self.dir, ignore_errors=True)
        for path in reversed(self.run_dirs_created):
            try:
                os.rmdir(path)
            except OSError:
                pass  # not empty: another containerd (the node's) uses it meanwhile

    def stop(self, timeout=60):
        """Stop containerd and everything it started, and remove every trace; each step runs even when an earlier
        one failed, and what failed or was left is reported at the end."""
        failures = []

        def step(action, *args):
            try:
                return action(*args)
            except Exception as err:  # pylint: disable=broad-exception-caught  # keep cleaning up, report at the end
                failures.append("%s: %s" % (action.__name__, err))
                return None
        step(self._stop_containerd, timeout)
        step(self._kill_leftovers)
        stale_sockets = step(self._shim_sockets) or []
        step(self._unmount_all)
        step(self._remove_cgroups)
        step(self._remove_files, stale_sockets)
        left = self._shims() + self._cgroups() + [path for path in [self.dir] + stale_sockets if os.path.lexists(path)]
        assert not failures and not left, "teardown failed: %s; left on the host: %s" % (failures, left)


@pytest.fixture(scope="module")
def containerd():
    """A private containerd, stopped with everything it started at the end of the module."""
    private = PrivateContainerd()
    try:
        yield private.start()
    finally:  # also when it failed to start
        private.stop()


@pytest.fixture(scope="module")
def imported(containerd):
    """The two images, imported into the private containerd."""
    first = images.import_into(containerd.address, NAMESPACE)
    assert first == {images.PAUSE_IMAGE: "imported", images.WORKLOAD_IMAGE: "imported"}
    return containerd


def _output_lines(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


@needs_build
def test_build_is_cached_and_reproducible(tmp_path):
    started = time.monotonic()
    first = images.build()
    messages = []
    second = images.build(progress=messages.append)
    assert first == second and [m for m in messages if "up to date" in m], "the second build must reuse the first: %s" % messages
    assert set(first) == {images.PAUSE_IMAGE, images.WORKLOAD_IMAGE}
    for name, path in first.items():
        index = images.read_index(path)
        (manifest,) = index["manifests"]
        assert manifest["mediaType"] == images.MEDIA_MANIFEST
        assert manifest["annotations"][images.ANNOTATION_CONTAINERD_NAME] == name
        assert manifest["annotations"][images.ANNOTATION_REF_NAME] == name.rsplit(":", 1)[1]
        assert manifest["platform"] == {"architecture": images.architecture(), "os": "linux"}
    # A fresh build elsewhere (no cache) gives the same bytes: the images are reproducible.
    elsewhere = images.build(out_dir=str(tmp_path))
    for name, path in first.items():
        assert elsewhere[name] != path
        assert images.manifest_digest(elsewhere[name]) == images.manifest_digest(path)
        with open(elsewhere[name], "rb") as fresh, open(path, "rb") as cached:
            assert fresh.read() == cached.read(), name
    print("builds took %.1fs" % (time.monotonic() - started))


@pytest.mark.root
@needs_containerd
@pytest.mark.parametrize("name", [images.PAUSE_IMAGE, images.WORKLOAD_IMAGE])
def test_import_names_the_images_unpacked_and_is_idempotent(imported, name):
    path = images.build()[name]
    listed = images.listed_images(imported.address, NAMESPACE)
    assert listed.get(name) == images.manifest_digest(path), listed
    assert sorted(listed) == sorted([images.PAUSE_IMAGE, images.WORKLOAD_IMAGE]), "no docker.io/ or import-<date> names"
    # Unpacked for the overlayfs snapshotter: the snapshot named by the image's chain ID is there.
    imported.ctr("snapshots", "--snapshotter", "overlayfs", "info", images.chain_id(path))
    assert images.import_into(imported.address, NAMESPACE) == {images.PAUSE_IMAGE: "present", images.WORKLOAD_IMAGE: "present"}


@pytest.mark.root
@needs_containerd
def test_workload_image_runs_shell_and_grows_memory(imported):
    done = imported.ctr("run", "--rm", *imported.run_options("hello"), images.WORKLOAD_IMAGE, "hello",
                        "sh", "-c", "echo hello; id -u; ls -ld /tmp; katalyst-workload grow-memory --mib 8")
    lines = _output_lines(done.stdout)
    assert lines[:2] == ["hello", "0"], done.stdout
    assert lines[2].startswith("drwxrwxrwt "), "/tmp is 1777: %s" % lines[2]
    growth = [int(line.split()[0].split("=")[1]) for line in lines if line.startswith("rss_mib=")]
    assert len(growth) == 2 and growth[-1] >= 8, done.stdout  # 2 steps of 4 MiB, each one resident
    assert lines[-1].startswith("done allocated_mib=8 "), done.stdout


@pytest.mark.root
@needs_containerd
def test_memory_limit_oom_kills_grow_memory(imported):
    limit_mib = 32
    done = imported.ctr("run", "--rm", *imported.run_options("oom"), "--memory-limit", str(limit_mib << 20),
                        images.WORKLOAD_IMAGE, "oom", "katalyst-workload", "grow-memory", "--mib", "256", "--interval", "0",
                        check=False)
    assert done.returncode == 128 + signal.SIGKILL, "the kernel's OOM killer, not an error: %s%s" % (done.stdout, done.stderr)
    growth = [int(line.split()[0].split("=")[1]) for line in _output_lines(done.stdout) if line.startswith("rss_mib=")]
    assert growth and max(growth) <= limit_mib, done.stdout
    assert "done" not in done.stdout


def _run_in_background(containerd, container_id, image, *command):
    """`ctr run --rm` in the background (it exits with the task's exit code); returns once the task runs."""
    process = subprocess.Popen(["ctr", "--address", containerd.address, "--namespace", NAMESPACE, "run", "--rm",
                                *containerd.run_options(container_id), image, container_id, *command],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)

    def running():
        if process.poll() is not None:
            raise AssertionError("ctr run %s exited with %s: %s" % (container_id, process.returncode, process.stdout.read()))
        return containerd.task_status(container_id) == "RUNNING"
    try:
        wait_until(running, timeout=180, what="task %s to run" % container_id, interval=0.2)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def _stop_with_sigterm(containerd, container_id, process, timeout=120):
    containerd.ctr("task", "kill", "-s", "SIGTERM", container_id)
    try:
        output = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
        raise AssertionError("%s did not stop within %ss of SIGTERM: %s" % (container_id, timeout, output))
    return process.returncode, output


@pytest.mark.root
@needs_containerd
def test_pause_image_stops_on_sigterm_with_exit_0(imported):
    process = _run_in_background(imported, "pause", images.PAUSE_IMAGE)
    code, output = _stop_with_sigterm(imported, "pause", process)
    assert code == 0, output


@pytest.mark.root
@needs_containerd
def test_pause_reaps_orphans_as_pid_1(imported):
    """An orphan in the pod's PID namespace is reparented to PID 1 (the pause process) and must be reaped there,
    or it stays a zombie: `sh` starts a `sleep` in the background and exits at once; the sleep must then vanish."""
    process = _run_in_background(imported, "reaper", images.WORKLOAD_IMAGE, "katalyst-workload", "pause")
    try:
        fifo = ["--fifo-dir", os.path.join(imported.dir, "fifo")]
        started = imported.ctr("task", "exec", *fifo, "--exec-id", "orphan", "reaper",
                               "sh", "-c", "sleep 1 </dev/null >/dev/null 2>&1 & echo $!")
        orphan = started.stdout.strip()
        assert orphan.isdigit(), started.stdout

        def processes():
            listing = imported.ctr("task", "exec", *fifo, "--exec-id", "ps-%d" % time.monotonic_ns(), "reaper",
                                   "ps", "-o", "pid,ppid,stat,args").stdout
            return {fields[0]: fields[1:] for fields in (line.split(None, 3) for line in listing.splitlines()[1:])}
        first = processes()
        assert first.get("1", [None, None, ""])[2].startswith("katalyst-workload pause"), first
        if orphan in first:
            assert first[orphan][0] == "1", "the orphan belongs to PID 1: %s" % first
        wait_until(lambda: orphan not in processes(), timeout=120, what="the orphaned sleep to exit and be reaped")
    finally:
        code, output = _stop_with_sigterm(imported, "reaper", process)
    assert code == 0, output
