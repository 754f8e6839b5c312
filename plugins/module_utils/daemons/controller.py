# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""katalyst-controller: the cluster-side reconcilers (tide, and later overcommit, cnr), one leader at a time.

    python -m katalyst_colocation.daemons.controller --config /etc/katalyst/controller.yaml

It keeps informer caches (list + watch + resync) of what the enabled reconcilers read, takes a
``coordination.k8s.io/v1`` Lease (client-go's timings) so only one replica writes, runs each
reconciler as a periodic loop that a relevant watch event also triggers, serves ``/healthz`` and
Prometheus ``/metrics``, re-reads its configuration on SIGHUP and releases the Lease on SIGTERM.

Configuration (YAML): ``controllers: [tide]`` picks reconcilers from ``RECONCILERS``; each
reconciler's options live under its own name (``tide: {period_seconds: 10}``).

Adding a reconciler: write a class with this interface and register a factory in ``RECONCILERS``
(``{"overcommit": OvercommitReconciler}``; a factory takes a ``ControllerContext``)::

    class OvercommitReconciler:
        name = "overcommit"                       # config name, loop name, metrics label
        informers = ("nodes", "nodeovercommitconfigs")   # caches it reads, keys of INFORMERS
        period_seconds = 10.0                     # full pass at least this often (may read context.options)

        def __init__(self, context): ...          # context.kube, .informers[name].items(), .options, .now()
        def reconcile_all(self): ...              # one level-triggered pass over everything; raise on failure
        def wants(self, informer, event_type, obj):   # optional: should this watch event trigger a pass now?
            return True

Reconcilers run only while this replica leads and after their informers have synced; a pass is
never run concurrently with itself. Add an informer to ``INFORMERS`` if a reconciler needs a new kind.
"""

from __future__ import annotations

import datetime
import functools
import logging
import socket
import threading
import uuid

from . import entrypoint, service
from .token_renewal import DEFAULTS as TOKEN_RENEWAL_DEFAULTS, daemon_api_client
from .informer import Informer
from .leader import LeaderElector
from ..kube import KubeClient

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

LOG = logging.getLogger("katalyst.controller")


def _custom_list(group, version, plural):
    def build(api_client):
        from kubernetes import client  # pylint: disable=import-outside-toplevel
        return functools.partial(client.CustomObjectsApi(api_client).list_cluster_custom_object, group, version, plural)
    return build


def _core_list(method):
    def build(api_client):
        from kubernetes import client  # pylint: disable=import-outside-toplevel
        return getattr(client.CoreV1Api(api_client), method)
    return build


# Informer name -> builder(api_client) of the list function (watched through the same function).
INFORMERS = {
    "nodes": _core_list("list_node"),
    "pods": _core_list("list_pod_for_all_namespaces"),
    "tidenodepools": _custom_list("tide.katalyst.kubewharf.io", "v1alpha1", "tidenodepools"),
    "nodeovercommitconfigs": _custom_list("overcommit.katalyst.kubewharf.io", "v1alpha1", "nodeovercommitconfigs"),
    "customnoderesources": _custom_list("node.katalyst.kubewharf.io", "v1alpha1", "customnoderesources"),
}


def _tide_factory(context):
    from .tide_controller import TideReconciler  # pylint: disable=import-outside-toplevel
    return TideReconciler(context)


def _cnr_factory(context):
    from .cnr_controller import CNRReconciler  # pylint: disable=import-outside-toplevel
    return CNRReconciler(context)


def _overcommit_factory(context):
    from .overcommit_controller import OvercommitReconciler  # pylint: disable=import-outside-toplevel
    return OvercommitReconciler(context)


# Reconciler name (as in `controllers:`) -> factory(context).
RECONCILERS = {
    "tide": _tide_factory,
    "cnr": _cnr_factory,
    "overcommit": _overcommit_factory,
}

DEFAULTS = {
    "kubeconfig": "",
    "controllers": ["tide"],
    "listen_address": "127.0.0.1",
    "port": 9317,
    "log_level": "info",
    "json_logs": True,
    "resync_seconds": 300,
    "leader_election": True,
    "lease_name": "katalyst-controller",
    "lease_namespace": "kube-system",
    "identity": "",
    "lease_duration_seconds": 15,
    "renew_deadline_seconds": 10,
    "retry_period_seconds": 2,
}
DEFAULTS.update(TOKEN_RENEWAL_DEFAULTS)


def defaults():
    """The settings the config file may hold: the common ones and one mapping per known reconciler."""
    known = dict(DEFAULTS)
    known.update({name: {} for name in RECONCILERS})
    return known


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


class ControllerContext:
    """What a reconciler gets: the API client wrapper, the shared caches, its options, the clock."""

    def __init__(self, controller, name):
        self._controller = controller
        self.name = name

    @property
    def kube(self):
        return self._controller.kube

    @property
    def informers(self):
        return self._controller.informers

    @property
    def options(self):
        return dict(self._controller.config.get(self.name) or {})

    @property
    def registry(self):
        return self._controller.daemon.registry

    @property
    def config(self):
        return self._controller.config

    def now(self):
        return self._controller.now()


class Controller:
    def __init__(self, config_path, kube_api_client=None, now=utc_now):
        self.config_path = config_path
        self.config = self._load()
        self.daemon = service.Daemon("katalyst-controller")
        self.daemon.on_reload(self.reload)
        self.api_client = kube_api_client
        self.now = now
        self.kube = None
        self.informers = {}
        self.reconcilers = {}
        self.loops = {}
        self.leading = threading.Event()
        self.elector = None
        self.elector_thread = None
        self.metrics = {}
        if prometheus_client is not None:
            self.metrics["leader"] = prometheus_client.Gauge(
                "katalyst_controller_leader", "1 while this replica holds the Lease", registry=self.daemon.registry)

    def _load(self):
        config = service.load_config(self.config_path, defaults())
        controllers = config["controllers"]
        if not isinstance(controllers, list) or not controllers:
            raise ValueError("%s: controllers must be a non-empty list (known: %s)" % (self.config_path, ", ".join(sorted(RECONCILERS))))
        unknown = sorted(set(controllers) - set(RECONCILERS))
        if unknown:
            raise ValueError("%s: unknown controller(s) %s (known: %s)" % (self.config_path, ", ".join(unknown), ", ".join(sorted(RECONCILERS))))
        for name in RECONCILERS:
            if not isinstance(config.get(name) or {}, dict):
                raise ValueError("%s: %s must be a mapping of that controller's options" % (self.config_path, name))
        return config

    def reload(self):
        fresh = self._load()
        if fresh["controllers"] != self.config["controllers"]:
            raise ValueError("controllers cannot change on reload (restart katalyst-controller instead)")
        self.config = fresh
        service.set_log_level(fresh["log_level"])

    # -- wiring -------------------------------------------------------------------------------
    def build(self):
        cfg = self.config
        self.api_client = daemon_api_client(self.daemon, cfg, like=self.api_client)
        # a replica frozen mid-pass past its Lease must not finish that pass over the new leader's writes when it resumes
        self.kube = KubeClient(api_client=self.api_client, on_retry=self.daemon.api_retry_counter("client"), may_write=self.holds_lease)
        for name in cfg["controllers"]:
            reconciler = RECONCILERS[name](ControllerContext(self, name))
            self.reconcilers[name] = reconciler
            self.loops[name] = self.daemon.add_loop(service.Loop(name, reconciler.period_seconds, functools.partial(self._pass, name)))
            for informer_name in reconciler.informers:
                if informer_name not in self.informers:
                    self.informers[informer_name] = Informer(
                        INFORMERS[informer_name](self.api_client), handler=functools.partial(self._on_event, informer_name),
                        resync_seconds=cfg["resync_seconds"], name="controller-%s" % informer_name,
                        on_retry=self.daemon.api_retry_counter("informer"))
        if cfg["leader_election"]:
            from kubernetes import client  # pylint: disable=import-outside-toplevel
            identity = cfg["identity"] or "%s_%s" % (socket.gethostname(), uuid.uuid4().hex[:8])
            self.elector = LeaderElector(client.CoordinationV1Api(self.api_client), cfg["lease_name"], cfg["lease_namespace"], identity,
                                         lease_duration=float(cfg["lease_duration_seconds"]),
                                         renew_deadline=float(cfg["renew_deadline_seconds"]),
                                         retry_period=float(cfg["retry_period_seconds"]),
                                         on_retry=self.daemon.api_retry_counter("leader"))
        else:
            self._set_leading(True)
        return self

    def holds_lease(self):
        """May this replica write now? Always without leader election, else while its Lease is freshly renewed."""
        return self.elector is None or self.elector.holds_lease()

    def _set_leading(self, leading):
        if leading:
            self.leading.set()
            for loop in self.loops.values():
                loop.trigger()
        else:
            self.leading.clear()
        if self.metrics:
            self.metrics["leader"].set(1 if leading else 0)

    def _lead(self, lost):
        """LeaderElector's on_started_leading: reconcile until leadership is lost or we stop."""
        self._set_leading(True)
        lost.wait()
        self._set_leading(False)

    def _on_event(self, informer_name, event_type, obj):
        for name, reconciler in self.reconcilers.items():
            if informer_name not in reconciler.informers:
                continue
            wants = getattr(reconciler, "wants", None)
            if wants is None or wants(informer_name, event_type, obj):
                self.loops[name].trigger()

    def synced(self, names=None):
        return all(self.informers[name].synced.is_set() for name in (names or self.informers))

    def _pass(self, name):
        reconciler = self.reconcilers[name]
        if not self.leading.is_set() or not self._wait_synced(reconciler.informers):
            return
        if not self.holds_lease():
            # frozen past the Lease's duration, or renewals failing: another replica may lead by now
            LOG.warning("%s: pass skipped, the Lease was not renewed within %ss", name, self.elector.renew_deadline)
            return
        reconciler.reconcile_all()

    def _wait_synced(self, names):
        """Hold a pass until its informers' caches are filled; False when the daemon stops first.

        Skipping the pass instead would lose it: the events of an initial list arrive before the cache reports
        synced, and an informer whose list is empty sends none, so nothing might trigger a pass for a whole period.
        """
        for informer_name in names:
            while not self.informers[informer_name].synced.wait(0.2):
                if self.daemon.stop_event.is_set():
                    return False
        return True

    def start_informers(self, stop):
        for informer in self.informers.values():
            informer.start(stop)

    def start(self):
        """Serve /healthz and /metrics, start the informers and the leader election (after build()); returns the port."""
        port = entrypoint.serve_health(self, LOG, "katalyst-controller (%s)" % ", ".join(self.config["controllers"]))
        self.start_informers(self.daemon.stop_event)
        if self.elector is not None:
            self.elector_thread = threading.Thread(target=self.elector.run, args=(self.daemon.stop_event, self._lead), name="leader-election",
                                                   daemon=True)
            self.elector_thread.start()
        return port

    def stop(self):
        """Once the loops have stopped: wait for the elector to release the Lease, stop the informers."""
        if self.elector_thread is not None:
            self.elector_thread.join(timeout=10)     # the elector releases the Lease once stop is set
        for informer in self.informers.values():
            informer.stop()


def main(argv=None):
    return entrypoint.run_daemon("katalyst-controller", Controller, argv, build=Controller.build)


if __name__ == "__main__":
    raise SystemExit(main())
