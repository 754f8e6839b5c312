"""Test-owned cgroup v1 directories on this machine's real kernel: made below the test process's own memory cgroup
path (mirrored in the other hierarchies), and removed afterwards, deepest first."""

import errno
import os
import time

CGROUP_ROOT = "/sys/fs/cgroup"


def own_memory_cgroup():
    """This process's path in the v1 memory hierarchy, None without one."""
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _hid, controllers, path = line.strip().split(":", 2)
            if "memory" in controllers.split(","):
                return path
    return None


def make_cgroup_path(controller, path, created):
    """Create ``path`` (absolute in the hierarchy) and its missing parents under ``controller``; each directory made is
    appended to ``created``. v1 cpusets start empty, so a new cpuset child gets its parent's cpus and mems."""
    directory = os.path.join(CGROUP_ROOT, controller)
    for part in path.strip("/").split("/"):
        directory += "/" + part
        if os.path.isdir(directory):
            continue
        os.mkdir(directory)
        created.append(directory)
        if controller == "cpuset":
            for name in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(os.path.dirname(directory), name)) as parent, open(os.path.join(directory, name), "w") as child:
                    child.write(parent.read().strip())


def remove_cgroups(controllers, path, created=()):
    """Remove ``path`` with everything below it in each of ``controllers``, and the directories in ``created``, deepest
    first. The kernel may need a moment after a cgroup's last process exits: a busy memory cgroup is tried again."""
    below = [os.path.join(top, name) for controller in controllers
             for top, names, _files in os.walk("%s/%s%s" % (CGROUP_ROOT, controller, path)) for name in names]
    for directory in sorted(set(below) | set(created), key=len, reverse=True):
        _rmdir(directory, attempts=50 if directory.startswith(CGROUP_ROOT + "/memory") else 3)


def _rmdir(path, attempts):
    for _attempt in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise
            time.sleep(0.1)
