# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""An informer: list once, watch from the list's resourceVersion, relist on 410 Gone, resync periodically.

Daemons (and the sandbox's kubelets and scheduler) keep a local cache of the objects they care about
and react to changes without polling the API. Objects are plain JSON dicts.
"""

from __future__ import annotations

import json
import logging
import threading
import time

try:
    from kubernetes import watch as kube_watch
    from kubernetes.client.rest import ApiException
except ImportError:  # pragma: no cover - reported when an informer is built
    kube_watch = None

    class ApiException(Exception):
        status = None

LOG = logging.getLogger(__name__)


def object_key(obj):
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return "%s/%s" % (namespace, meta.get("name")) if namespace else meta.get("name")


class Informer:
    """Keeps ``cache`` (key -> object dict) in sync with the API and calls ``handler(event_type, obj)``.

    ``list_func`` is a kubernetes client list method (``CoreV1Api.list_node``, or a partial of
    ``CustomObjectsApi.list_cluster_custom_object``); ``list_kwargs`` carries selectors.
    Event types: ``ADDED``, ``MODIFIED``, ``DELETED`` and ``SYNC`` (periodic resync of every object).
    """

    def __init__(self, list_func, handler=None, list_kwargs=None, resync_seconds=300.0,
                 watch_timeout_seconds=60, name="informer", clock=time.monotonic, on_retry=None):
        if kube_watch is None:
            raise RuntimeError("the kubernetes Python package is required for informers")
        self.list_func = list_func
        self.handler = handler
        self.list_kwargs = dict(list_kwargs or {})
        self.resync_seconds = resync_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.name = name
        self.clock = clock
        self.cache = {}
        self.lock = threading.RLock()
        self.synced = threading.Event()
        self.resource_version = None
        self.relists = 0
        self.on_retry = on_retry      # on_retry(reason): a daemon counts the lists/watches it starts again after a failure
        self._watch = None

    # -- cache access ------------------------------------------------------------------------
    def items(self):
        with self.lock:
            return list(self.cache.values())

    def get(self, key):
        with self.lock:
            return self.cache.get(key)

    # -- the loop ----------------------------------------------------------------------------
    def _list(self):
        response = self.list_func(_preload_content=False, **self.list_kwargs)
        body = json.loads(response.data)
        items = body.get("items") or []
        kind = (body.get("kind") or "").replace("List", "")
        api_version = body.get("apiVersion")
        fresh = {}
        for item in items:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
            fresh[object_key(item)] = item
        with self.lock:
            old = self.cache
            self.cache = fresh
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion")
        self.relists += 1
        for key, obj in fresh.items():
            self._emit("ADDED" if key not in old else "MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)
        self.synced.set()

    def _emit(self, event_type, obj):
        if self.handler is None:
            return
        try:
            self.handler(event_type, obj)
        except Exception:  # pylint: disable=broad-except
            LOG.exception("%s: handler failed on %s %s", self.name, event_type, object_key(obj))

    def _watch_once(self, stop):
        self._watch = kube_watch.Watch()
        kwargs = dict(self.list_kwargs, resource_version=self.resource_version,
                      timeout_seconds=self.watch_timeout_seconds, allow_watch_bookmarks=True)
        for event in self._watch.stream(self.list_func, **kwargs):
            if stop.is_set():
                self._watch.stop()
                return
            obj = event["raw_object"]
            event_type = event["type"]
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            if event_type == "BOOKMARK":
                continue
            key = object_key(obj)
            with self.lock:
                if event_type == "DELETED":
                    self.cache.pop(key, None)
                else:
                    self.cache[key] = obj
            self._emit(event_type, obj)

    def run(self, stop):
        """Run until ``stop`` (a threading.Event) is set."""
        backoff = 0.2
        next_resync = self.clock() + self.resync_seconds
        need_list = True
        while not stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                if self.clock() >= next_resync:
                    for obj in self.items():
                        self._emit("SYNC", obj)
                    next_resync = self.clock() + self.resync_seconds
                self._watch_once(stop)
                backoff = 0.2
            except ApiException as exc:
                if getattr(exc, "status", None) == 410:
                    LOG.info("%s: resourceVersion %s is gone; relisting", self.name, self.resource_version)
                    self._retrying("410")
                    need_list = True
                    continue
                LOG.warning("%s: API error %s; retrying in %.1fs", self.name, getattr(exc, "status", exc), backoff)
                self._retrying(str(getattr(exc, "status", None) or "error"))
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                need_list = True
            except Exception as exc:  # pylint: disable=broad-except
                if stop.is_set():
                    return
                LOG.warning("%s: watch failed (%s); retrying in %.1fs", self.name, exc, backoff)
                self._retrying("transport")
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                need_list = True

    def _retrying(self, reason):
        if self.on_retry is not None:
            self.on_retry(reason)

    def start(self, stop):
        thread = threading.Thread(target=self.run, args=(stop,), name=self.name, daemon=True)
        thread.start()
        return thread

    def stop(self):
        if self._watch is not None:
            self._watch.stop()
