"""Field ownership (``metadata.managedFields``) and server-side apply, a documented subset of structured-merge-diff.

What it keeps: every write records which manager set which fields (``FieldsV1``): an apply (``PATCH`` with
``application/apply-patch+yaml``) owns exactly the fields of its configuration, an update (POST/PUT/other
patches) takes the fields whose value it changed from whoever had them. Applying a field another manager owns
with a different value is a 409 conflict naming the manager and the field, unless ``force=true`` takes it
over; a field an applier stops sending is removed when nobody else owns it. Lists merge by their schema:
``x-kubernetes-list-type: map`` (or a patch merge key) by their keys, ``set`` as sets, the rest atomically.

What it leaves out (docs/sandbox.md): conversion between versions (every type here has one), unions,
``x-kubernetes-map-type: granular`` inside atomic parents, duplicate-key detection, and the ``.`` ownership of
a whole list item when only some of its fields are applied (the item is owned with the fields applied).
"""

import datetime
import json

from sandbox.kubeapi.decoding import Decoder
from sandbox.kubeapi.store import json_copy

SERVER_SET_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                   "deletionGracePeriodSeconds", "managedFields", "selfLink")


class ApplyConflict(Exception):
    def __init__(self, conflicts):
        super().__init__("apply conflicts")
        self.conflicts = conflicts      # [(managedFields entry, path)]


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Shape:
    """How a value merges, from its schema: struct/map (by key), list map (by keys), set, or atomic."""

    def __init__(self, decoder, schema):
        self.decoder = decoder
        self.schema, _struct = decoder.resolve(schema or {}, "")

    def child(self, key):
        properties = self.schema.get("properties") or {}
        if key in properties:
            return Shape(self.decoder, properties[key])
        additional = self.schema.get("additionalProperties")
        return Shape(self.decoder, additional if isinstance(additional, dict) else {})

    def items(self):
        return Shape(self.decoder, self.schema.get("items") or {})

    def list_keys(self):
        """The keys of a list map, [] for a set, None for an atomic list."""
        kind = self.schema.get("x-kubernetes-list-type")
        if kind == "map":
            return list(self.schema.get("x-kubernetes-list-map-keys") or [])
        if kind == "set":
            return []
        if kind is None and self.schema.get("x-kubernetes-patch-strategy", "").startswith("merge") and self.schema.get("x-kubernetes-patch-merge-key"):
            return [self.schema["x-kubernetes-patch-merge-key"]]
        return None

    def atomic_map(self):
        return self.schema.get("x-kubernetes-map-type") == "atomic" or (
            not self.schema.get("properties") and not self.schema.get("additionalProperties") and self.schema.get("x-kubernetes-preserve-unknown-fields"))


def item_key(item, keys):
    if keys == []:
        return "v:" + json.dumps(item, separators=(",", ":"), sort_keys=True)
    return "k:" + json.dumps({k: item.get(k) for k in keys if isinstance(item, dict) and k in item}, separators=(",", ":"), sort_keys=True)


def leaves(value, shape, prefix=()):
    """{path: value} for every owned member of ``value``: leaves, list-map items ('.'), set items."""
    found = {}
    if isinstance(value, dict) and value and not shape.atomic_map():
        for key, item in value.items():
            found.update(leaves(item, shape.child(key), prefix + ("f:" + key,)))
        return found
    if isinstance(value, list) and value and shape.list_keys() is not None:
        keys, items = shape.list_keys(), shape.items()
        for item in value:
            path = prefix + (item_key(item, keys),)
            found[path + (".",)] = item
            if keys and isinstance(item, dict):
                found.update(leaves(item, items, path))
        return found
    return {prefix: value} if prefix else {}


