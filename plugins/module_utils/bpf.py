# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""BPF from Python through ctypes on the system libbpf (libbpf.so.1): no compiled extension needed.

* ``PinnedMap``: a pinned hash map with fixed-size keys/values (the Katalyst-compatible OOM priority
  map, key u64 cgroup id, value s64 priority; the observer's event map).
* ``build_observer`` / ``load_observer`` / ``unload_observer``: compile the CO-RE OOM observer with
  clang against the running kernel's BTF, load it, pin its maps and links (links stay attached after
  the loader exits; removing the pins detaches them).
* ``plan_priority_map``: the write-if-changed Plan that keeps the priority map equal to the desired
  {cgroup id: priority} (stale entries deleted).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import struct
import subprocess

from .reconcile import Plan

DEFAULT_PIN_DIR = "/sys/fs/bpf/katalyst"
PRIORITY_MAP = "oom_priority"
EVENTS_MAP = "oom_events"
PROGRAMS = ("on_oom_kill_process", "on_mark_victim")
KEY_U64, VALUE_S64, KEY_U32 = "=Q", "=q", "=I"
# struct oom_event in oom_observer.bpf.c
EVENT_FORMAT = "=QQQQqqIiII16s"
EVENT_FIELDS = ("timestamp_ns", "cgroup_id", "memory_cgroup_id", "domain_cgroup_id", "priority", "points", "pid",
                "oom_score_adj", "source", "domain_known", "comm")
NO_PRIORITY = -(1 << 63)
SOURCES = {1: "fentry/oom_kill_process", 2: "tp_btf/mark_victim"}


class BPFError(Exception):
    pass


_LIB = None


def libbpf():
    """The system libbpf, with the prototypes we call."""
    global _LIB  # pylint: disable=global-statement
    if _LIB is None:
        try:
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise BPFError("libbpf.so.1 is not installed (Debian: libbpf1): %s" % exc) from exc
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, restype, argtypes in (
                ("bpf_obj_get", i, [cp]),
                ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
                ("bpf_map_lookup_elem", i, [i, vp, vp]),
                ("bpf_map_delete_elem", i, [i, vp]),
                ("bpf_map_get_next_key", i, [i, vp, vp]),
                ("bpf_object__open", vp, [cp]),
                ("bpf_object__find_map_by_name", vp, [vp, cp]),
                ("bpf_map__set_pin_path", i, [vp, cp]),
                ("bpf_object__find_program_by_name", vp, [vp, cp]),
                ("bpf_program__set_autoload", i, [vp, ctypes.c_bool]),
                ("bpf_object__load", i, [vp]),
                ("bpf_program__attach", vp, [vp]),
                ("bpf_link__pin", i, [vp, cp]),
                ("bpf_link__destroy", i, [vp]),
                ("bpf_object__close", None, [vp])):
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        _LIB = lib
    return _LIB


def _check(result, what):
    if result < 0:
        code = -result if result < 0 and result != -1 else ctypes.get_errno()
        raise BPFError("%s: %s" % (what, os.strerror(code)))
    return result


