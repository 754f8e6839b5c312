"""OpenAPI documents as kube-apiserver publishes them: ``/openapi/v3`` (index + one document per group-version) and
``/openapi/v2`` (JSON), built from the served types.

Built-in kinds take their schemas from ``openapi_builtin.json.gz``, a snapshot of the pinned real release
(``python -m sandbox.kubeapi.openapi_snapshot``); custom resources take theirs from their CRD's
``openAPIV3Schema``, wrapped the way the apiextensions server does (apiVersion, kind, metadata, the GVK extension).
kubectl reads the PATCH operations to learn that the server validates fields itself (``fieldValidation``) and
which kinds take a strategic merge patch, and the schemas for ``kubectl explain``.
"""

import copy
import functools
import gzip
import hashlib
import json
import os
import re

from sandbox.kubeapi import openapiv2_proto

SNAPSHOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi_builtin.json.gz")
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
COMMON_SCHEMAS = (META + "Patch", META + "DeleteOptions", META + "Status")
REF = re.compile(r'"#/components/schemas/([^"]+)"')
JSON_YAML = ("application/json", "application/yaml")
PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json")
STRATEGIC = "application/strategic-merge-patch+json"
API_VERSION_DOC = ("APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized "
                   "schemas to the latest internal value, and may reject unrecognized values.")
KIND_DOC = "Kind is a string value representing the REST resource this object represents."


@functools.lru_cache(maxsize=1)
def builtin_snapshot():
    with gzip.open(SNAPSHOT, "rt") as handle:
        return json.load(handle)


def gv_path(group, version):
    """The key of a group-version in the ``/openapi/v3`` index: ``api/v1``, ``apis/<group>/<version>``."""
    return "api/%s" % version if not group else "apis/%s/%s" % (group, version)


def crd_schema_name(group, version, kind):
    """The definition name the apiextensions server gives a custom kind: the group reversed, as Go package paths read."""
    return ".".join(list(reversed(group.split("."))) + [version, kind])


def referenced(schemas, roots):
    """``roots`` and every schema they reference, transitively (names missing from ``schemas`` are skipped)."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen and name in schemas:
            seen.add(name)
            todo.extend(REF.findall(json.dumps(schemas[name])))
    return seen


# -- schemas ----------------------------------------------------------------------------------
def crd_version(crd, version):
    for item in crd["spec"].get("versions") or []:
        if item["name"] == version:
            return item
    return {}


def custom_kind_schemas(crd, version):
    """{name: schema} for a CRD version's kind and its List, as the apiextensions server publishes them."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    schema = copy.deepcopy(((crd_version(crd, version).get("schema") or {}).get("openAPIV3Schema"))
                           or {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"type": "string", "description": API_VERSION_DOC}
    properties["kind"] = {"type": "string", "description": KIND_DOC}
    properties["metadata"] = {"description": "Standard object's metadata.", "allOf": [{"$ref": "#/components/schemas/%sObjectMeta" % META}]}
    schema["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": kind}]
    name = crd_schema_name(group, version, kind)
    listing = {"description": "%sList is a list of %s" % (kind, kind), "type": "object", "required": ["items"],
               "properties": {"apiVersion": {"type": "string", "description": API_VERSION_DOC},
                              "items": {"type": "array", "items": {"$ref": "#/components/schemas/" + name}},
                              "kind": {"type": "string", "description": KIND_DOC},
                              "metadata": {"allOf": [{"$ref": "#/components/schemas/%sListMeta" % META}]}},
               "x-kubernetes-group-version-kind": [{"group": group, "version": version, "kind": kind + "List"}]}
    return {name: schema, name + "List": listing}


def kind_schema_name(schemas, rtype):
    """The name of ``rtype``'s kind among ``schemas`` (by its GVK extension)."""
    for name, schema in schemas.items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            if (gvk.get("group", ""), gvk.get("version"), gvk.get("kind")) == (rtype.group, rtype.version, rtype.kind):
                return name
    return None


def gv_schemas(types, crd_of):
    """{name: schema} of a group-version: its kinds, what they reference and the common request bodies."""
    snapshot = builtin_snapshot()["schemas"]
    schemas = {}
    for rtype in types:
        if rtype.crd:
            crd = crd_of(rtype)
            if crd is not None:
                schemas.update(custom_kind_schemas(crd, rtype.version))
        else:
            schemas.update({name: snapshot[name] for name in snapshot_names(rtype)})
    wanted = referenced({**snapshot, **schemas}, list(schemas) + list(COMMON_SCHEMAS))
    return {name: schemas.get(name) or snapshot[name] for name in sorted(wanted)}


@functools.lru_cache(maxsize=64)
def _builtin_kind_schema(group, version, kind):
    snapshot = builtin_snapshot()["schemas"]
    for name in snapshot_names_for(group, version, kind):
        if any(g.get("kind") == kind for g in snapshot[name].get("x-kubernetes-group-version-kind") or []):
            return snapshot[name]
    return None


