"""The emulator's object store: objects, a global resourceVersion, an event history for watches.

Every write bumps one global counter (like etcd's revision) that becomes the object's
``metadata.resourceVersion``. A bounded history of events lets watches resume from a
resourceVersion; asking for one older than the history answers 410 Gone, as after compaction.
"""

import collections
import json
import os
import threading


def json_copy(value):
    """A deep copy of a JSON value (dicts, lists, scalars), several times faster than the copy module's,
    which matters because every read and write copies whole objects (managedFields included)."""
    if isinstance(value, dict):
        return {key: json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_copy(item) for item in value]
    return value


class Event:
    __slots__ = ("rv", "storage_key", "type", "obj", "old")

    def __init__(self, rv, storage_key, event_type, obj, old):
        self.rv = rv
        self.storage_key = storage_key
        self.type = event_type
        self.obj = obj
        self.old = old


class Store:
    def __init__(self, history_limit=10000):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects = {}          # storage_key -> {(namespace, name): obj}
        self.rv = 0
        self.history = collections.deque(maxlen=history_limit)
        self.compacted_rv = 0      # events at or below this rv are no longer in the history
        self.dirty = False

    # -- reads --------------------------------------------------------------------------------
    def get(self, storage_key, namespace, name):
        with self.lock:
            obj = self.objects.get(storage_key, {}).get((namespace or "", name))
            return json_copy(obj) if obj is not None else None

    def list(self, storage_key, namespace=None):
        """Objects of a type (in one namespace when given), sorted by namespace and name, plus the list rv."""
        with self.lock:
            items = [json_copy(obj) for (ns, _name), obj in sorted(self.objects.get(storage_key, {}).items())
                     if namespace is None or ns == namespace]
            return items, self.rv

    # -- writes -------------------------------------------------------------------------------
    def _next_rv(self):
        self.rv += 1
        return self.rv

    def _record(self, storage_key, event_type, obj, old):
        if len(self.history) == self.history.maxlen and self.history:
            self.compacted_rv = self.history[0].rv
        self.history.append(Event(self.rv, storage_key, event_type, json_copy(obj), json_copy(old)))
        self.dirty = True
        self.changed.notify_all()

    def put(self, storage_key, obj, event_type):
        """Store ``obj`` (ADDED or MODIFIED) with a new resourceVersion; returns a copy of it."""
        with self.lock:
            meta = obj["metadata"]
            key = (meta.get("namespace") or "", meta["name"])
            bucket = self.objects.setdefault(storage_key, {})
            old = bucket.get(key)
            meta["resourceVersion"] = str(self._next_rv())
            bucket[key] = json_copy(obj)
            self._record(storage_key, event_type, obj, old)
            return json_copy(obj)

    def remove(self, storage_key, namespace, name):
        with self.lock:
            obj = self.objects.get(storage_key, {}).pop((namespace or "", name), None)
            if obj is None:
                return None
            obj["metadata"]["resourceVersion"] = str(self._next_rv())
            self._record(storage_key, "DELETED", obj, obj)
            return json_copy(obj)

    def drop_type(self, storage_key):
        """Remove every object of a type (its CRD was deleted), with DELETED events."""
        with self.lock:
            for (namespace, name) in list(self.objects.get(storage_key, {})):
                self.remove(storage_key, namespace, name)
            self.objects.pop(storage_key, None)

    def drop_namespace(self, namespace):
        """Remove every namespaced object in ``namespace``, with DELETED events."""
        with self.lock:
            for storage_key, bucket in list(self.objects.items()):
                for (obj_ns, name) in [k for k in bucket if k[0] == namespace]:
                    self.remove(storage_key, obj_ns, name)

    # -- watch --------------------------------------------------------------------------------
    def events_after(self, rv):
        """Events newer than ``rv``; None when ``rv`` is older than the history (410 Gone)."""
        with self.lock:
            if rv < self.compacted_rv:
                return None
            # walk back from the newest event only as far as needed: watchers are usually up to date
            newer = []
            for event in reversed(self.history):
                if event.rv <= rv:
                    break
                newer.append(event)
            newer.reverse()
            return newer

    def wait_for_change(self, rv, timeout):
        with self.lock:
            if self.rv > rv:
                return True
            return self.changed.wait(timeout)

    # -- persistence --------------------------------------------------------------------------
    def dump(self):
        with self.lock:
            self.dirty = False
            return {"resourceVersion": self.rv,
                    "objects": {key: list(bucket.values()) for key, bucket in self.objects.items()}}

    def load(self, data):
        with self.lock:
            self.rv = int(data.get("resourceVersion", 0))
            self.compacted_rv = self.rv   # no history survives a restart: older watches must relist
            self.objects = {}
            for key, items in (data.get("objects") or {}).items():
                self.objects[key] = {((o["metadata"].get("namespace") or ""), o["metadata"]["name"]): o for o in items}

    def save(self, path):
        data = self.dump()
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
