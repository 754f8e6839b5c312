"""Benchmark: the `node` role versus a baseline of generic per-item tasks, on 1, 10 and 50 sandbox nodes.

    python tests/benchmarks/node_converge.py [--nodes 1,10,50] [--forks 20]

For each size it builds fresh sandbox sysroots and times a first run and an idempotent second run of
(a) the collection's `node` role (one module call per feature) and (b) a baseline playbook doing the
same writes with one `ansible.builtin.copy` / `ansible.builtin.lineinfile` task per item, the usual
way (ansible.posix.sysctl cannot write into a sysroot, so the baseline writes the /proc/sys files
with copy, which is the same cost per item). Prints seconds and the idempotent-run ratio.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from sandbox.sysroot import build_sysroot  # noqa: E402  pylint: disable=wrong-import-position

OURS = """
- hosts: all
  gather_facts: false
  roles:
    - role: katalyst.colocation.node
      node_sysroot: "{{ sysroot }}"
      node_tcp_mem_ratio: 20
      node_watermark_scale_factor: 100
      node_sysctls_extra: {vm.swappiness: 10, net.core.somaxconn: 8192}
"""

BASELINE = """
- hosts: all
  gather_facts: false
  vars:
    sysctls:
      net/ipv4/tcp_mem: "1677720\\t2236960\\t3355440"
      vm/watermark_scale_factor: "100"
      vm/swappiness: "10"
      net/core/somaxconn: "8192"
    numa: [0, 1, 2, 3]
    numa_cpus: ["0-3,16-19", "4-7,20-23", "8-11,24-27", "12-15,28-31"]
  tasks:
    - name: One task per sysctl (live value)
      ansible.builtin.copy:
        dest: "{{ sysroot }}/proc/sys/{{ item.key }}"
        content: "{{ item.value }}\\n"
        mode: "0644"
      loop: "{{ sysctls | dict2items }}"
    - name: One task per sysctl (persisted)
      ansible.builtin.lineinfile:
        path: "{{ sysroot }}/etc/sysctl.d/90-baseline.conf"
        regexp: "^{{ item.key | replace('/', '.') }} ="
        line: "{{ item.key | replace('/', '.') }} = {{ item.value | replace('\\t', ' ') }}"
        create: true
        mode: "0644"
      loop: "{{ sysctls | dict2items }}"
    - name: Reclaimed root weight
      ansible.builtin.copy:
        dest: "{{ sysroot }}/sys/fs/cgroup/kubepods/besteffort/cpu.weight"
        content: "1\\n"
        mode: "0644"
    - name: Per-NUMA cgroup directories
      ansible.builtin.file:
        path: "{{ sysroot }}/sys/fs/cgroup/kubepods/besteffort-{{ item }}"
        state: directory
        mode: "0755"
      loop: "{{ numa }}"
    - name: Per-NUMA cpusets
      ansible.builtin.copy:
        dest: "{{ sysroot }}/sys/fs/cgroup/kubepods/besteffort-{{ item }}/cpuset.cpus"
        content: "{{ numa_cpus[item] }}\\n"
        mode: "0644"
      loop: "{{ numa }}"
    - name: Per-NUMA memory nodes
      ansible.builtin.copy:
        dest: "{{ sysroot }}/sys/fs/cgroup/kubepods/besteffort-{{ item }}/cpuset.mems"
        content: "{{ item }}\\n"
        mode: "0644"
      loop: "{{ numa }}"
    - name: Per-NUMA weights
      ansible.builtin.copy:
        dest: "{{ sysroot }}/sys/fs/cgroup/kubepods/besteffort-{{ item }}/cpu.weight"
        content: "1\\n"
        mode: "0644"
      loop: "{{ numa }}"
"""


def run(playbook, inventory, forks):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO),
               ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_CALLBACKS_ENABLED="ansible.posix.timer")
    started = time.monotonic()
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory, "-f", str(forks), playbook],
                            capture_output=True, text=True, env=env, cwd=REPO, check=False)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit("playbook failed:\n" + result.stdout[-3000:] + result.stderr[-2000:])
    changed = sum(int(part.split("=")[1]) for line in result.stdout.splitlines() if "changed=" in line
                  for part in line.split() if part.startswith("changed="))
    return elapsed, changed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", default="1,10,50")
    parser.add_argument("--forks", type=int, default=20)
    args = parser.parse_args()
    print("%6s  %-9s %10s %10s %8s" % ("nodes", "playbook", "first s", "again s", "changed2"))
    for count in [int(n) for n in args.nodes.split(",")]:
        idle = {}
        for label, text in (("node role", OURS), ("baseline", BASELINE)):
            work = tempfile.mkdtemp(prefix="node-bench-")
            try:
                lines = ["[all]"]
                for index in range(count):
                    root = build_sysroot(os.path.join(work, "n%d" % index))
                    lines.append("n%d ansible_connection=local ansible_python_interpreter=%s sysroot=%s" % (index, sys.executable, root))
                inventory = os.path.join(work, "hosts.ini")
                with open(inventory, "w") as handle:
                    handle.write("\n".join(lines) + "\n")
                playbook = os.path.join(work, "play.yml")
                with open(playbook, "w") as handle:
                    handle.write(text)
                first, _changed = run(playbook, inventory, args.forks)
                again, changed_again = run(playbook, inventory, args.forks)
                idle[label] = again
                print("%6d  %-9s %10.2f %10.2f %8d" % (count, label, first, again, changed_again), flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        print("%6d  idempotent run: baseline / node role = %.1fx" % (count, idle["baseline"] / idle["node role"]), flush=True)


if __name__ == "__main__":
    main()
