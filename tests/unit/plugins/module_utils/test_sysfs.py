import os
import subprocess
import threading

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import sysfs
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS, SysFSError


def test_paths_are_prefixed(tmp_path):
    fs = SysFS(str(tmp_path))
    assert fs.path("/proc/sys/vm/swappiness") == str(tmp_path / "proc/sys/vm/swappiness")
    assert SysFS("/").path("/proc/meminfo") == "/proc/meminfo"
    with pytest.raises(ValueError):
        fs.path("relative/path")


def test_write_if_changed(tmp_path):
    fs = SysFS(str(tmp_path))
    fs.makedirs("/proc/sys/vm")
    assert fs.write_if_changed("/proc/sys/vm/x", 10) is True
    assert fs.read_int("/proc/sys/vm/x") == 10
    assert fs.write_if_changed("/proc/sys/vm/x", "10\n") is False
    assert fs.read_text("/proc/sys/vm/absent", default="") == ""
    with pytest.raises(SysFSError, match="no such file"):
        fs.read_text("/proc/sys/vm/absent")


def test_write_error_names_the_file(tmp_path):
    fs = SysFS(str(tmp_path))
    with pytest.raises(SysFSError, match="/sys/missing/dir/file"):
        fs.write_text("/sys/missing/dir/file", "1")


def test_makedirs_rmdir_inode(tmp_path):
    fs = SysFS(str(tmp_path))
    assert fs.makedirs("/sys/fs/cgroup/x") is True
    assert fs.makedirs("/sys/fs/cgroup/x") is False
    assert fs.inode("/sys/fs/cgroup/x") > 0
    assert fs.listdir("/sys/fs/cgroup") == ["x"]
    assert fs.rmdir("/sys/fs/cgroup/x") is True
    assert fs.rmdir("/sys/fs/cgroup/x") is False


def test_a_short_read_is_the_end_so_two_texts_are_never_joined(tmp_path, monkeypatch):
    """A kernel file read in two calls while its value changes: "0\\n", then the tail of "1000\\n" at offset 2."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "oom_score_adj").write_text("0\n")
    replies = [b"0\n", b"00\n", b""]
    monkeypatch.setattr(sysfs.os, "read", lambda fd, size: replies.pop(0))
    assert SysFS(str(tmp_path)).read_text("/proc/oom_score_adj") == "0"
    replies[:] = [b"0\n", b"00\n", b""]
    assert SysFS(str(tmp_path)).read_bytes("/proc/oom_score_adj") == b"0\n"


def test_files_longer_than_one_read_are_read_whole(tmp_path):
    text = "".join("%d\n" % pid for pid in range(40000))          # cgroup.procs of a big cgroup: 228 KB
    (tmp_path / "cgroup.procs").write_text(text)
    fs = SysFS(str(tmp_path))
    assert fs.read_text("/cgroup.procs") == text.rstrip("\n")
    assert fs.read_bytes("/cgroup.procs") == text.encode()
    assert fs.read_bytes("/cgroup.procs", limit=10) == text.encode()[:sysfs.READ_CHUNK]
    with pytest.raises(SysFSError, match="Is a directory"):
        fs.read_text("/")


def test_a_value_changing_while_it_is_read_on_the_real_kernel():
    """Another writer flips a process's oom_score_adj between 0 and 1000 while it is read: every read is one of them
    (a buffered read tore about one read in ten here: "0\\n00")."""
    child = subprocess.Popen(["sleep", "300"])
    path = "/proc/%d/oom_score_adj" % child.pid
    stop = threading.Event()

    def flip(fd):
        while not stop.is_set():
            for value in (b"1000", b"0"):
                os.pwrite(fd, value, 0)
    try:
        try:
            fd = os.open(path, os.O_WRONLY)
            os.pwrite(fd, b"1000", 0)
            os.pwrite(fd, b"0", 0)
        except OSError as exc:
            pytest.skip("cannot change a child's oom_score_adj here: %s" % exc)
        flipper = threading.Thread(target=flip, args=(fd,), daemon=True)
        flipper.start()
        fs = SysFS("/")
        seen = [fs.read_text(path) for _read in range(3000)] + [fs.read_bytes(path).decode().strip() for _read in range(3000)]
        stop.set()
        flipper.join()
        os.close(fd)
    finally:
        stop.set()
        child.kill()
        child.wait()
    assert sorted(set(seen) - {"0", "1000"}) == []
