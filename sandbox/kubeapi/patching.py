"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

Strategic merge needs each field's patch strategy, which the real API server takes from the Go types;
here a small table covers the built-in fields this project touches (containers by
``name``, conditions by ``type``, ...). Custom resources have no strategy: 415, as on a real server.
"""

import copy

import jsonpatch

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

SET = "<set>"   # a list of primitives merged as a set (e.g. finalizers)

_METADATA = {("metadata", "ownerReferences"): "uid", ("metadata", "finalizers"): SET}
_CONTAINER = {"ports": "containerPort", "env": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath"}


def _pod_spec(prefix):
    table = {prefix + ("containers",): "name", prefix + ("initContainers",): "name", prefix + ("ephemeralContainers",): "name",
             prefix + ("volumes",): "name", prefix + ("imagePullSecrets",): "name", prefix + ("hostAliases",): "ip"}
    for containers in ("containers", "initContainers"):
        for field, key in _CONTAINER.items():
            table[prefix + (containers, "*", field)] = key
    return table


STRATEGIES = {
    # spec.taints has no merge key in the real API: an atomic list, replaced whole
    "Node": {("status", "conditions"): "type", ("status", "addresses"): "type"},
    "Pod": {**_pod_spec(("spec",)), ("status", "conditions"): "type", ("status", "containerStatuses"): "name",
            ("status", "initContainerStatuses"): "name", ("status", "podIPs"): "ip"},
    "Deployment": {**_pod_spec(("spec", "template", "spec")), ("status", "conditions"): "type"},
    "Namespace": {("status", "conditions"): "type"},
    "Service": {("spec", "ports"): "port"},
    "Event": {}, "ConfigMap": {}, "Secret": {}, "Lease": {}, "ServiceAccount": {},
    "MutatingWebhookConfiguration": {("webhooks",): "name"},
    "ValidatingWebhookConfiguration": {("webhooks",): "name"},
    "CustomResourceDefinition": {("status", "conditions"): "type"},
    # PolicyRule and Subject lists have no merge key: replaced whole
    "ClusterRole": {}, "ClusterRoleBinding": {}, "Role": {}, "RoleBinding": {},
}


class PatchError(Exception):
    """A patch that cannot be applied; ``code`` is the HTTP status to answer with."""

    def __init__(self, message, code=422):
        super().__init__(message)
        self.message = message
        self.code = code


def apply_patch(obj, patch, patch_type, kind):
    """Return a new object: ``obj`` with ``patch`` applied (``obj`` is not modified)."""
    base = patch_type.split(";")[0].strip()
    if base == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise PatchError("a merge patch must be a JSON object", 400)
        return merge_patch(obj, patch)
    if base == JSON_PATCH:
        if not isinstance(patch, list):
            raise PatchError("a JSON patch must be a list of operations", 400)
        try:
            return jsonpatch.apply_patch(obj, patch, in_place=False)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise PatchError("the test operation of the JSON patch failed: %s" % exc, 422)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, IndexError, TypeError) as exc:
            raise PatchError("the JSON patch could not be applied: %s" % exc, 422)
    if base == STRATEGIC_PATCH:
        if kind not in STRATEGIES:
            raise PatchError("the body of the request was in an unknown format - accepted media types include: "
                             "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml", 415)
        if not isinstance(patch, dict):
            raise PatchError("a strategic merge patch must be a JSON object", 400)
        strategies = {**_METADATA, **STRATEGIES[kind]}
        return _strategic(obj, patch, (), strategies)
    if base == APPLY_PATCH:
        raise PatchError("server-side apply is not supported by this emulator", 415)
    raise PatchError("unsupported patch type %r" % patch_type, 415)


def merge_patch(target, patch):
    """RFC 7386: objects merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strip_directives(value):
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def _strategic(original, patch, path, strategies):
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise PatchError("unknown patch directive %r at %s" % (directive, ".".join(path) or "<root>"), 422)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        sub_path = path + (key,)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, sub_path, strategies)
        elif isinstance(value, dict):
            merged = _strategic(result.get(key), value, sub_path, strategies)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
        elif key.startswith("$setElementOrder/"):
            field = key.split("/", 1)[1]
            result[field] = _reorder(result.get(field) or [], value, strategies.get(path + (field,)))
    if "$retainKeys" in patch:
        retain = set(patch["$retainKeys"])
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(original, patch_list, path, strategies):
    strategy = strategies.get(path)
    if strategy is None:
        return _strip_directives(patch_list)
    original = copy.deepcopy(original) if isinstance(original, list) else []
    if strategy == SET:
        for item in patch_list:
            if item not in original:
                original.append(item)
        return original
    item_path = path + ("*",)
    for item in patch_list:
        if not isinstance(item, dict):
            raise PatchError("%s: expected objects with merge key %r" % (".".join(path), strategy), 422)
        if item.get("$patch") == "delete":
            original = [o for o in original if o.get(strategy) != item.get(strategy)]
            continue
        if strategy not in item:
            raise PatchError("%s: item without its merge key %r" % (".".join(path), strategy), 422)
        for index, existing in enumerate(original):
            if isinstance(existing, dict) and existing.get(strategy) == item[strategy]:
                original[index] = _strategic(existing, item, item_path, strategies)
                break
        else:
            original.append(_strategic({}, item, item_path, strategies))
    return original


def _reorder(items, order, merge_key):
    if merge_key in (None, SET):
        ranked = {value: index for index, value in enumerate(order)}
        return sorted(items, key=lambda item: ranked.get(item, len(ranked)))
    ranked = {entry.get(merge_key): index for index, entry in enumerate(order)}
    return sorted(items, key=lambda item: ranked.get(item.get(merge_key), len(ranked)))
