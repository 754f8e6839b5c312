"""The sandbox cluster process: one sandbox kubelet per node plus the sandbox scheduler.

Run by `python -m sandbox up` in the background as `python -m sandbox.cluster --state-dir DIR`;
SIGTERM stops it cleanly. With `--without-scheduler` (the real control plane: its kube-scheduler binds the pods)
it runs the kubelets only.
"""

import argparse
import logging
import os
import signal
import sys
import threading

import yaml

from sandbox.kubelet import SandboxKubelet
from sandbox.scheduler import SandboxScheduler, load_extenders

LOG = logging.getLogger("sandbox.cluster")


def load_scheduler_config(path):
    """The `extenders` of a KubeSchedulerConfiguration file, or none when the file is absent."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def config_stamp(path):
    """What tells a changed scheduler config file: (mtime, size), or None when there is none."""
    try:
        status = os.stat(path) if path else None
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size) if status else None


def run(state_dir, node_names, kubeconfig, heartbeat_seconds=5.0, scheduler_config=None, with_scheduler=True):
    from kubernetes import client, config  # pylint: disable=import-outside-toplevel
    api_client = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api_client)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for name in node_names:
        sysroot = os.path.join(state_dir, "nodes", name, "sysroot")
        SandboxKubelet(core, name, sysroot, heartbeat_seconds=heartbeat_seconds).start(stop)
    if not with_scheduler:
        LOG.info("sandbox kubelets running: %d, no scheduler (the cluster's own kube-scheduler binds the pods)", len(node_names))
        while not stop.wait(1.0):   # a timed wait: the SIGTERM handler runs in this thread
            pass
        LOG.info("sandbox kubelets stopped")
        return
    extenders = load_extenders(load_scheduler_config(scheduler_config))
    scheduler = SandboxScheduler(core, extenders=extenders)
    scheduler.start(stop)
    LOG.info("sandbox cluster running: %d kubelets, scheduler with %d extender(s)", len(node_names), len(extenders))
    stamp = config_stamp(scheduler_config)
    while not stop.wait(1.0):
        # the scheduler_extender role writes the KubeSchedulerConfiguration here: pick up its extenders
        if config_stamp(scheduler_config) != stamp:
            stamp = config_stamp(scheduler_config)
            try:
                scheduler.extenders = load_extenders(load_scheduler_config(scheduler_config))
            except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
                LOG.warning("scheduler config %s not loaded: %s", scheduler_config, exc)
                continue
            LOG.info("scheduler config reloaded: %d extender(s)", len(scheduler.extenders))
            scheduler.wakeup.set()
    LOG.info("sandbox cluster stopped")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sandbox.cluster")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", action="append", required=True, dest="nodes")
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0)
    parser.add_argument("--scheduler-config", default=None)
    parser.add_argument("--without-scheduler", action="store_true", help="kubelets only: a real kube-scheduler binds the pods")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(args.state_dir, args.nodes, args.kubeconfig, args.heartbeat_seconds, args.scheduler_config,
        with_scheduler=not args.without_scheduler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
