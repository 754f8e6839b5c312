"""What the OOM benchmarks (oom_apply.py, agent_idle.py) share: their common options, the node they measure (the API
emulator with the node in it, a private OOM domain for the pods' cgroups) and the agent's configuration on it.

Not a benchmark: run on its own (`make benchmarks` runs every script here) it does nothing.
"""

import argparse
import os
import sys
import tempfile

# the benchmarks put the checkout on sys.path before importing this; `make benchmarks` runs this file alone too
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.integration import oomlib  # noqa: E402  pylint: disable=wrong-import-position

QOS = "katalyst.kubewharf.io/qos_level"


def options(window, window_help):
    """The node's size (--pods pods of --containers containers) and the --window of seconds measured."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--containers", type=int, default=2)
    parser.add_argument("--window", type=float, default=window, help=window_help)
    return parser


def start_node(benchmark, label, node_name):
    """(tmp dir, emulator server, kubeconfig path, CoreV1Api, oomlib.Domain) named after ``label``, or None, said as
    ``benchmark`` skipped, where this host cannot run real OOM tests."""
    reason = oomlib.usable()
    if reason:
        print("%s: skipped (%s)" % (benchmark, reason))
        return None
    tmp = tempfile.mkdtemp(prefix=label + "-")
    server, kubeconfig, core = oomlib.emulator_with_node(tmp, node_name)
    return tmp, server, kubeconfig, core, oomlib.Domain("katalyst-%s-%d" % (label, os.getpid()), 8 << 30)


def write_agent_config(path, node_name, kubeconfig, domain, extra=""):
    """An agent for ``node_name`` whose cgroup root is ``domain``, qos_cgroups off, plain-text logs (the benchmarks read
    the port it listens on there); ``extra``: more `, "key": value` pairs."""
    with open(path, "w") as handle:
        handle.write('{"node_name": "%s", "kubeconfig": "%s", "port": 0, "cgroup_root": "%s", "qos_cgroups_enabled": false,'
                     ' "json_logs": false%s}' % (node_name, kubeconfig, domain.path[len(oomlib.MEMORY_ROOT):], extra))


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]
