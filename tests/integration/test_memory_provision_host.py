"""Memory provisioning on this host's real cgroup v1 memory hierarchy (issue 7: "memory provisions are written to the cgroups").

The agent (``Agent.converge_qos_cgroups`` then ``Agent.converge_memory_provision``, i.e. ``agent_numa.NumaLoops`` ->
``memprovision`` -> ``cgroups.plan_qos_cgroups``) runs in this process against the real kernel (``SysFS("/")``): it
creates ``besteffort-<N>`` next to a ``besteffort`` root that the test creates the way the kubelet would, below a child of
the test's OWN memory cgroup (``<own>/katalyst-memprov-<pid>/kubepods/besteffort``, mirrored in the cpu and cpuset
hierarchies when they are writable), and writes ``memory.limit_in_bytes`` there. Everything is removed afterwards.

Two readings can be replaced, file by file, by a small overlay directory: the NUMA nodes' ``meminfo`` (a host's free
memory moves all the time and cannot be driven to a floor safely) and the agent's record under ``/var/lib/katalyst``
(kept off the host). The first pass uses the host's own meminfo; the cgroups, their limits and the memory usage the
memory guard reads (``memory.numa_stat`` of processes really running in ``besteffort-<N>``) are always real.
Expected limits are computed here from node spec §3.1 (canonical provision) and §3.4 (memory guard) plus our floor.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent import Agent
from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS
from tests.integration.hostcgroups import make_cgroup_path, own_memory_cgroup, remove_cgroups
from tests.integration.oomlib import HOLDER, MEMORY_ROOT

GI = 1 << 30
MI = 1 << 20
PAGE = 4096
RESERVED = 1 * GI                  # reserved_memory_for_allocate (Katalyst's 5Gi default is larger than small CI hosts)
REQUEST = 256 * MI                 # memory request of the reclaimed pod (no NUMA binding: spread over every NUMA node)
FLOOR_BYTES, FLOOR_RATIO = 1 * GI, 0.05
MIN_CRITICAL_WATERMARK = 4 * GI    # memory guard default (--memory-advisor-min-critical-watermark)


def unusable():
    """None when the test can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (writes real cgroup v1 memory limits)"
    if own_memory_cgroup() is None or not os.path.isdir(MEMORY_ROOT) or not os.access(MEMORY_ROOT, os.W_OK):
        return "needs a writable cgroup v1 memory hierarchy at %s" % MEMORY_ROOT
    mode = nodeinfo.gather(SysFS("/"))["cgroup"]["mode"]
    if mode not in ("v1", "hybrid"):
        return "cgroup mode is %s: the v1 memory hierarchy is not the one the agent would use" % mode
    return None


