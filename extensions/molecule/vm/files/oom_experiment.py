"""Real OOM kills on the VM's cgroup v2, for the molecule vm scenario (run with the VM's python3).

    oom_experiment.py start   three "pods" under a 96 MiB memory domain, a process holding memory in each;
                              prints {"pods": {name: {"pid", "cgroup", "cgroup_id"}}}
    oom_experiment.py grow    the system pod's process grows until the kernel kills; prints the kill order
                              (from the kernel log) and each process's oom_score_adj before the kills
    oom_experiment.py clean   removes the cgroups
"""
import json
import os
import re
import subprocess
import sys
import time

ROOT = "/sys/fs/cgroup/katalyst-oomtest"
STATE = "/run/katalyst-oomtest.json"
GROW_FLAG = "/run/katalyst-oomtest.grow"
PODS = [("batch", 8, 0), ("web", 16, 0), ("system", 40, 300)]
HOLDER = r"""
import os, sys, time
block = bytearray(int(sys.argv[1]) << 20)
block[::4096] = b"x" * len(block[::4096])
open(sys.argv[3], "w").close()
while not os.path.exists(sys.argv[4]):
    time.sleep(0.01)
chunks = []
for _ in range(int(sys.argv[2])):
    chunk = bytearray(1 << 20)
    chunk[::4096] = b"y" * 256
    chunks.append(chunk)
    time.sleep(0.005)
time.sleep(600)
"""


def write(path, value):
    with open(path, "w") as handle:
        handle.write(value)


def start():
    os.makedirs(ROOT, exist_ok=True)
    write("/sys/fs/cgroup/cgroup.subtree_control", "+memory")
    write(ROOT + "/memory.max", str(96 << 20))
    write(ROOT + "/memory.swap.max", "0")
    write(ROOT + "/cgroup.subtree_control", "+memory")
    pods = {}
    for name, size, grow in PODS:
        cgroup = "%s/%s" % (ROOT, name)
        os.makedirs(cgroup, exist_ok=True)
        ready = "/run/katalyst-oomtest.%s.ready" % name
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(size), str(grow), ready, GROW_FLAG], start_new_session=True,
                                   preexec_fn=lambda c=cgroup: write(c + "/cgroup.procs", str(os.getpid())))
        while not os.path.exists(ready):
            time.sleep(0.05)
        pods[name] = {"pid": process.pid, "cgroup": cgroup, "cgroup_id": os.stat(cgroup).st_ino}
    write(STATE, json.dumps(pods))
    print(json.dumps({"pods": pods}))


def grow():
    pods = json.load(open(STATE))
    adjs = {name: int(open("/proc/%d/oom_score_adj" % pod["pid"]).read()) for name, pod in pods.items()}
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(kmsg, 0, os.SEEK_END)
    write(GROW_FLAG, "")
    deadline = time.time() + 120
    while time.time() < deadline and os.path.exists("/proc/%d" % pods["system"]["pid"]):
        time.sleep(0.1)
    time.sleep(1)
    killed = []
    while True:
        try:
            record = os.read(kmsg, 8192).decode(errors="replace")
        except BlockingIOError:
            break
        found = re.search(r"Killed process (\d+)", record)
        if found:
            killed.append(int(found.group(1)))
    by_pid = {pod["pid"]: name for name, pod in pods.items()}
    print(json.dumps({"order": [by_pid[pid] for pid in killed if pid in by_pid], "oom_score_adj": adjs}))


def clean():
    for name, _size, _grow in PODS:
        cgroup = "%s/%s" % (ROOT, name)
        if os.path.isdir(cgroup):
            for pid in open(cgroup + "/cgroup.procs").read().split():
                os.kill(int(pid), 9)
    time.sleep(0.5)
    for name, _size, _grow in PODS:
        if os.path.isdir("%s/%s" % (ROOT, name)):
            os.rmdir("%s/%s" % (ROOT, name))
    if os.path.isdir(ROOT):
        os.rmdir(ROOT)
    for path in [STATE, GROW_FLAG] + ["/run/katalyst-oomtest.%s.ready" % n for n, _s, _g in PODS]:
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    {"start": start, "grow": grow, "clean": clean}[sys.argv[1]]()