def config_fields(obj, shape, has_status):
    """The owned paths of an object's fields a client set, without what the server sets itself."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind") and not (has_status and k == "status")}
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in SERVER_SET_META}
    if meta:
        body["metadata"] = meta
    else:
        body.pop("metadata", None)
    return leaves(body, shape)


# -- FieldsV1 ---------------------------------------------------------------------------------
def to_fields_v1(paths):
    trie = {}
    for path in sorted(paths):
        node = trie
        for part in path:
            node = node.setdefault(part, {})
    return trie


def from_fields_v1(trie, prefix=()):
    paths = set()
    for part, sub in (trie or {}).items():
        if part == ".":
            paths.add(prefix + (".",))
        elif sub:
            paths |= from_fields_v1(sub, prefix + (part,))
        else:
            paths.add(prefix + (part,))
    return paths


def readable(path):
    """A field path as the API server prints it in a conflict: ``.data.x``, ``.spec.taints[key="a"]``."""
    text = ""
    for part in path:
        if part == ".":
            continue
        kind, _sep, rest = part.partition(":")
        if kind == "f":
            text += "." + rest
        elif kind == "k":
            text += "[" + ",".join("%s=%s" % (k, json.dumps(v)) for k, v in json.loads(rest).items()) + "]"
        else:
            text += "[%s]" % rest
    return text


def print_manager(entry):
    """How a conflict names its manager: an updater with its apiVersion and time, an applier by name alone."""
    text = json.dumps(entry.get("manager", ""))
    if entry.get("subresource"):
        text += " with subresource %s" % json.dumps(entry["subresource"])
    if entry.get("operation") == "Update":
        text += " using %s" % entry.get("apiVersion", "") + (" at %s" % entry["time"] if entry.get("time") else "")
    return text


# -- merge ------------------------------------------------------------------------------------
def merge(current, applied, shape):
    """``applied`` laid over ``current``: maps by key, list maps by their keys, sets as sets, the rest replaced."""
    if isinstance(applied, dict) and isinstance(current, dict) and not shape.atomic_map():
        result = json_copy(current)
        for key, value in applied.items():
            result[key] = merge(current.get(key), value, shape.child(key))
        return result
    keys = shape.list_keys() if isinstance(applied, list) else None
    if keys is not None and isinstance(current, list):
        result = json_copy(current)
        positions = {item_key(item, keys): index for index, item in enumerate(result)}
        for item in applied:
            key = item_key(item, keys)
            if key in positions:
                result[positions[key]] = merge(result[positions[key]], item, shape.items()) if keys else item
            else:
                positions[key] = len(result)
                result.append(json_copy(item))
        return result
    return json_copy(applied)


def remove(obj, path, shape):
    """``obj`` without the member at ``path`` (a map key, a list item, a set value)."""
    if not path or not isinstance(obj, (dict, list)):
        return obj
    part, rest = path[0], path[1:]
    if isinstance(obj, dict) and part.startswith("f:"):
        key = part[2:]
        if key in obj:
            if not rest:
                obj.pop(key)
            else:
                obj[key] = remove(obj[key], rest, shape.child(key))
        return obj
    if isinstance(obj, list) and shape.list_keys() is not None:
        keys = shape.list_keys()
        for index, item in enumerate(obj):
            if item_key(item, keys) == part:
                if rest in ((), (".",)):
                    return obj[:index] + obj[index + 1:]
                obj[index] = remove(item, rest, shape.items())
                break
    return obj


def value_at(obj, path, shape):
    """(found, value) at ``path``."""
    value = obj
    for part in path:
        if part == ".":
            break
        if isinstance(value, dict) and part.startswith("f:") and part[2:] in value:
            shape, value = shape.child(part[2:]), value[part[2:]]
        elif isinstance(value, list) and shape.list_keys() is not None:
            match = [item for item in value if item_key(item, shape.list_keys()) == part]
            if not match:
                return False, None
            shape, value = shape.items(), match[0]
        else:
            return False, None
    return True, value


# -- managers ---------------------------------------------------------------------------------
class FieldManager:
    """Ownership for one object type: ``schema`` is its kind's OpenAPI schema, ``schemas`` what it references."""

    def __init__(self, schema, schemas, api_version, has_status):
        self.shape = Shape(Decoder(schemas, check_types=False), schema)
        self.api_version = api_version
        self.has_status = has_status

    def entries(self, obj):
        return json_copy((obj.get("metadata") or {}).get("managedFields") or [])

    def _owned(self, entries):
        return [(entry, from_fields_v1(entry.get("fieldsV1"))) for entry in entries]

    def apply(self, current, applied, manager, force, subresource=""):
        """The object after applying ``applied`` as ``manager`` (with its managedFields); raises ApplyConflict."""
        base = current or {"metadata": {}}
        wanted = config_fields(applied, self.shape, self.has_status and subresource != "status")
        if subresource == "status":
            wanted = {p: v for p, v in wanted.items() if p[:1] == ("f:status",)}
        owned = self._owned(self.entries(base))
        mine = [(e, s) for e, s in owned if e.get("manager") == manager and e.get("operation") == "Apply" and e.get("subresource", "") == subresource]
        previous = mine[0][1] if mine else set()
        others = [(e, s) for e, s in owned if not any(e is m for m, _s in mine)]
        conflicts = self._conflicts(base, wanted, others)
        if conflicts and not force:
            raise ApplyConflict(conflicts)
        result = merge(base, {k: v for k, v in applied.items() if k not in ("apiVersion", "kind", "metadata")}, self.shape)
        applied_meta = {k: v for k, v in (applied.get("metadata") or {}).items() if k not in SERVER_SET_META}
        result["metadata"] = merge(base.get("metadata") or {}, applied_meta, self.shape.child("metadata"))
        still_owned = set().union(*[s for _e, s in others]) if others else set()
        for path in sorted(previous - set(wanted) - still_owned, key=len, reverse=True):
            result = remove(result, path, self.shape)
        taken = {path for _entry, path in conflicts}
        entries = [self._entry(e, s - taken) for e, s in others]
        entries.append(self._new_entry(manager, "Apply", set(wanted), subresource))
        result["metadata"]["managedFields"] = [e for e in entries if e]
        return result

    def _conflicts(self, base, wanted, others):
        conflicts = []
        for path, value in wanted.items():
            found, present = value_at(base, path, self.shape)
            if not found or path[-1:] == (".",) or present == value:
                continue
            for entry, fields in others:
                if path in fields:
                    conflicts.append((entry, path))
        return conflicts

    def _written_fields(self, obj, subresource):
        """The owned paths a write of ``subresource`` can change: the status alone, or all but a status subresource."""
        if not obj:
            return {}
        if subresource == "status":
            return leaves(obj.get("status"), self.shape.child("status"), ("f:status",))
        return config_fields(obj, self.shape, self.has_status)

    def update(self, old, new, manager, subresource=""):
        """``new`` with managedFields after ``manager`` wrote it over ``old`` (None on create); ``old`` is not changed."""
        before, after = self._written_fields(old, subresource), self._written_fields(new, subresource)
        changed = {path for path, value in after.items() if path not in before or before[path] != value}
        gone = set(before) - set(after)
        entries = (old.get("metadata") or {}).get("managedFields") or [] if old else []
        result, mine, mine_entry, mine_at = [], None, None, None
        for entry, fields in self._owned(entries):
            if entry.get("manager") == manager and entry.get("operation") == "Update" and entry.get("subresource", "") == subresource:
                mine, mine_entry, mine_at = fields, entry, len(result)
                continue
            result.append(self._entry(entry, fields - changed - gone) if (changed or gone) else entry)
        owned = ((mine or set()) | changed) - gone
        if mine is not None and owned == mine:
            # the manager took no field: its entry stays as it was, time and place (a no-op write stays a no-op)
            result.insert(mine_at, mine_entry)
        else:
            result.append(self._new_entry(manager, "Update", owned, subresource))
        new.setdefault("metadata", {})["managedFields"] = json_copy([e for e in result if e])
        return new

    def _entry(self, entry, fields):
        if not fields:
            return None
        if from_fields_v1(entry.get("fieldsV1")) == fields:
            return entry
        return dict(entry, fieldsV1=to_fields_v1(fields))

    def _new_entry(self, manager, operation, fields, subresource):
        if not fields:
            return None
        entry = {"manager": manager, "operation": operation, "apiVersion": self.api_version, "time": now_rfc3339(),
                 "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(fields)}
        if subresource:
            entry["subresource"] = subresource
        return entry
