"""Custom resource validation as the API server does it: prune unknown fields, apply defaults, then
validate against the CRD version's structural ``openAPIV3Schema`` (with the ``jsonschema`` library).

Kubernetes extensions are translated: ``x-kubernetes-int-or-string`` (integer or string),
``nullable``, ``x-kubernetes-preserve-unknown-fields`` (no pruning below), ``x-kubernetes-embedded-resource``.
"""

import copy
import json

import jsonschema

_K8S_KEYS = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource",
             "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "nullable",
             "x-kubernetes-validations")


def version_schema(crd, version):
    for item in crd["spec"].get("versions") or []:
        if item["name"] == version:
            return ((item.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    raise KeyError("version %s is not defined by %s" % (version, crd["metadata"]["name"]))


def to_json_schema(schema):
    """Translate an OpenAPI v3 structural schema (with Kubernetes extensions) to JSON Schema."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _K8S_KEYS or key == "format":
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}] + out.get("anyOf", [])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-embedded-resource"):
        out.setdefault("required", [])
        out["required"] = sorted(set(out["required"]) | {"apiVersion", "kind"})
    return out


def prune_and_default(value, schema, root=False):
    """Drop fields the schema does not know (unless preserved) and fill in defaults, recursively."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-embedded-resource")
        additional = schema.get("additionalProperties")
        result = {}
        for key, item in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                result[key] = item
            elif properties is not None and key in properties:
                result[key] = prune_and_default(item, properties[key])
            elif isinstance(additional, dict):
                result[key] = prune_and_default(item, additional)
            elif additional is True or preserve or (properties is None and additional is None and not schema.get("type")):
                result[key] = item
        for key, sub in (properties or {}).items():
            if key not in result and isinstance(sub, dict) and "default" in sub:
                result[key] = prune_and_default(copy.deepcopy(sub["default"]), sub)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_and_default(item, schema["items"]) for item in value]
    return value


def _path(error):
    parts = []
    for part in error.absolute_path:
        if isinstance(part, int):
            parts[-1:] = ["%s[%d]" % (parts[-1] if parts else "", part)]
        else:
            parts.append(str(part))
    return ".".join(parts)


def format_error(error):
    path = _path(error)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return "%s: Required value" % ".".join(p for p in (path, missing) if p)
    if error.validator == "enum":
        return "%s: Unsupported value: %s: supported values: %s" % (
            path or "<root>", json.dumps(error.instance), ", ".join(json.dumps(v) for v in error.validator_value))
    if error.validator in ("type", "anyOf"):
        expected = error.validator_value if error.validator == "type" else "integer or string"
        return "%s: Invalid value: %s: %s in body must be of type %s" % (
            path or "<root>", json.dumps(error.instance), path or "<root>", expected)
    return "%s: Invalid value: %s: %s" % (path or "<root>", json.dumps(error.instance)[:200], error.message)


def validate_and_default(crd, version, obj):
    """(pruned and defaulted object, list of error strings) for a custom resource of ``crd``."""
    errors = []
    for field in ("apiVersion", "kind"):
        if not obj.get(field):
            errors.append("%s: Required value" % field)
    if not (obj.get("metadata") or {}).get("name"):
        errors.append("metadata.name: Required value: name or generateName is required")
    schema = version_schema(crd, version)
    pruned = prune_and_default(obj, schema, root=True)
    body = {k: v for k, v in pruned.items() if k not in ("apiVersion", "kind", "metadata")}
    json_schema = to_json_schema(schema)
    for key in ("apiVersion", "kind", "metadata"):
        (json_schema.get("properties") or {}).pop(key, None)
        if key in (json_schema.get("required") or []):
            json_schema["required"] = [r for r in json_schema["required"] if r != key]
    validator = jsonschema.Draft7Validator(json_schema)
    for error in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        errors.append(format_error(error))
    return pruned, errors
