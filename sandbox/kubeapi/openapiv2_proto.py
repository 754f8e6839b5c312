"""``/openapi/v2`` in the protobuf form client-go asks for (``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``).

client-go's ``OpenAPISchema()`` only accepts this encoding of gnostic's ``openapi_v2.Document``; kubectl uses it to
validate what OpenAPI v3 cannot vouch for (a ``kind: List`` file, a kind the server does not know) and for
``explain --output plaintext-openapiv2``. Only what kubectl reads is encoded: the definitions (every schema
keyword of gnostic's ``Schema``) and, per path, each operation's id, media types and vendor extensions.
Field numbers are those of gnostic-models' OpenAPIv2.proto; the wire format is plain protobuf.
"""

import struct

import yaml

MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
RESPONSE_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"   # what kube-apiserver answers with (Go parses no "@")
SCHEMA_STRINGS = {"$ref": 1, "format": 2, "title": 3, "description": 4, "pattern": 13, "discriminator": 26}
SCHEMA_DOUBLES = {"multipleOf": 6, "maximum": 7, "minimum": 9}
SCHEMA_BOOLS = {"exclusiveMaximum": 8, "exclusiveMinimum": 10, "uniqueItems": 16, "readOnly": 27}
SCHEMA_INTS = {"maxLength": 11, "minLength": 12, "maxItems": 14, "minItems": 15, "maxProperties": 17, "minProperties": 18}
OPERATIONS = {"get": 2, "put": 3, "post": 4, "delete": 5, "patch": 8}


def varint(number):
    number &= (1 << 64) - 1       # negative int64 values take ten bytes, as in protobuf
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def field_bytes(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_string(number, text):
    return field_bytes(number, text.encode()) if text else b""


def field_varint(number, value):
    return varint(number << 3) + varint(int(value)) if value else b""


def field_double(number, value):
    return varint(number << 3 | 1) + struct.pack("<d", float(value)) if value else b""


def any_yaml(value):
    """gnostic's ``Any``: the value as YAML (field 2)."""
    return field_string(2, yaml.safe_dump(value, default_flow_style=False, sort_keys=True))


def named_any(name, value):
    return field_string(1, name) + field_bytes(2, any_yaml(value))


def scalar_keyword(key, value):
    """The field of a scalar schema keyword (``$ref``, ``format``, ``maximum``, ...), None for the others."""
    if key in SCHEMA_STRINGS and isinstance(value, str):
        return field_string(SCHEMA_STRINGS[key], value)
    if key in SCHEMA_DOUBLES:
        return field_double(SCHEMA_DOUBLES[key], value)
    if key in SCHEMA_BOOLS:
        return field_varint(SCHEMA_BOOLS[key], bool(value))
    if key in SCHEMA_INTS:
        return field_varint(SCHEMA_INTS[key], value)
    return None


def schema(node):
    """One gnostic ``Schema`` message from a Swagger 2.0 schema dict."""
    out = bytearray()
    for key, value in node.items():
        scalar = scalar_keyword(key, value)
        if scalar is not None:
            out += scalar
        elif key in ("default", "example"):
            out += field_bytes(5 if key == "default" else 30, any_yaml(value))
        elif key == "required":
            out += b"".join(field_string(19, name) for name in value)
        elif key == "enum":
            out += b"".join(field_bytes(20, any_yaml(item)) for item in value)
        elif key == "additionalProperties":
            out += field_bytes(21, field_bytes(1, schema(value)) if isinstance(value, dict) else varint(2 << 3) + varint(int(bool(value))))
        elif key == "type":
            out += field_bytes(22, b"".join(field_string(1, kind) for kind in ([value] if isinstance(value, str) else value)))
        elif key == "items":
            out += field_bytes(23, b"".join(field_bytes(1, schema(item)) for item in ([value] if isinstance(value, dict) else value)))
        elif key == "allOf":
            out += b"".join(field_bytes(24, schema(item)) for item in value)
        elif key == "properties":
            out += field_bytes(25, b"".join(field_bytes(1, field_string(1, name) + field_bytes(2, schema(sub))) for name, sub in value.items()))
        elif key.startswith("x-"):
            out += field_bytes(31, named_any(key, value))
    return bytes(out)


def operation(op):
    out = field_string(3, op.get("description", "")) + field_string(5, op.get("operationId", ""))
    out += b"".join(field_string(6, media) for media in op.get("produces") or [])
    out += b"".join(field_string(7, media) for media in op.get("consumes") or [])
    responses = b"".join(field_bytes(1, field_string(1, code) + field_bytes(2, field_bytes(1, field_string(1, response.get("description") or code))))
                         for code, response in (op.get("responses") or {}).items())
    out += field_bytes(9, responses)
    out += b"".join(field_bytes(13, named_any(key, value)) for key, value in op.items() if key.startswith("x-"))
    return out


def path_item(item):
    return b"".join(field_bytes(OPERATIONS[method], operation(op)) for method, op in item.items() if method in OPERATIONS)


def document(swagger):
    """The protobuf bytes of a Swagger 2.0 document dict (``OpenAPIDocuments.v2_document()``)."""
    info = swagger.get("info") or {}
    out = field_string(1, swagger.get("swagger", "2.0"))
    out += field_bytes(2, field_string(1, info.get("title", "")) + field_string(2, info.get("version", "")))
    out += field_bytes(8, b"".join(field_bytes(2, field_string(1, path) + field_bytes(2, path_item(item)))
                                   for path, item in sorted((swagger.get("paths") or {}).items())))
    out += field_bytes(9, b"".join(field_bytes(1, field_string(1, name) + field_bytes(2, schema(definition)))
                                   for name, definition in sorted((swagger.get("definitions") or {}).items())))
    return out
