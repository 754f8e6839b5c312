# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The colocation sysctls, decided in one batch: validated, persisted in one drop-in file, applied live.

``net.ipv4.tcp_mem`` comes from a memory ratio with three distinct values in the kernel's own boot-time
proportions (min : pressure : max = 3/4 : 1 : 3/2 of its base limit, i.e. max/2, 2*max/3, max), where
max = (memory / page size / 100) * ratio as in Katalyst. Katalyst writes the same value three
times (no pressure band at all); we do not copy that.
"""

from __future__ import annotations

import json
import re

from .reconcile import Plan

DROP_IN = "/etc/sysctl.d/90-katalyst.conf"
RECORD_PATH = "/var/lib/katalyst/sysctl-originals.json"
PAGE_SIZE = 4096
TCP_MEM = "net.ipv4.tcp_mem"
_UINT = re.compile(r"^[0-9]+$")


class SysctlError(ValueError):
    """A sysctl that cannot be set; the message names the key and the value."""


def proc_path(key):
    return "/proc/sys/" + key.replace(".", "/")


def tcp_mem_pages(memory_bytes, ratio, page_size=PAGE_SIZE):
    """(min, pressure, max) in pages for ``ratio`` percent of memory."""
    if not isinstance(ratio, int) or isinstance(ratio, bool) or not 20 <= ratio <= 80:
        raise SysctlError("tcp_mem_ratio=%r is out of range: 20-80 (percent of memory that TCP buffers may use)" % (ratio,))
    maximum = (memory_bytes // page_size // 100) * ratio
    return maximum // 2, maximum * 2 // 3, maximum


def parse_tcp_mem(text):
    """The kernel's ``net.ipv4.tcp_mem`` as Katalyst reads it (``getHostTCPMemFile``): the first line holds exactly three
    unsigned page counts. (min, pressure, max), or SysctlError naming the file and the content."""
    fields = str(text).partition("\n")[0].split()
    if len(fields) != 3 or not all(_UINT.match(field) and int(field) < 2 ** 64 for field in fields):
        raise SysctlError("%s: cannot parse its current content %r (three page counts expected: min pressure max); nothing written"
                          % (proc_path(TCP_MEM), text))
    return tuple(int(field) for field in fields)


def _int_range(low, high, why):
    def check(key, value):
        try:
            number = int(str(value).strip())
        except ValueError:
            raise SysctlError("%s=%r: an integer is required" % (key, value))
        if not low <= number <= high:
            raise SysctlError("%s=%r is out of range %d-%d (%s)" % (key, value, low, high, why))
        return str(number)
    return check


def _triple(key, value):
    parts = str(value).split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise SysctlError("%s=%r: three page counts are required (min pressure max)" % (key, value))
    low, pressure, high = (int(p) for p in parts)
    if not low <= pressure <= high or low == high:
        raise SysctlError("%s=%r: values must rise: min <= pressure <= max, min < max" % (key, value))
    return "%d %d %d" % (low, pressure, high)


def validators(memory_bytes):
    """Per-key validation: ranges with the reason, so a typo cannot take a node down."""
    return {
        TCP_MEM: _triple,
        "vm.watermark_scale_factor": _int_range(1, 3000, "fraction of memory in 1/10000 units kswapd keeps free"),
        "vm.min_free_kbytes": _int_range(1024, max(1024, memory_bytes // 1024 // 10), "at most 10% of memory"),
        "vm.swappiness": _int_range(0, 200, "kernel range"),
        "vm.overcommit_memory": _int_range(0, 2, "0 heuristic, 1 always, 2 never"),
        "vm.overcommit_ratio": _int_range(0, 100, "percent"),
        "vm.dirty_ratio": _int_range(1, 100, "percent"),
        "vm.dirty_background_ratio": _int_range(1, 100, "percent"),
        "net.core.somaxconn": _int_range(1, 2147483647, "kernel range"),
        "kernel.numa_balancing": _int_range(0, 1, "0 off, 1 on"),
    }


def normalize(value):
    return " ".join(str(value).split())


def desired_sysctls(memory_bytes, tcp_mem_ratio=None, watermark_scale_factor=None, min_free_kbytes=None, settings=None):
    """{key: value string} after validation."""
    wanted = {}
    if tcp_mem_ratio is not None:
        wanted[TCP_MEM] = "%d %d %d" % tcp_mem_pages(memory_bytes, tcp_mem_ratio)
    if watermark_scale_factor is not None:
        wanted["vm.watermark_scale_factor"] = watermark_scale_factor
    if min_free_kbytes is not None:
        wanted["vm.min_free_kbytes"] = min_free_kbytes
    for key, value in sorted((settings or {}).items()):
        if not isinstance(key, str) or not all(part and part.replace("_", "").replace("-", "").isalnum() for part in key.split(".")):
            raise SysctlError("invalid sysctl name %r" % (key,))
        if key in wanted and normalize(wanted[key]) != normalize(value):
            raise SysctlError("%s is set twice with different values (%r and %r)" % (key, wanted[key], value))
        wanted[key] = value
    checks = validators(memory_bytes)
    result = {}
    for key, value in wanted.items():
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
            raise SysctlError("%s=%r: a number or a string is required" % (key, value))
        result[key] = checks[key](key, value) if key in checks else normalize(value)
    return result


def render_drop_in(values):
    lines = ["# Managed by katalyst.colocation (sysctls module); local changes are overwritten.",
             "# Colocation settings: TCP memory, watermarks and friends."]
    lines += ["%s = %s" % (key, values[key]) for key in sorted(values)]
    return "\n".join(lines) + "\n"


def read_sysctl_state(fs, keys):
    live, raw = {}, {}
    for key in keys:
        path = proc_path(key)
        raw[key] = fs.read_text(path) if fs.exists(path) else None
        live[key] = None if raw[key] is None else normalize(raw[key])
    text = fs.read_text(RECORD_PATH, default="")
    return {"live": live, "raw": raw, "drop_in": fs.read_text(DROP_IN, default="") or None,
            "record": json.loads(text) if text else {}}


def _check_live_tcp_mem(current, keys):
    """A ``tcp_mem`` we are about to rewrite must hold what the kernel writes there: content we cannot parse is
    reported (SysctlError naming the file and the content), never silently overwritten."""
    if TCP_MEM in keys and current["live"].get(TCP_MEM) is not None:
        parse_tcp_mem((current.get("raw") or {}).get(TCP_MEM, current["live"][TCP_MEM]))


def plan_sysctls(desired, current, optional=(), state="present"):
    """Plan live writes and the drop-in file. Unknown keys fail unless ``optional``."""
    plan = Plan()
    record = dict(current["record"])
    if state == "absent":
        _check_live_tcp_mem(current, record)
        for key, original in sorted(record.items()):
            if current["live"].get(key) is not None and current["live"][key] != original:
                plan.add("sysctl", key, "set", current["live"][key], original, "restore the value before katalyst")
        if current["drop_in"] is not None:
            plan.add("file", DROP_IN, "delete", current["drop_in"], None)
        if record:
            plan.add("record", RECORD_PATH, "delete", record, None)
        return plan
    missing = [key for key in desired if current["live"].get(key) is None]
    for key in missing:
        if key not in optional:
            raise SysctlError("%s: this kernel has no such sysctl (%s is missing); list it in `optional` to skip it"
                              % (key, proc_path(key)))
        plan.warn("%s is not available on this kernel; skipped" % key)
    applied = {key: value for key, value in desired.items() if key not in missing}
    _check_live_tcp_mem(current, applied)
    for key in sorted(applied):
        before = current["live"][key]
        if before != normalize(applied[key]):
            plan.add("sysctl", key, "set", before, applied[key])
            record.setdefault(key, before)
    content = render_drop_in(applied)
    if current["drop_in"] is None or current["drop_in"].rstrip("\n") != content.rstrip("\n"):
        plan.add("file", DROP_IN, "set", current["drop_in"], content, "persist across reboots")
    if record != current["record"]:
        plan.add("record", RECORD_PATH, "set", current["record"] or None, record, "remember the original values")
    return plan


def applier(fs):
    """Apply one sysctl/file Change through ``fs``."""
    import os  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    def write_file(path, content):
        fs.makedirs(os.path.dirname(path))
        host = fs.path(path)
        handle, tmp = tempfile.mkstemp(dir=os.path.dirname(host), prefix=".katalyst-")
        with os.fdopen(handle, "w") as out:
            out.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, host)

    def apply(change):
        if change.kind == "sysctl":
            value = change.after
            fs.write_text(proc_path(change.target), value.replace(" ", "\t") if change.target == TCP_MEM else value)
        elif change.kind in ("file", "record"):
            if change.after is None:
                if fs.exists(change.target):
                    os.unlink(fs.path(change.target))
            else:
                write_file(change.target, change.after if isinstance(change.after, str) else json.dumps(change.after, sort_keys=True))
        else:
            raise ValueError("not a sysctl change: %r" % change)
    return apply
