"""kube-apiserver and etcd SIGKILLed under a running katalyst-controller, on the real control plane (the pinned release).

One TideNodePool over six fake nodes (kept Ready by sandbox.kube.fakenodes); each round takes one node out of the pool
and puts it back (its selector label) and at once kills kube-apiserver (even rounds) or etcd (odd rounds) with SIGKILL,
then brings it back as a user does (`python -m sandbox.kube.cluster up`). A round survives when the controller process
never exited, it reconciles the change (its informers reconnected): the node that came back gets a role, every node of
the pool its pool and role labels (none lost) and the pool's status lists each of them once; and it wrote no node
more often than the round changed nodes (no duplicate flips after a reconnect).
"""

import os
import re
import signal
import time

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from sandbox.kube import cluster as kube_cluster
from tests.integration.realcluster import cluster_cli, needs_build, wait_for
from tests.integration.test_real_tide_lease_kubectl import (Replica, drop_pool, ensure_crds, fake_node_names, fixture_plane,  # noqa: F401 pylint: disable=unused-import
                                                           label_nodes, pool_body)

from .conftest import record, sized

kubernetes = pytest.importorskip("kubernetes")

pytestmark = [pytest.mark.slow, needs_build]

FIGURE = "kube-apiserver / etcd SIGKILLed under a running controller (real control plane)"
POOL = "restart-pool"
SELECTOR = "restarts"


def pool_marks(plane, names):
    """Per node: its tide labels and taints (what the controller writes)."""
    marks = {}
    for node in plane.core.list_node().items:
        if node.metadata.name in names:
            labels = {k: v for k, v in (node.metadata.labels or {}).items() if k.startswith(tide.GROUP)}
            taints = sorted((t.key, t.effect) for t in node.spec.taints or [] if t.key.startswith(tide.GROUP))
            marks[node.metadata.name] = (labels, taints)
    return marks


def converged(plane, members, others):
    """The pool's ``members`` each carry the pool and a role; ``others`` carry no tide mark; the status lists the members once."""
    marks = pool_marks(plane, members | others)
    pool = plane.custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, POOL)
    status = pool.get("status") or {}
    listed = (status.get("reserveNodes", {}).get("onlineNodes") or []) + (status.get("reserveNodes", {}).get("offlineNodes") or []) \
        + (status.get("tideNodes", {}).get("nodes") or [])
    return (all(marks[name][0].get(tide.LABEL_NODE_POOL) == POOL and marks[name][0].get(tide.LABEL_NODE_TYPE) for name in members)
            and all(marks[name] == ({}, []) for name in others)
            and sorted(listed) == sorted(members) and status.get("observedGeneration") == pool["metadata"]["generation"])


def node_writes_of(controller):
    """The controller's node writes so far (katalyst_tide_api_writes_total{kind="node"}; pool and status writes apart)."""
    found = re.search(r'^katalyst_tide_api_writes_total\{kind="node"\} ([0-9.e+-]+)$', controller.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


def strip_marks(plane, name):
    node = plane.core.read_node(name)
    labels = {key: None for key in node.metadata.labels or {} if key.startswith(tide.GROUP)}
    taints = [t for t in node.spec.taints or [] if not t.key.startswith(tide.GROUP)]
    plane.core.patch_node(name, {"metadata": {"labels": labels}, "spec": {"taints": taints or None}})


def kill_component(state, name):
    process = kube_cluster.recorded(str(state), name)
    assert kube_cluster.alive(process), "%s does not run" % name
    os.kill(process["pid"], signal.SIGKILL)
    wait_for("%s gone" % name, lambda: not kube_cluster.alive(process), timeout=30, interval=0.05)


def test_controller_survives_apiserver_and_etcd_kills(plane, capsys):  # pylint: disable=too-many-locals
    ensure_crds(plane)
    names = fake_node_names()
    label_nodes(plane, names, SELECTOR)
    controller = Replica(plane, "restarts", tide={"period_seconds": 2})
    members = set(names)
    figures = []
    try:
        plane.custom.create_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, pool_body(POOL, SELECTOR, {"online": 1, "offline": 1}))
        wait_for("the first reconcile", lambda: converged(plane, members, set()))
        for index in range(sized(5, 2)):
            moved = names[index % len(names)]
            victim = "kube-apiserver" if index % 2 == 0 else "etcd"
            # Before the round: the node leaves the pool as an operator takes it out (the controller keeps the marks of a
            # node its pool no longer selects; they are the operator's to remove).
            label_nodes(plane, [moved], None)
            strip_marks(plane, moved)
            wait_for("%s out of the pool's status" % moved, lambda: converged(plane, members - {moved}, {moved}))
            before = pool_marks(plane, set(names))
            writes_before = node_writes_of(controller)
            label_nodes(plane, [moved], SELECTOR)       # the round: it comes back, and the API goes down at once
            started = time.monotonic()
            kill_component(plane.state, victim)
            cluster_cli(plane.state, "up")               # starts what is missing, waits until all are healthy
            back = time.monotonic() - started
            try:
                wait_for("%s back in the pool reconciled after the %s kill" % (moved, victim), lambda: converged(plane, members, set()))
            except AssertionError as timeout:
                raise AssertionError("%s; nodes: %s; the controller's log ends: %s"
                                     % (timeout, pool_marks(plane, set(names)), controller.log_path.read_text()[-4000:])) from None
            converge = time.monotonic() - started
            after = pool_marks(plane, set(names))
            changed = sum(before[name] != after[name] for name in names)
            node_writes = node_writes_of(controller) - writes_before
            alive = controller.process.poll() is None
            survived = alive and node_writes <= changed
            outcome = "%s killed: back %.1fs, converged %.1fs, %d nodes changed, %d writes" % (victim, back, converge, changed, node_writes)
            record(FIGURE, outcome if survived else "LOST: " + outcome + (" (controller exited)" if not alive else ""), expected=survived)
            figures.append(outcome)
            assert alive, "the controller exited after the %s kill: %s" % (victim, controller.log_path.read_text()[-3000:])
            assert node_writes <= changed, "more writes than changed nodes (%s): %s" % (outcome, controller.log_path.read_text()[-3000:])
        with capsys.disabled():
            print("\n[apiserver/etcd restarts] " + "; ".join(figures))
    finally:
        controller.kill_if_running()
        drop_pool(plane, POOL)
        label_nodes(plane, names, None)
        for name in names:
            plane.core.patch_node(name, {"spec": {"taints": None}})
