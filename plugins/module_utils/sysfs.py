# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""A sysroot-prefixed view of /sys and /proc.

Every read and write of kernel files goes through a SysFS, so tests and sandbox nodes point it at a
directory tree (``SysFS("/path/to/sysroot")``) while real nodes use ``SysFS("/")``.
Paths are always given as the kernel sees them (``/sys/fs/cgroup/...``, ``/proc/sys/vm/...``).
"""

from __future__ import annotations

import errno
import os


READ_CHUNK = 65536


def _read_whole(fd, limit):
    """The file's content (up to ``limit`` bytes) in as few read() calls as it takes: a short read is the end.

    The kernel builds a /proc or cgroup file's text on each read() call and hands out the part at the caller's offset,
    so reading on until an empty read (what a buffered file object does) joins two texts when the value changes in
    between: "0\n" then the tail of "1000\n" gives "0\n00\n". One call gets one text whole; a regular file (a
    sandbox sysroot) returns a short read only at its end."""
    chunks = []
    while limit > 0:
        chunk = os.read(fd, READ_CHUNK)
        chunks.append(chunk)
        limit -= len(chunk)
        if len(chunk) < READ_CHUNK:
            break
    return b"".join(chunks)


class SysFSError(Exception):
    """A kernel file could not be read or written; the message names the file and the cause."""


class SysFS:
    def __init__(self, root="/"):
        self.root = os.path.abspath(root or "/")

    def path(self, kernel_path):
        """Host path of ``kernel_path`` under this sysroot."""
        if not kernel_path.startswith("/"):
            raise ValueError("kernel path must be absolute: %r" % kernel_path)
        if self.root == "/":
            return kernel_path
        return os.path.join(self.root, kernel_path.lstrip("/"))

    def exists(self, kernel_path):
        return os.path.exists(self.path(kernel_path))

    def isdir(self, kernel_path):
        return os.path.isdir(self.path(kernel_path))

    def listdir(self, kernel_path):
        try:
            return sorted(os.listdir(self.path(kernel_path)))
        except FileNotFoundError:
            return []

    def subdirs(self, kernel_path):
        """Names of the directories in ``kernel_path`` (sorted; [] when it is gone): one scandir, no stat per entry
        (a cgroup v1 directory holds dozens of control files beside its few child cgroups)."""
        try:
            with os.scandir(self.path(kernel_path)) as entries:
                return sorted(entry.name for entry in entries if entry.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def stat(self, kernel_path):
        """``os.stat`` of ``kernel_path``, None when it is gone."""
        try:
            return os.stat(self.path(kernel_path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_bytes(self, kernel_path, limit=1 << 20):
        """Raw content (up to ``limit`` bytes), None when the file is gone or unreadable: for cheap change detection on
        hot paths (no text decoding, no buffered file object)."""
        try:
            fd = os.open(self.path(kernel_path), os.O_RDONLY)
        except OSError:
            return None
        try:
            return _read_whole(fd, limit)
        except OSError:
            return None
        finally:
            os.close(fd)

    def read_text(self, kernel_path, default=None):
        """File content without the trailing newline; ``default`` when the file is absent."""
        try:
            fd = os.open(self.path(kernel_path), os.O_RDONLY)
            try:
                return _read_whole(fd, 1 << 30).decode().rstrip("\n")
            finally:
                os.close(fd)
        except FileNotFoundError:
            if default is not None:
                return default
            raise SysFSError("%s: no such file" % kernel_path)
        except OSError as exc:
            raise SysFSError("%s: %s" % (kernel_path, exc.strerror or exc))

    def read_int(self, kernel_path, default=None):
        text = self.read_text(kernel_path, default=None if default is None else str(default))
        try:
            return int(text.split()[0])
        except (ValueError, IndexError):
            raise SysFSError("%s: expected an integer, got %r" % (kernel_path, text))

    def write_text(self, kernel_path, value):
        """Write ``value`` (kernel files take one write; no temp file, no newline games)."""
        data = value if isinstance(value, str) else str(value)
        try:
            with open(self.path(kernel_path), "w") as handle:
                handle.write(data)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                reason += " (read-only or not permitted)"
            raise SysFSError("cannot write %r to %s: %s" % (data, kernel_path, reason))

    def write_if_changed(self, kernel_path, value, normalize=None):
        """Write only when the current content differs; returns True when it wrote."""
        current = self.read_text(kernel_path, default="")
        wanted = value if isinstance(value, str) else str(value)
        same = (normalize(current) == normalize(wanted)) if normalize else current.strip() == wanted.strip()
        if same:
            return False
        self.write_text(kernel_path, wanted)
        return True

    def makedirs(self, kernel_path):
        """mkdir -p; returns True when the directory was created."""
        host = self.path(kernel_path)
        if os.path.isdir(host):
            return False
        try:
            os.makedirs(host)
        except OSError as exc:
            raise SysFSError("cannot create %s: %s" % (kernel_path, exc.strerror or exc))
        return True

    def rmdir(self, kernel_path):
        """Remove an (empty, for cgroups: process-free) directory; returns True when removed."""
        try:
            os.rmdir(self.path(kernel_path))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SysFSError("cannot remove %s: %s" % (kernel_path, exc.strerror or exc))
        return True

    def inode(self, kernel_path):
        """Inode of a cgroup directory (its cgroup id on 64-bit kernels)."""
        return os.stat(self.path(kernel_path)).st_ino
