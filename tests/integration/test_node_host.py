"""The node modules on this machine's real kernel: cgroup v1 hierarchies and net.* sysctls in a netns.

The cgroups are created under the test process's own memory cgroup path (mirrored in the cpu and
cpuset hierarchies) and removed afterwards; sysctls are written inside a fresh network and mount
namespace, so the host's values and /etc are never touched.
"""

import os
import shutil
import subprocess

import pytest

from tests.integration.ansible_runner import REPO, run_playbook
from tests.integration.hostcgroups import make_cgroup_path, own_memory_cgroup, remove_cgroups

V1 = ("cpu", "cpuset", "memory")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real cgroups and namespaces)")


@pytest.fixture
def v1_base():
    missing = [c for c in V1 if not os.path.isdir("/sys/fs/cgroup/%s" % c) or not os.access("/sys/fs/cgroup/%s" % c, os.W_OK)]
    if missing or own_memory_cgroup() is None:
        pytest.skip("needs writable cgroup v1 hierarchies for %s" % ", ".join(V1))
    base = "%s/katalyst-test-%d" % (own_memory_cgroup().rstrip("/"), os.getpid())
    created = []
    for controller in V1:
        make_cgroup_path(controller, base + "/besteffort", created)
    yield base
    remove_cgroups(V1, base, created)


PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: cgroups
      katalyst.colocation.qos_cgroups:
        reclaim_root: "{{ root }}"
        memory_limit_bytes: 268435456
        state: "{{ st | default('present') }}"
"""


def test_qos_cgroups_on_real_v1_hierarchies(v1_base, tmp_path):
    root = v1_base + "/besteffort"
    env = {"HOME": str(tmp_path)}
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check"], {"root": root}, env=env)
    assert rc == 0 and tasks["cgroups"]["changed"], out
    assert not os.path.isdir("/sys/fs/cgroup/cpuset%s-0" % root)
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"root": root}, env=env)
    assert rc == 0 and tasks["cgroups"]["changed"], out
    assert open("/sys/fs/cgroup/cpuset%s-0/cpuset.mems" % root).read().strip() == "0"
    assert open("/sys/fs/cgroup/memory%s/memory.limit_in_bytes" % root).read().strip() == "268435456"
    assert open("/sys/fs/cgroup/cpu%s/cpu.shares" % root).read().strip() == "2"
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"root": root}, env=env)
    assert rc == 0 and not tasks["cgroups"]["changed"], out
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"root": root, "st": "absent"}, env=env)
    assert rc == 0 and tasks["cgroups"]["changed"], out
    assert not os.path.isdir("/sys/fs/cgroup/cpuset%s-0" % root)
    assert open("/sys/fs/cgroup/cpu%s/cpu.shares" % root).read().strip() == "1024"


def test_qos_cgroups_missing_root_is_a_clear_error(tmp_path):
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"root": "/no-such-root-%d" % os.getpid()})
    assert rc != 0 and "does not exist" in tasks["cgroups"]["msg"], out


SYSCTL_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: sysctls
      katalyst.colocation.sysctls:
        settings: {net.core.somaxconn: 2048, net.ipv4.ip_forward: 1}
    - name: again
      katalyst.colocation.sysctls:
        settings: {net.core.somaxconn: 2048, net.ipv4.ip_forward: 1}
    - name: read
      ansible.builtin.command: cat /proc/sys/net/core/somaxconn /etc/sysctl.d/90-katalyst.conf
      changed_when: false
"""


def test_net_sysctls_in_a_network_namespace(tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    host_value = open("/proc/sys/net/core/somaxconn").read().strip()
    playbook = tmp_path / "sysctl.yml"
    playbook.write_text(SYSCTL_PLAY)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO),
               ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", HOME=str(tmp_path))
    script = ("mount -t tmpfs none /etc/sysctl.d && mount -t tmpfs none /var/lib && "
              "exec %s/.venv/bin/ansible-playbook -i localhost, -c local -e ansible_python_interpreter=%s/.venv/bin/python %s"
              % (REPO, REPO, playbook))
    result = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"changed": true' in result.stdout.split('"again"')[0]
    assert "2048" in result.stdout and "net.core.somaxconn = 2048" in result.stdout
    again = result.stdout.split('"again"')[1].split('"read"')[0]
    assert '"changed": false' in again
    assert open("/proc/sys/net/core/somaxconn").read().strip() == host_value      # the host is untouched
    assert not os.path.exists("/etc/sysctl.d/90-katalyst.conf")