def kind_schema(rtype, crd):
    """(the kind's schema or None, the schemas its references resolve in) for decoding and field ownership."""
    snapshot = builtin_snapshot()["schemas"]
    if not rtype.crd:
        return _builtin_kind_schema(rtype.group, rtype.version, rtype.kind), snapshot
    if crd is None:
        return None, snapshot
    custom = custom_kind_schemas(crd, rtype.version)
    return custom[crd_schema_name(rtype.group, rtype.version, rtype.kind)], dict(snapshot, **custom)


def snapshot_names(rtype):
    return snapshot_names_for(rtype.group, rtype.version, rtype.kind)


def snapshot_names_for(group, version, kind):
    snapshot = builtin_snapshot()
    return [name for name in snapshot["groupVersions"].get(gv_path(group, version), [])
            if any((g.get("group", ""), g.get("version"), g.get("kind")) in ((group, version, kind), (group, version, kind + "List"))
                   for g in snapshot["schemas"][name].get("x-kubernetes-group-version-kind") or [])]


# -- paths ------------------------------------------------------------------------------------
def _param(name, where="query", kind="string", required=False):
    return {"name": name, "in": where, "required": required, "schema": {"type": kind, "uniqueItems": True}}


LIST_PARAMS = [_param(n) for n in ("continue", "fieldSelector", "labelSelector", "resourceVersion", "resourceVersionMatch")] + \
    [_param("limit", kind="integer"), _param("timeoutSeconds", kind="integer"), _param("watch", kind="boolean"),
     _param("allowWatchBookmarks", kind="boolean")]
WRITE_PARAMS = [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]
PATCH_PARAMS = WRITE_PARAMS + [_param("force", kind="boolean")]
DELETE_PARAMS = [_param("dryRun"), _param("gracePeriodSeconds", kind="integer"), _param("propagationPolicy")]


def _content(ref, types=JSON_YAML):
    return {"content": {media: {"schema": {"$ref": "#/components/schemas/" + ref}} for media in types}}


def _operation(rtype, action, verb, ref, params, body=None, codes=("200",)):
    kind = rtype.kind
    op = {"description": "%s %s" % (action, kind), "operationId": "%s%s%s%s" % (action, _camel(rtype.group), rtype.version.capitalize(), kind),
          "parameters": list(params), "responses": {code: dict(_content(ref), description="OK") for code in codes},
          "x-kubernetes-action": verb, "x-kubernetes-group-version-kind": {"group": rtype.group, "version": rtype.version, "kind": kind}}
    op["responses"]["401"] = {"description": "Unauthorized"}
    if body is not None:
        op["requestBody"] = dict(body, required=True)
    return op


def _camel(group):
    return "".join(part.capitalize() for part in re.split(r"[.\-]", group)) or "Core"


def resource_paths(rtype, kind_name):
    """The collection, item and status paths of one served type, with the operations kube-apiserver lists."""
    base = "/" + gv_path(rtype.group, rtype.version)
    scope = base + ("/namespaces/{namespace}" if rtype.namespaced else "")
    scope_params = [_param("namespace", "path", required=True)] if rtype.namespaced else []
    item_params = [_param("name", "path", required=True)] + scope_params
    patch_types = PATCH_TYPES + ((STRATEGIC,) if not rtype.crd else ())
    patch_body = _content(META + "Patch", patch_types)
    list_name = kind_name + "List"
    paths = {
        scope + "/" + rtype.plural: {
            "get": _operation(rtype, "list", "list", list_name, LIST_PARAMS),
            "post": _operation(rtype, "create", "post", kind_name, WRITE_PARAMS, _content(kind_name), ("200", "201", "202")),
            "delete": _operation(rtype, "deletecollection", "deletecollection", META + "Status", DELETE_PARAMS + LIST_PARAMS),
            "parameters": scope_params},
        scope + "/%s/{name}" % rtype.plural: {
            "get": _operation(rtype, "read", "get", kind_name, []),
            "put": _operation(rtype, "replace", "put", kind_name, WRITE_PARAMS, _content(kind_name), ("200", "201")),
            "patch": _operation(rtype, "patch", "patch", kind_name, PATCH_PARAMS, patch_body, ("200", "201")),
            "delete": _operation(rtype, "delete", "delete", META + "Status", DELETE_PARAMS, _content(META + "DeleteOptions")),
            "parameters": item_params},
    }
    if rtype.namespaced:
        paths[base + "/" + rtype.plural] = {"get": _operation(rtype, "list", "list", list_name, LIST_PARAMS), "parameters": []}
    if rtype.status:
        paths[scope + "/%s/{name}/status" % rtype.plural] = {
            "get": _operation(rtype, "readStatus", "get", kind_name, []),
            "put": _operation(rtype, "replaceStatus", "put", kind_name, WRITE_PARAMS, _content(kind_name), ("200", "201")),
            "patch": _operation(rtype, "patchStatus", "patch", kind_name, PATCH_PARAMS, patch_body, ("200", "201")),
            "parameters": item_params}
    return paths