REASON = unusable()
pytestmark = [pytest.mark.root, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


def page(value):
    return int(value) // PAGE * PAGE


class HostFS(SysFS):
    """The real kernel, except ``/var/lib/katalyst`` and the files named in ``overlay``: those live under ``directory``."""

    def __init__(self, directory):
        super().__init__("/")
        self.directory = directory
        self.overlay = set()
        self.pass_read = {}

    def path(self, kernel_path):
        if kernel_path in self.overlay or (kernel_path + "/").startswith("/var/lib/katalyst/"):
            return os.path.join(self.directory, kernel_path.lstrip("/"))
        return super().path(kernel_path)

    def set_meminfo(self, numa, total_bytes, free_bytes):
        kernel_path = "/sys/devices/system/node/node%d/meminfo" % numa
        self.overlay.add(kernel_path)
        kib, free = total_bytes // 1024, free_bytes // 1024
        os.makedirs(os.path.dirname(self.path(kernel_path)), exist_ok=True)
        with open(self.path(kernel_path), "w") as handle:
            handle.write("".join("Node %d %-15s %8d kB\n" % (numa, name + ":", value)
                                 for name, value in (("MemTotal", kib), ("MemFree", free), ("MemUsed", kib - free))))

    def real_meminfo(self):
        self.overlay.clear()

    def begin_pass(self):
        self.pass_read = {}

    def read_text(self, kernel_path, default=None):
        text = super().read_text(kernel_path, default)
        # what the agent based its pass on: the host moves on between two readings, and the pass takes a NUMA node's
        # MemFree from its first reading (nodeinfo.gather) while a later check (require_numa_memory) reads the file again
        self.pass_read.setdefault(kernel_path, text)
        return text

    def meminfo_read(self, numas):
        """``{numa: {"MemTotal", "MemFree", ...}}`` (bytes) as the agent's last pass read them."""
        return {n: nodeinfo.parse_node_meminfo(self.pass_read["/sys/devices/system/node/node%d/meminfo" % n]) for n in numas}

    def usage_read(self, root, numas):
        """The guard's ``mem.total.numa.cgroup`` readings as the agent's last pass read them: ``{"root": {numa: bytes}, numa: {...}}``."""
        def parse(cgroup):
            text = self.pass_read["%s%s%s/memory.numa_stat" % (MEMORY_ROOT, root, cgroup)]
            return parse_numa_total(text.split("\n")[0], numas)
        return {"root": parse(""), **{n: parse("-%d" % n) for n in numas}}


class HostAgent(Agent):
    """The agent with a chosen SysFS and pod list; remembers what each loop applied."""

    def __init__(self, config_path, fs, pods):
        super().__init__(config_path)
        self.host_fs, self.host_pods, self.applied = fs, pods, {}

    @property
    def sysfs(self):
        return self.host_fs

    def node_pods(self):
        return self.host_pods

    def record(self, loop, applied):
        self.applied[loop] = list(applied)
        super().record(loop, applied)

    def provision(self):
        self.host_fs.begin_pass()
        self.converge_memory_provision()
        return self.applied.pop("memory_provision")


RECLAIMED_POD = {
    "metadata": {"name": "batch", "namespace": "default", "uid": "5eb1f2a8-0000-4000-8000-00000000b47c",
                 "annotations": {"katalyst.kubewharf.io/qos_level": "reclaimed_cores"}},
    "spec": {"containers": [{"name": "main", "resources": {"requests": {"memory": "%dMi" % (REQUEST // MI)}}}]},
    "status": {"phase": "Running", "qosClass": "BestEffort"},
}


@pytest.fixture
def host(tmp_path):
    controllers = ["memory"] + [c for c in ("cpu", "cpuset") if os.access("/sys/fs/cgroup/%s" % c, os.W_OK)]
    prefix = "%s/katalyst-memprov-%d" % (own_memory_cgroup().rstrip("/"), os.getpid())
    created, holders = [], []
    try:
        for controller in controllers:         # the kubelet's part: <prefix>/kubepods/besteffort
            make_cgroup_path(controller, prefix + "/kubepods/besteffort", created)
        fs = HostFS(str(tmp_path / "overlay"))
        config = {"node_name": "memprov-host", "sysroot": "/", "cgroup_root": prefix, "reclaim_root": prefix + "/kubepods/besteffort",
                  "memory_provision_enabled": True, "reserved_memory_for_allocate": str(RESERVED),
                  "memory_provision_floor": str(FLOOR_BYTES), "memory_provision_floor_ratio": FLOOR_RATIO}
        config_path = tmp_path / "agent.yaml"
        config_path.write_text(json.dumps(config))
        agent = HostAgent(str(config_path), fs, [RECLAIMED_POD])
        facts = nodeinfo.gather(fs)
        agent.converge_qos_cgroups()           # the agent's part: besteffort-<N> (and the cpu/cpuset settings)
        yield {"agent": agent, "fs": fs, "config_path": config_path, "root": config["reclaim_root"], "holders": holders,
               "numas": [n["id"] for n in facts["numa_nodes"]], "controllers": controllers, "prefix": prefix,
               "totals": {n["id"]: n["memory_bytes"] for n in facts["numa_nodes"]},
               "scale": int(open("/proc/sys/vm/watermark_scale_factor").read().split()[0])}
    finally:
        for process in holders:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        remove_cgroups(controllers, prefix, created)


def limit_path(root, numa=None):
    return "%s%s%s/memory.limit_in_bytes" % (MEMORY_ROOT, root, "" if numa is None else "-%d" % numa)


def read_limit(root, numa=None):
    with open(limit_path(root, numa)) as handle:
        return int(handle.read())


def parse_numa_total(line, numa_ids):
    """The ``total=`` line of ``memory.numa_stat`` in bytes per NUMA node."""
    fields = dict(f.split("=") for f in line.split())
    return {n: int(fields.get("N%d" % n, 0)) * PAGE for n in numa_ids}


def numa_usage(root, numa_ids, numa=None):
    """``memory.numa_stat`` ``total=`` of a reclaimed cgroup, in bytes per NUMA node (the guard's mem.total.numa.cgroup)."""
    with open("%s%s%s/memory.numa_stat" % (MEMORY_ROOT, root, "" if numa is None else "-%d" % numa)) as handle:
        return parse_numa_total(handle.readline(), numa_ids)


def expected_limits(env, frees, guard=None, totals=None):
    """Node spec §3.1 + our floor (+ §3.4 when ``guard`` = {"root": {numa: used}, numa: {numa: used}}): what the files must hold."""
    numas, totals, scale = env["numas"], totals or env["totals"], env["scale"]
    count = len(numas)
    watermark_avg = int(sum(totals[n] for n in numas) * 2 * scale / 10000) // count
    limits, floors, headroom = {}, {}, {}
    for numa in numas:
        provision = min(max(frees[numa] + REQUEST // count - RESERVED // count - watermark_avg, 0), totals[numa])
        floors[numa] = min(totals[numa], max(FLOOR_BYTES, int(totals[numa] * FLOOR_RATIO), REQUEST // count))
        critical = max(float(MIN_CRITICAL_WATERMARK), float(totals[numa]) * scale / 10000)
        headroom[numa] = max(float(frees[numa]) - critical, 0.0)
        if guard is not None:
            provision = min(provision, int(guard[numa][numa] + headroom[numa]))
        limits[numa] = min(max(provision, floors[numa]), totals[numa])
    root = sum(limits.values())
    if guard is not None:
        root = min(root, sum(int(guard["root"][n] + headroom[n]) for n in numas))
    root = max(root, *floors.values())
    return {"numa": {n: page(v) for n, v in limits.items()}, "root": page(root), "floors": floors}


def written(env):
    return {"numa": {n: read_limit(env["root"], n) for n in env["numas"]}, "root": read_limit(env["root"])}


def node_meminfo(numa):
    with open("/sys/devices/system/node/node%d/meminfo" % numa) as handle:
        return nodeinfo.parse_node_meminfo(handle.read())


def set_frees(env, frees):
    """Write the readings; ``frees`` is truncated to what meminfo can say (whole kB), as the agent will read it."""
    for numa in env["numas"]:
        frees[numa] = frees[numa] // 1024 * 1024
        env["fs"].set_meminfo(numa, env["totals"][numa], frees[numa])


def targets(applied):
    return sorted(c.target for c in applied if c.kind == "cgroup_file")


def test_provision_limits_on_real_cgroups_follow_readings_with_a_floor(host):
    env, agent = host, host["agent"]
    root, numas = env["root"], env["numas"]
    for numa in numas:        # the QoS cgroup loop built the per-NUMA reclaimed cgroups on the real hierarchies
        for controller in env["controllers"]:
            assert os.path.isdir("/sys/fs/cgroup/%s%s-%d" % (controller, root, numa))
        if "cpuset" in env["controllers"]:
            assert open("/sys/fs/cgroup/cpuset%s-%d/cpuset.mems" % (root, numa)).read().strip() == str(numa)
    record_path = os.path.join(env["fs"].directory, "var/lib/katalyst/managed-cgroups.json")
    assert "%s-%d" % (root, numas[0]) in open(record_path).read()      # the agent's record went to the overlay, not the host
    before_limits = written(env)
    assert all(v > 1 << 60 for v in before_limits["numa"].values())      # fresh cgroups: unlimited

    # 1. the host's own readings (guard on, nothing in the reclaimed cgroups yet). Free memory moves under other work between
    #    any two readings (by hundreds of MiB on a loaded machine), so the expectation comes from the readings of the pass.
    applied = agent.provision()
    assert targets(applied) == sorted([limit_path(root)] + [limit_path(root, n) for n in numas])
    assert not env["fs"].overlay                                       # nothing overlaid: the kernel's own files were read
    read = env["fs"].meminfo_read(numas)
    for numa in numas:
        assert 0 < read[numa]["MemFree"] <= read[numa]["MemTotal"] == node_meminfo(numa)["MemTotal"]
    want = expected_limits(env, {n: read[n]["MemFree"] for n in numas}, env["fs"].usage_read(root, numas),
                           totals={n: read[n]["MemTotal"] for n in numas})
    real = written(env)
    assert real == {"numa": want["numa"], "root": want["root"]}
    assert real["numa"] == {n: page(agent.numa.last_limits["numa"][n]) for n in numas}
    assert real["root"] == page(agent.numa.last_limits["root"])

    # 2. canonical provision (guard off): free + request share - reserve share - watermark share, page-aligned
    agent.config["memory_guard_enabled"] = False
    frees = {n: env["totals"][n] * 3 // 4 for n in numas}
    set_frees(env, frees)
    want = expected_limits(env, frees)
    assert all(want["numa"][n] > want["floors"][n] for n in numas)      # above the floor: the provision itself is written
    applied = agent.provision()
    assert written(env) == {"numa": want["numa"], "root": want["root"]}
    assert agent.provision() == []                                      # same readings: nothing is written again

    # 3. usage moves: NUMA <first> loses half its free memory -> its limit (and the root's) drops by as much
    first = numas[0]
    frees[first] //= 2
    set_frees(env, frees)
    lower = expected_limits(env, frees)
    applied = agent.provision()
    assert limit_path(root, first) in targets(applied) and limit_path(root) in targets(applied)
    assert written(env) == {"numa": lower["numa"], "root": lower["root"]}
    assert lower["numa"][first] < want["numa"][first]
    assert all(lower["numa"][n] == want["numa"][n] for n in numas[1:])

    # 4. a spike of online memory: 64Mi free leaves no provision, the floor keeps reclaimed pods running
    frees[first] = 64 * MI
    set_frees(env, frees)
    spike = expected_limits(env, frees)
    applied = agent.provision()
    assert read_limit(root, first) == page(spike["floors"][first]) == spike["numa"][first]
    assert page(spike["floors"][first]) >= page(max(FLOOR_BYTES, int(env["totals"][first] * FLOOR_RATIO)))
    assert written(env)["root"] == spike["root"]
    assert agent.provision() == []

    # 5. recovery: back to the provision
    frees[first] = env["totals"][first] * 3 // 4
    set_frees(env, frees)
    agent.provision()
    assert written(env) == {"numa": want["numa"], "root": want["root"]}
    assert agent.provision() == []
    record = json.load(open(record_path))
    assert record["original"][limit_path(root, first)] == str(before_limits["numa"][first])     # what state=absent would restore


def start_holder(env, numa, size_mib):
    """A process holding ``size_mib`` of anonymous memory in ``besteffort-<numa>`` (real usage the guard reads)."""
    procs = "%s%s-%d/cgroup.procs" % (MEMORY_ROOT, env["root"], numa)

    def enter():
        with open(procs, "w") as handle:
            handle.write(str(os.getpid()))

    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(size_mib), "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, preexec_fn=enter)  # pylint: disable=subprocess-popen-preexec-fn
    env["holders"].append(process)
    assert process.stdout.readline().strip() == "ready"
    return process


def settle(env, agent):
    """Provision passes until the guard's real usage reading was the same before and after a pass; returns that usage."""
    numas, root = env["numas"], env["root"]
    for _attempt in range(10):
        usage = {"root": numa_usage(root, numas), **{n: numa_usage(root, numas, n) for n in numas}}
        agent.provision()
        if usage == {"root": numa_usage(root, numas), **{n: numa_usage(root, numas, n) for n in numas}}:
            return usage
        time.sleep(0.2)
    raise AssertionError("the reclaimed cgroups' memory usage did not settle")


def test_memory_guard_follows_real_cgroup_usage(host):
    env, agent = host, host["agent"]
    numas = env["numas"]
    first = numas[0]
    # The NUMA sizes are the test's, not the host's: hosts report anything from ~4 GiB (node0 of a 24 GiB VM here) to far more,
    # and on a ~5 GiB one the idle limit sat on its 1 GiB floor, so it could not grow by the holder's size. With 16 GiB per
    # NUMA and 2 GiB free above the 4 GiB critical watermark, the guard (used + 2 GiB) is always between floor and provision.
    env["totals"] = {n: 16 * GI for n in numas}
    frees = {n: MIN_CRITICAL_WATERMARK + 2 * GI for n in numas}
    set_frees(env, frees)
    usage = settle(env, agent)
    idle = expected_limits(env, frees, usage)
    assert written(env) == {"numa": idle["numa"], "root": idle["root"]}
    provision_only = expected_limits(env, frees)
    assert all(page(idle["floors"][n]) < idle["numa"][n] < provision_only["numa"][n] for n in numas)   # the guard is what limits

    start_holder(env, first, 96)
    usage = settle(env, agent)
    assert usage[first][first] >= 96 * MI                      # real pages of the holder, on the NUMA node it runs on
    busy = expected_limits(env, frees, usage)
    assert written(env) == {"numa": busy["numa"], "root": busy["root"]}
    assert busy["numa"][first] - idle["numa"][first] >= 96 * MI        # the limit grew with what the cgroup really uses
    assert agent.provision() == []

    big = start_holder(env, first, 192)
    usage = settle(env, agent)
    more = expected_limits(env, frees, usage)
    assert written(env) == {"numa": more["numa"], "root": more["root"]}
    assert more["numa"][first] >= busy["numa"][first] + 192 * MI or more["numa"][first] == page(env["totals"][first])

    big.kill()
    big.wait(10)
    usage = settle(env, agent)
    after = expected_limits(env, frees, usage)
    assert written(env) == {"numa": after["numa"], "root": after["root"]}
    assert after["numa"][first] < more["numa"][first]          # the holder's memory is gone, so is that part of the limit
    assert agent.provision() == []
