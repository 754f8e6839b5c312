import pytest

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