class PinnedMap:
    """A pinned BPF map: ``items()``, ``get``, ``update``, ``delete`` with struct-packed keys and values."""

    def __init__(self, path, key_format=KEY_U64, value_format=VALUE_S64):
        self.path = path
        self.key_format, self.value_format = key_format, value_format
        self.key_size, self.value_size = struct.calcsize(key_format), struct.calcsize(value_format)
        self.fd = libbpf().bpf_obj_get(path.encode())
        if self.fd < 0:
            code = ctypes.get_errno() or -self.fd
            raise BPFError("cannot open pinned map %s: %s" % (path, os.strerror(code)))

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _key(self, key):
        return ctypes.create_string_buffer(struct.pack(self.key_format, key), self.key_size)

    def keys(self):
        lib = libbpf()
        keys = []
        previous = None
        current = ctypes.create_string_buffer(self.key_size)
        while True:
            result = lib.bpf_map_get_next_key(self.fd, previous, current)
            if result < 0:
                code = ctypes.get_errno() or -result
                if code == errno.ENOENT:
                    return keys
                raise BPFError("%s: next key: %s" % (self.path, os.strerror(code)))
            keys.append(struct.unpack(self.key_format, current.raw)[0])
            previous = ctypes.create_string_buffer(current.raw, self.key_size)

    def get(self, key, default=None):
        value = ctypes.create_string_buffer(self.value_size)
        if libbpf().bpf_map_lookup_elem(self.fd, self._key(key), value) < 0:
            return default
        unpacked = struct.unpack(self.value_format, value.raw)
        return unpacked[0] if len(unpacked) == 1 else unpacked

    def items(self):
        out = {}
        for key in self.keys():
            value = self.get(key)
            if value is not None:   # deleted between the two calls
                out[key] = value
        return out

    def update(self, key, value):
        packed = struct.pack(self.value_format, *(value if isinstance(value, tuple) else (value,)))
        _check(libbpf().bpf_map_update_elem(self.fd, self._key(key), ctypes.create_string_buffer(packed, self.value_size), 0),
               "%s: update %r" % (self.path, key))

    def delete(self, key):
        result = libbpf().bpf_map_delete_elem(self.fd, self._key(key))
        if result < 0 and (ctypes.get_errno() or -result) != errno.ENOENT:
            _check(result, "%s: delete %r" % (self.path, key))


# -- the priority map ------------------------------------------------------------------------------
def plan_priority_map(current, desired):
    """Write-if-changed: set entries that differ, delete entries no live container has."""
    plan = Plan()
    for cgroup_id in sorted(desired):
        if current.get(cgroup_id) != desired[cgroup_id]:
            plan.add("bpf_map", str(cgroup_id), "set" if cgroup_id in current else "create", current.get(cgroup_id), desired[cgroup_id])
    for cgroup_id in sorted(set(current) - set(desired)):
        plan.add("bpf_map", str(cgroup_id), "delete", current[cgroup_id], None, "stale: no live container has this cgroup")
    return plan


def map_applier(pinned):
    def apply(change):
        if change.action == "delete":
            pinned.delete(int(change.target))
        else:
            pinned.update(int(change.target), int(change.after))
    return apply


def cgroup_id(path):
    """The cgroup id the kernel uses (kernfs node id): the cgroup directory's inode on 64-bit kernels."""
    return os.stat(path).st_ino


# -- the observer's events ---------------------------------------------------------------------------
def decode_event(raw):
    values = dict(zip(EVENT_FIELDS, struct.unpack(EVENT_FORMAT, raw)))
    values["comm"] = values["comm"].split(b"\0", 1)[0].decode(errors="replace")
    values["priority"] = None if values["priority"] == NO_PRIORITY else values["priority"]
    values["points"] = None if values["points"] < 0 else values["points"]
    values["domain_known"] = bool(values["domain_known"])
    values["source"] = SOURCES.get(values["source"], str(values["source"]))
    return values


def drain_events(pin_dir=DEFAULT_PIN_DIR):
    """Read and delete every recorded kill, oldest first."""
    with PinnedMap(os.path.join(pin_dir, EVENTS_MAP), KEY_U32, "=%ds" % struct.calcsize(EVENT_FORMAT)) as events:
        out = []
        for pid in events.keys():
            raw = events.get(pid)
            if raw is None:
                continue
            out.append(decode_event(raw))
            events.delete(pid)
    return sorted(out, key=lambda e: (e["timestamp_ns"], e["pid"]))


# -- building and loading the observer ---------------------------------------------------------------
def bpf_target_arch():
    return {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390"}.get(platform.machine(), platform.machine())


def file_digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]


def object_path(source, build_dir):
    """Where the object compiled from ``source`` lives: named by the source's hash, so an edit rebuilds."""
    return os.path.join(build_dir, "oom_observer.%s.bpf.o" % file_digest(source))


