"""Request bodies decoded the way kube-apiserver decodes them into its types, driven by the OpenAPI schemas.

A real server decodes JSON into Go structs: a value of the wrong JSON type is a 400 (``json: cannot unmarshal
...``), and a field the type does not have is dropped, reported as a warning, or refused with 400 when the
request says ``fieldValidation=Strict`` (what kubectl sends unless ``--validate=false``). Custom resources
have no Go types: their wrong types are the CRD schema's 422 (schema.py), their unknown fields work as here.
"""

FIELD_VALIDATION = ("Ignore", "Warn", "Strict")
GO_TYPES = {"string": "string", "boolean": "bool", "number": "float64", "object": "map[string]interface {}"}
JSON_TYPES = {str: "string", bool: "boolean", int: "number", float: "number", dict: "object", list: "array"}


class DecodeResult:
    """The decoded object, the unknown fields it had (paths) and the first type error (a Go-style message)."""

    def __init__(self):
        self.unknown = []
        self.type_error = None


class Decoder:
    """Walks an object along a schema; ``schemas`` holds the ``#/components/schemas/`` a ``$ref`` points into."""

    def __init__(self, schemas, check_types=True):
        self.schemas = schemas
        self.check_types = check_types

    def resolve(self, schema, struct):
        """(schema, Go struct name) behind a ``$ref`` or a one-element ``allOf`` wrapper."""
        while isinstance(schema, dict):
            ref = schema.get("$ref")
            if ref is None and len(schema.get("allOf") or []) == 1:
                ref = schema["allOf"][0].get("$ref")
            if ref is None:
                return schema, struct
            name = ref.rsplit("/", 1)[-1]
            schema, struct = self.schemas.get(name, {}), name.rsplit(".", 1)[-1]
        return {}, struct

    def decode(self, value, schema, struct):
        result = DecodeResult()
        schema, struct = self.resolve(schema, struct)
        decoded = self._walk(value, schema, struct, ([], []), struct, result)
        return decoded, result

    def _walk(self, value, schema, struct, paths, owner, result):
        """``paths``: (field path with list indexes, Go's path without them); ``owner``: the Go struct the field is in."""
        if value is None or not isinstance(schema, dict) or not schema:
            return value
        if self.check_types and result.type_error is None and paths[1]:
            self._check_type(value, schema, owner, struct, paths[1], result)
        if isinstance(value, dict):
            return self._walk_object(value, schema, struct, paths, owner, result)
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            items, item_struct = self.resolve(schema["items"], struct)
            path, go_path = paths
            return [self._walk(item, items, item_struct, (path[:-1] + ["%s[%d]" % (path[-1] if path else "", index)], go_path), owner, result)
                    for index, item in enumerate(value)]
        return value

    def _walk_object(self, value, schema, struct, paths, owner, result):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        open_ended = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-embedded-resource")
        path, go_path = paths
        decoded = {}
        for key, item in value.items():
            if properties is not None and key in properties:
                sub, sub_struct = self.resolve(properties[key], struct)
                decoded[key] = self._walk(item, sub, sub_struct, (path + [key], go_path + [key]), struct, result)
            elif isinstance(additional, dict):
                sub, sub_struct = self.resolve(additional, struct)
                decoded[key] = self._walk(item, sub, sub_struct, (path + [key], go_path), owner, result)
            elif properties is None or additional is True or open_ended:
                decoded[key] = item
            else:
                result.unknown.append(".".join(path + [key]))
        return decoded

    @staticmethod
    def _check_type(value, schema, owner, struct, go_path, result):
        expected = schema.get("type")
        got = JSON_TYPES.get(type(value))
        if schema.get("x-kubernetes-int-or-string") or schema.get("format") == "int-or-string" or "oneOf" in schema or not expected:
            return
        fits = got == expected or (expected == "integer" and isinstance(value, int) and not isinstance(value, bool)) \
            or (expected == "number" and got == "number")
        if expected == "integer" and isinstance(value, float) and value.is_integer():
            fits = True
        if not fits:
            shown = "number %s" % value if expected == "integer" and got == "number" else {"boolean": "bool"}.get(got, got)
            result.type_error = "json: cannot unmarshal %s into Go struct field %s.%s of type %s" % (
                shown, owner, ".".join(go_path), go_type(schema, struct))


def go_type(schema, struct):
    """A readable Go type for an error message (the real names come from the Go structs)."""
    kind = schema.get("type")
    if kind == "integer":
        return schema.get("format") or "int"
    if kind == "array":
        return "[]" + go_type(schema.get("items") or {}, struct)
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map[string]" + go_type(schema["additionalProperties"], struct)
    if kind == "object" and schema.get("properties") is not None:
        return "v1." + struct
    return GO_TYPES.get(kind, "interface {}")


def unknown_fields_message(kind, version, unknown):
    return "%s in version \"%s\" cannot be handled as a %s: strict decoding error: %s" % (
        kind, version, kind, ", ".join('unknown field "%s"' % path for path in unknown))


def type_error_message(kind, version, error):
    return "%s in version \"%s\" cannot be handled as a %s: %s" % (kind, version, kind, error)
