# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Host vm.watermark_scale_factor (node spec §5.2 first row); every expected value worked by hand."""

from __future__ import annotations

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import hostwatermark

GI = 1 << 30
# 65536000 kB total, 8192 huge pages of 2048 kB = 16777216 kB
MEMINFO_HUGE = "MemTotal:       65536000 kB\nMemFree:        1000 kB\nHugePages_Total:    8192\nHugepagesize:       2048 kB\n"
MEMINFO_PLAIN = "MemTotal:       65536000 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n"


@pytest.mark.parametrize("reserved_gb, total, scale", [
    (1, 64 * GI, 157),          # 10000/64 = 156.25 -> ceil 157
    (2, 100 * GI, 200),         # exactly 200
    (1, 3 * GI, 3334),          # 3333.33 -> 3334
    (100, GI, 10000),           # 1000000 capped
    (1, 1 << 50, 1),            # 10000/1048576 = 0.0095 -> ceil 1
    (0, GI, 1),                 # 0 raised to the floor of 1
])
def test_auto_scale_factor(reserved_gb, total, scale):
    assert hostwatermark.auto_scale_factor(reserved_gb, total) == scale


@pytest.mark.parametrize("reserved_gb, total, match", [(1, 0, "mem.total is 0"), (1, None, "None"), (-1, GI, "reserved_gb"), (1, True, "True")])
def test_auto_scale_factor_refuses(reserved_gb, total, match):
    with pytest.raises(ValueError, match=match):
        hostwatermark.auto_scale_factor(reserved_gb, total)


@pytest.mark.parametrize("scale, meminfo, adjusted", [
    (157, MEMINFO_HUGE, 116),       # (65536000 - 16777216) * 157 / 65536000 = 7655129088 / 65536000 = 116.8 -> 116
    (157, {"MemTotal": 65536000 * 1024, "HugePages_Total": 8192, "Hugepagesize": 2048 * 1024}, 116),   # same ratio in bytes
    (157, MEMINFO_PLAIN, 157),
    (157, "MemTotal: 65536000 kB\n", 157),          # no hugepage fields: unchanged
    (157, None, 157),
    (157, {"MemTotal": 0, "HugePages_Total": 0, "Hugepagesize": 2048}, 157),
    (157, "MemTotal: 1000 kB\nHugePages_Total: 600\nHugepagesize: 2 kB\n", 0),    # huge pages above MemTotal: nothing left
    (3, "MemTotal: 1000 kB\nHugePages_Total: 250\nHugepagesize: 2 kB\n", 1),      # 500 * 3 / 1000 = 1.5 -> 1
])
def test_hugepage_adjusted(scale, meminfo, adjusted):
    assert hostwatermark.hugepage_adjusted(scale, meminfo) == adjusted


@pytest.mark.parametrize("explicit, reserved_gb, total, meminfo, wanted", [
    (200, 0, None, None, 200),                  # explicit, as is
    (1000, 5, GI, None, 1000),                  # explicit above 500 is not clamped, reserve ignored
    (5, 0, None, None, 5),                      # explicit below 10 is not clamped
    (0, 0, 64 * GI, MEMINFO_HUGE, None),        # nothing asked: skip
    (0, 1, 64 * GI, MEMINFO_PLAIN, 157),
    (0, 1, 64 * GI, MEMINFO_HUGE, 116),
    (0, 1, 3 * GI, MEMINFO_PLAIN, 500),         # 3334 clamped to 500
    (0, 1, 1 << 50, MEMINFO_PLAIN, 10),         # 1 clamped to 10
    (0, 1, 1 << 50, "MemTotal: 1000 kB\nHugePages_Total: 250\nHugepagesize: 2 kB\n", None),   # 500*1/1000 = 0 -> skip
])
def test_watermark_scale_factor(explicit, reserved_gb, total, meminfo, wanted):
    assert hostwatermark.watermark_scale_factor(explicit, reserved_gb, total, meminfo) == wanted


@pytest.mark.parametrize("explicit, reserved_gb, total, match", [
    (-1, 0, GI, "explicit=-1"), ("10", 0, GI, "explicit='10'"), (0, -1, GI, "reserved_gb=-1"), (0, 1, 0, "mem.total is 0"),
])
def test_watermark_scale_factor_refuses(explicit, reserved_gb, total, match):
    with pytest.raises(ValueError, match=match):
        hostwatermark.watermark_scale_factor(explicit, reserved_gb, total, None)


@pytest.mark.parametrize("current, wanted, change", [
    ("100\n", 100, None),
    (" 100 ", 100, None),
    ("100\n", 157, ("100", "157", "host watermark: 100 -> 157")),
    ("garbage\n", 157, ("garbage\n", "157", "current content 'garbage\\n' is not an integer")),
    ("", 157, ("", "157", "current content '' is not an integer")),
    (None, 157, (None, "157", "current content None is not an integer")),
    ("100", None, None),
])
def test_plan_watermark(current, wanted, change):
    plan = hostwatermark.plan_watermark(current, wanted)
    if change is None:
        assert not plan
    else:
        assert [c.as_dict() for c in plan] == [{"kind": "sysctl", "target": "vm.watermark_scale_factor", "action": "set",
                                                "before": change[0], "after": change[1], "reason": change[2]}]