def build_observer(source, build_dir, btf="/sys/kernel/btf/vmlinux", clang="clang", bpftool="bpftool"):
    """Compile ``source`` CO-RE against the running kernel; returns (object path, changed)."""
    os.makedirs(build_dir, exist_ok=True)
    obj = object_path(source, build_dir)
    if os.path.exists(obj):
        return obj, False
    header = os.path.join(build_dir, "vmlinux.h")
    if not os.path.exists(header):
        with open(header + ".tmp", "w") as out:
            subprocess.run([bpftool, "btf", "dump", "file", btf, "format", "c"], stdout=out, check=True)
        os.replace(header + ".tmp", header)
    multiarch = "/usr/include/%s-linux-gnu" % platform.machine()
    command = [clang, "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_%s" % bpf_target_arch(), "-I", build_dir]
    if os.path.isdir(multiarch):
        command += ["-I", multiarch]
    result = subprocess.run(command + ["-c", source, "-o", obj + ".tmp"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BPFError("clang failed to build %s:\n%s" % (source, result.stderr[-4000:]))
    os.replace(obj + ".tmp", obj)
    return obj, True


def loaded_programs(pin_dir=DEFAULT_PIN_DIR):
    """Names of the observer programs whose links are pinned in ``pin_dir``."""
    return [name for name in PROGRAMS if os.path.exists(os.path.join(pin_dir, "link_" + name))]


def _open_and_load(obj, pin_dir, programs):
    lib = libbpf()
    handle = lib.bpf_object__open(obj.encode())
    if not handle:
        raise BPFError("cannot open %s: %s" % (obj, os.strerror(ctypes.get_errno())))
    try:
        for name in (PRIORITY_MAP, EVENTS_MAP):
            bpf_map = lib.bpf_object__find_map_by_name(handle, name.encode())
            if not bpf_map:
                raise BPFError("%s has no map %s" % (obj, name))
            _check(lib.bpf_map__set_pin_path(bpf_map, os.path.join(pin_dir, name).encode()), "pin path of " + name)
        for name in PROGRAMS:
            program = lib.bpf_object__find_program_by_name(handle, name.encode())
            if not program:
                raise BPFError("%s has no program %s" % (obj, name))
            lib.bpf_program__set_autoload(program, name in programs)
        _check(lib.bpf_object__load(handle), "load %s (programs %s)" % (obj, ", ".join(programs)))
    except BPFError:
        lib.bpf_object__close(handle)
        raise
    return handle


def load_observer(obj, pin_dir=DEFAULT_PIN_DIR):
    """Load and attach the observer, pinning maps and links in ``pin_dir``; returns the attached programs.

    fentry/oom_kill_process (points, domain) is tried first; where the kernel refuses trampolines
    (EPERM on some hosts) the tp_btf/mark_victim program alone is loaded. Maps already pinned are
    reused, so reloading keeps the priority map's content.
    """
    os.makedirs(pin_dir, exist_ok=True)
    lib = libbpf()
    errors = []
    for programs in (PROGRAMS, ("on_mark_victim",)):
        try:
            handle = _open_and_load(obj, pin_dir, programs)
        except BPFError as exc:
            errors.append(str(exc))
            continue
        try:
            attached = []
            for name in programs:
                link_pin = os.path.join(pin_dir, "link_" + name)
                if os.path.exists(link_pin):
                    os.unlink(link_pin)
                program = lib.bpf_object__find_program_by_name(handle, name.encode())
                link = lib.bpf_program__attach(program)
                if not link:
                    raise BPFError("attach %s: %s" % (name, os.strerror(ctypes.get_errno())))
                _check(lib.bpf_link__pin(link, link_pin.encode()), "pin link " + name)
                lib.bpf_link__destroy(link)   # the pin keeps it attached
                attached.append(name)
            return attached
        finally:
            lib.bpf_object__close(handle)
    raise BPFError("the OOM observer did not load: " + " | ".join(errors))


def unload_observer(pin_dir=DEFAULT_PIN_DIR, keep_priority_map=False):
    """Detach (remove link pins) and drop the maps; returns the pins removed."""
    removed = []
    names = ["link_" + p for p in PROGRAMS] + [EVENTS_MAP] + ([] if keep_priority_map else [PRIORITY_MAP])
    for name in names:
        path = os.path.join(pin_dir, name)
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    return removed


def is_bpffs(path):
    """True when ``path`` is on a mounted BPF filesystem (per /proc/self/mounts)."""
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        points = [fields[1] for fields in (line.split() for line in mounts) if len(fields) > 2 and fields[2] == "bpf"]
    return any(real == point or real.startswith(point.rstrip("/") + "/") for point in points)
