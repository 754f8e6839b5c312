"""What the role tests share: the one-role plays, a free local port, stopping a daemon under the sandbox's service
stand-in, rendering a role's systemd unit and the check that it is hardened."""

import json
import re
import shutil
import socket
import subprocess
import sys

import pytest

from tests.integration.ansible_runner import REPO, run_playbook

# the unit checks run systemd-analyze (verify when rendering, security for the rating)
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def role_play(role):
    """A play on localhost that runs ``katalyst.colocation.<role>``."""
    return """
- hosts: localhost
  gather_facts: false
  roles:
    - role: katalyst.colocation.%s
""" % role


def unit_play(role):
    """A play on localhost that renders (and verifies) only the systemd unit of ``katalyst.colocation.<role>``."""
    return """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: unit
      ansible.builtin.include_role:
        name: katalyst.colocation.%s
        tasks_from: unit.yml
""" % role


def free_port():
    """A TCP port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_sandbox_service(state_dir, name, timeout=60):
    """Stop the daemon ``name`` that `python -m sandbox service` runs from ``state_dir`` (nothing when it does not run)."""
    subprocess.run([sys.executable, "-m", "sandbox", "service", "--state-dir", str(state_dir), "stop", name],
                   cwd=REPO, capture_output=True, check=False, timeout=timeout)


def render_unit(role, tmp_path, unit_name, **role_vars):
    """Render only the systemd unit ``unit_name`` of ``katalyst.colocation.<role>`` into ``tmp_path``, as for a system
    Python under systemd, with ``role_vars`` on top; the template's validate runs systemd-analyze verify. Returns its path."""
    extra = {role + "_systemd_unit_dir": str(tmp_path), role + "_python_mode": "system", role + "_service_manager": "sandbox",
             role + "_bundle": {"stdout": json.dumps({"version": "x"})}}
    extra.update(role_vars)
    rc, _tasks, out = run_playbook(unit_play(role), tmp_path, [], extra)
    assert rc == 0, out[-3000:]
    return tmp_path / unit_name


def assert_unit_hardened(unit, most_exposed=2.0):
    """``systemd-analyze security --offline`` rates the unit file ``unit`` at ``most_exposed`` or better (printed)."""
    report = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", report.stdout + report.stderr)
    assert match, report.stdout + report.stderr
    print("systemd-analyze security exposure: %s" % match.group(1))
    assert float(match.group(1)) <= most_exposed, report.stdout


def assert_hardened_unit(role, tmp_path, unit_name, lines, **role_vars):
    """The unit ``unit_name`` of ``role`` rendered as render_unit does has every one of ``lines`` and is hardened."""
    unit = render_unit(role, tmp_path, unit_name, **role_vars)
    text = unit.read_text()
    for line in lines:
        assert line in text, line
    assert_unit_hardened(unit)
