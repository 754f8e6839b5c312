"""katalyst-controller wiring: a pass waits for its informers' caches instead of being lost."""

import json
import threading

from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import controller as controller_module


class CountingReconciler:
    informers = ["nodes", "nodeovercommitconfigs"]
    period_seconds = 3600

    def __init__(self, _context):
        self.passes = 0

    def reconcile_all(self):
        self.passes += 1


def test_a_pass_before_the_caches_sync_waits_for_them_and_then_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(controller_module.RECONCILERS, "overcommit", CountingReconciler)
    config = tmp_path / "controller.yaml"
    config.write_text(json.dumps({"controllers": ["overcommit"], "leader_election": False, "port": 0}))
    ctl = controller_module.Controller(str(config), kube_api_client=client.ApiClient()).build()
    reconciler = ctl.reconcilers["overcommit"]
    # the first event of an initial list triggers a pass while the other cache is still empty
    worker = threading.Thread(target=ctl.loops["overcommit"].run_once)
    ctl.informers["nodes"].synced.set()
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and reconciler.passes == 0       # held, not skipped
    ctl.informers["nodeovercommitconfigs"].synced.set()       # an empty list: no event will follow
    worker.join(10)
    assert not worker.is_alive() and reconciler.passes == 1


def test_a_held_pass_ends_when_the_daemon_stops(tmp_path, monkeypatch):
    monkeypatch.setitem(controller_module.RECONCILERS, "overcommit", CountingReconciler)
    config = tmp_path / "controller.yaml"
    config.write_text(json.dumps({"controllers": ["overcommit"], "leader_election": False, "port": 0}))
    ctl = controller_module.Controller(str(config), kube_api_client=client.ApiClient()).build()
    worker = threading.Thread(target=ctl.loops["overcommit"].run_once)
    worker.start()
    ctl.daemon.stop()
    worker.join(10)
    assert not worker.is_alive() and ctl.reconcilers["overcommit"].passes == 0