# -- documents ----------------------------------------------------------------------------------
class OpenAPIDocuments:
    """Builds and caches the documents; a CRD's documents are rebuilt when its resourceVersion changes."""

    def __init__(self, registry, crd_of):
        self.registry = registry
        self.crd_of = crd_of
        self.cache = {}

    def _fingerprint(self, types):
        return tuple(sorted((t.plural, t.kind, t.crd or "", (self.crd_of(t) or {}).get("metadata", {}).get("resourceVersion", ""))
                            for t in types))

    def v3_bytes(self, group, version):
        """(JSON bytes, hash) of one group-version document, or None when the group-version is not served."""
        types = self.registry.in_group_version(group, version)
        if not types:
            return None
        key = ("v3", group, version, self._fingerprint(types))
        if key not in self.cache:
            document = self._v3_document(types)
            data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
            self.cache = {k: v for k, v in self.cache.items() if k[:3] != key[:3]}
            self.cache[key] = (data, hashlib.sha512(data).hexdigest().upper())
        return self.cache[key]

    def _v3_document(self, types):
        schemas = gv_schemas(types, self.crd_of)
        paths = {}
        for rtype in types:
            name = kind_schema_name(schemas, rtype)
            if name is not None:
                paths.update(resource_paths(rtype, name))
        custom = any(t.crd for t in types)
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes CRD Swagger" if custom else "Kubernetes", "version": "v0.1.0" if custom else "1.37"},
                "paths": paths, "components": {"schemas": schemas,
                                               "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication",
                                                                                   "name": "authorization", "in": "header"}}}}

    def v3_index(self):
        paths = {}
        for group, version in self.registry.group_versions():
            served = self.v3_bytes(group, version)
            if served is not None:
                paths[gv_path(group, version)] = {"serverRelativeURL": "/openapi/v3/%s?hash=%s" % (gv_path(group, version), served[1])}
        return {"paths": paths}

    def v2_document(self):
        """Swagger 2.0: every group-version's v3 document merged, with references and request bodies in v2 form."""
        definitions, paths = {}, {}
        for group, version in self.registry.group_versions():
            served = self.v3_bytes(group, version)
            if served is None:
                continue
            document = json.loads(served[0])
            definitions.update({name: to_v2_schema(schema) for name, schema in document["components"]["schemas"].items()})
            paths.update({path: to_v2_path(item) for path, item in document["paths"].items()})
        return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.37.2"}, "paths": paths, "definitions": definitions}

    def v2_protobuf(self):
        """The v2 document in gnostic's protobuf form, cached while no group-version document changes."""
        key = ("v2pb", tuple(self.v3_bytes(g, v)[1] for g, v in self.registry.group_versions()))
        if key not in self.cache:
            self.cache = {k: v for k, v in self.cache.items() if k[0] != "v2pb"}
            self.cache[key] = openapiv2_proto.document(self.v2_document())
        return self.cache[key]


def to_v2_schema(schema):
    """v3 schema -> v2: ``#/definitions/`` references, ``allOf: [ref]`` wrappers unwrapped, no ``nullable``/``anyOf``."""
    if isinstance(schema, list):
        return [to_v2_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str):
            out[key] = value.replace("#/components/schemas/", "#/definitions/")
        elif key in ("properties", "patternProperties") and isinstance(value, dict):
            out[key] = {name: to_v2_schema(sub) for name, sub in value.items()}
        elif key in ("nullable", "anyOf", "oneOf"):
            continue
        else:
            out[key] = to_v2_schema(value) if key not in ("default", "example", "enum") else value
    wrapped = out.get("allOf")
    if isinstance(wrapped, list) and len(wrapped) == 1 and "$ref" in wrapped[0]:
        out.pop("allOf")
        out["$ref"] = wrapped[0]["$ref"]
    return out


def to_v2_path(item):
    out = {}
    for method, operation in item.items():
        if method == "parameters":
            out[method] = [_v2_param(p) for p in operation]
            continue
        converted = {k: v for k, v in operation.items() if k not in ("requestBody", "responses", "parameters")}
        converted["parameters"] = [_v2_param(p) for p in operation.get("parameters") or []]
        body = operation.get("requestBody")
        if body:
            media = list(body["content"])
            converted["consumes"] = media
            converted["parameters"].append({"name": "body", "in": "body", "required": True,
                                            "schema": to_v2_schema(body["content"][media[0]]["schema"])})
        converted["produces"] = list(JSON_YAML)
        converted["responses"] = {code: {"description": response.get("description", ""),
                                         **({"schema": to_v2_schema(response["content"]["application/json"]["schema"])}
                                            if "content" in response else {})}
                                  for code, response in operation.get("responses", {}).items()}
        out[method] = converted
    return out


def _v2_param(param):
    converted = {k: v for k, v in param.items() if k != "schema"}
    converted.update((param.get("schema") or {}))
    return converted
