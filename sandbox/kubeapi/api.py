"""The emulator's API semantics, independent of HTTP: create/get/list/update/patch/delete/watch.

Behaviour follows the real API server where our clients can see it: optimistic concurrency (409 on a
stale resourceVersion), no-op updates that keep the resourceVersion, ``generation`` bumped on spec
changes only, status subresources, finalizers and ``deletionTimestamp``, CRD schema validation,
mutating admission webhooks, server-side dry-run, and watches that resume from a resourceVersion.
"""

import base64
import datetime
import json
import random
import string
import threading
import time
import uuid

import yaml
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity
from ansible_collections.katalyst.colocation.plugins.module_utils.selectors import parse_field_selector, parse_label_selector

from sandbox.kubeapi import admission, decoding, eviction, fieldmanager, openapi, patching, schema
from sandbox.kubeapi.resources import Registry
from sandbox.kubeapi.store import Store, json_copy

CRD_KEY = "apiextensions.k8s.io/customresourcedefinitions"
MUTATING_KEY = "admissionregistration.k8s.io/mutatingwebhookconfigurations"
VALIDATING_KEY = "admissionregistration.k8s.io/validatingwebhookconfigurations"
NAMESPACE_KEY = "/namespaces"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class APIError(Exception):
    """An error the API answers with a ``Status`` object."""

    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self):
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "details": self.details, "code": self.code}


def not_found(rtype, name):
    return APIError(404, "NotFound", '%s "%s" not found' % (rtype.plural + ("." + rtype.group if rtype.group else ""), name),
                    {"name": name, "group": rtype.group, "kind": rtype.plural})


def conflict(rtype, name, why):
    return APIError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": %s'
                    % (rtype.plural + ("." + rtype.group if rtype.group else ""), name, why),
                    {"name": name, "group": rtype.group, "kind": rtype.plural})


def apply_conflict(conflicts):
    """409 as structured-merge-diff words it: ``Apply failed with 1 conflict: conflict with "m": .data.x``."""
    causes = [{"reason": "FieldManagerConflict", "message": "conflict with %s" % fieldmanager.print_manager(entry),
               "field": fieldmanager.readable(path)} for entry, path in conflicts]
    if len(conflicts) == 1:
        message = "Apply failed with 1 conflict: %s: %s" % (causes[0]["message"], causes[0]["field"])
    else:
        lines = []
        for manager in sorted({c["message"][len("conflict with "):] for c in causes}):
            lines.append("conflicts with %s:" % manager)
            lines.extend("- %s" % c["field"] for c in causes if c["message"] == "conflict with " + manager)
        message = "Apply failed with %d conflicts: %s" % (len(conflicts), "\n".join(lines))
    return APIError(409, "Conflict", message, {"causes": causes})


def invalid(rtype, name, causes):
    message = '%s "%s" is invalid: %s' % (rtype.kind, name, "; ".join(causes))
    causes = [{"reason": "FieldValueInvalid", "message": c, "field": c.split(":")[0]} for c in causes]
    return APIError(422, "Invalid", message, {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": causes})


def default_pod(pod):
    """What the API server does to a new pod: requests default to limits, status Pending with its QoS class."""
    requests, limits, guaranteed = {}, {}, True
    spec = pod.setdefault("spec", {})
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        resources = container.setdefault("resources", {})
        for name, value in (resources.get("limits") or {}).items():
            resources.setdefault("requests", {}).setdefault(name, value)
        try:
            wanted = {k: parse_quantity(str(v)) for k, v in (resources.get("requests") or {}).items() if k in ("cpu", "memory")}
            capped = {k: parse_quantity(str(v)) for k, v in (resources.get("limits") or {}).items() if k in ("cpu", "memory")}
        except ValueError as exc:
            raise APIError(422, "Invalid", "Pod \"%s\" is invalid: %s" % (pod["metadata"].get("name"), exc))
        for total, found in ((requests, wanted), (limits, capped)):
            for name, quantity in found.items():
                if not quantity.is_zero():
                    total[name] = total[name] + quantity if name in total else quantity
        if set(k for k, q in capped.items() if not q.is_zero()) != {"cpu", "memory"}:
            guaranteed = False
    if not requests and not limits:
        qos = "BestEffort"
    elif guaranteed and requests == limits:
        qos = "Guaranteed"
    else:
        qos = "Burstable"
    pod["status"] = {"phase": "Pending", "qosClass": qos}
    return pod


class WriteOptions:
    """What a write request says besides its body: dry run, field validation, field manager, force; warnings go back."""

    def __init__(self, dry_run=False, field_validation="", field_manager="", user_agent="", force=False):
        if field_validation not in ("",) + decoding.FIELD_VALIDATION:
            raise APIError(400, "BadRequest", 'fieldValidation must be one of "Ignore", "Warn" or "Strict", not "%s"' % field_validation)
        self.dry_run = dry_run
        self.field_validation = field_validation or "Warn"     # the server's default since 1.23
        self.field_manager = field_manager
        self.user_agent = user_agent
        self.force = force
        self.warnings = []

    @property
    def manager(self):
        """managerOrUserAgent: the fieldManager, else the User-Agent up to its first '/'."""
        return self.field_manager or "".join(c for c in self.user_agent.split("/")[0] if c.isprintable())[:128]


def _spec_part(obj):
    """What ``generation`` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _comparable(obj):
    clean = json_copy(obj)
    clean.get("metadata", {}).pop("resourceVersion", None)
    meta = clean.get("metadata", {})
    # ownership counts, the time an entry was written does not (a no-op keeps the resourceVersion)
    meta["managedFields"] = [{k: v for k, v in entry.items() if k != "time"} for entry in meta.get("managedFields") or []]
    return clean


class KubeAPI:
    def __init__(self, history_limit=10000):
        self.registry = Registry()
        self.store = Store(history_limit=history_limit)
        self.write_lock = threading.RLock()
        self.openapi = openapi.OpenAPIDocuments(self.registry, self.crd_of)
        for name in DEFAULT_NAMESPACES:
            self._ensure_namespace(name)

    def _ensure_namespace(self, name):
        if self.store.get(NAMESPACE_KEY, "", name) is None:
            self.store.put(NAMESPACE_KEY, {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": now_rfc3339()},
                                           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}, "ADDED")

    def restore(self, data):
        """Load persisted state and serve the CRDs it holds again."""
        self.store.load(data)
        for crd in self.store.list(CRD_KEY)[0]:
            self.registry.register_crd(crd)
        for name in DEFAULT_NAMESPACES:
            self._ensure_namespace(name)

    def crd_of(self, rtype):
        """The stored CRD that serves ``rtype`` (None for built-ins)."""
        return self.store.get(CRD_KEY, "", rtype.crd) if rtype.crd else None

    # -- decoding and field ownership ---------------------------------------------------------
    def _decode(self, rtype, obj, options):
        """The body as the real server decodes it: 400 on a wrong JSON type (built-ins), unknown fields dropped and
        reported (a warning, or 400 with fieldValidation=Strict); CRD values are checked by their schema later."""
        kind_schema, schemas = openapi.kind_schema(rtype, self.crd_of(rtype))
        if kind_schema is None or options.field_validation == "Ignore" and rtype.crd:
            return obj
        decoded, result = decoding.Decoder(schemas, check_types=not rtype.crd).decode(obj, kind_schema, rtype.kind)
        if result.type_error:
            raise APIError(400, "BadRequest", decoding.type_error_message(rtype.kind, rtype.version, result.type_error))
        if result.unknown and options.field_validation == "Strict":
            raise APIError(400, "BadRequest", decoding.unknown_fields_message(rtype.kind, rtype.version, result.unknown))
        if options.field_validation == "Warn":
            options.warnings.extend('unknown field "%s"' % path for path in result.unknown)
        return decoded if not rtype.crd else obj

    def _field_manager(self, rtype):
        kind_schema, schemas = openapi.kind_schema(rtype, self.crd_of(rtype))
        return fieldmanager.FieldManager(kind_schema or {}, schemas, rtype.api_version, rtype.status)

    # -- reads --------------------------------------------------------------------------------
    def get(self, rtype, namespace, name):
        obj = self.store.get(rtype.storage_key, namespace, name)
        if obj is None:
            raise not_found(rtype, name)
        return self._present(rtype, obj)

    def _present(self, rtype, obj):
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        return obj

    def list(self, rtype, namespace, label_selector=None, field_selector=None, limit=None, continue_token=None):
        labels, fields = self._selectors(label_selector, field_selector)
        items, rv = self.store.list(rtype.storage_key, namespace)
        items = [self._present(rtype, o) for o in items if labels.matches(o["metadata"].get("labels")) and fields.matches(o)]
        meta = {"resourceVersion": str(rv)}
        if continue_token:
            # the token holds the last key served; items are sorted by (namespace, name), so resume after it
            try:
                after = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                after = (after["ns"], after["name"])
            except (ValueError, KeyError, TypeError):
                raise APIError(400, "BadRequest", "invalid continue token")
            items = [o for o in items if (o["metadata"].get("namespace") or "", o["metadata"]["name"]) > after]
        if limit and 0 < int(limit) < len(items):
            items, rest = items[:int(limit)], len(items) - int(limit)
            last = items[-1]["metadata"]
            token = json.dumps({"ns": last.get("namespace") or "", "name": last["name"]}).encode()
            meta.update({"continue": base64.urlsafe_b64encode(token).decode(), "remainingItemCount": rest})
        return {"kind": rtype.kind + "List", "apiVersion": rtype.api_version, "metadata": meta, "items": items}

    @staticmethod
    def _selectors(label_selector, field_selector):
        try:
            return parse_label_selector(label_selector), parse_field_selector(field_selector)
        except ValueError as exc:
            raise APIError(400, "BadRequest", str(exc))

    # -- writes -------------------------------------------------------------------------------
    def create(self, rtype, namespace, body, dry_run=False, options=None, managed=None):
        """POST; ``managed``: the managedFields an apply that creates the object computed (else the creator owns all)."""
        options = options or WriteOptions(dry_run)
        if not isinstance(body, dict):
            raise APIError(400, "BadRequest", "the request body must be a JSON object")
        obj = self._decode(rtype, json_copy(body), options)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choice(string.ascii_lowercase + string.digits) for _index in range(5))
        if not meta.get("name"):
            raise invalid(rtype, "", ["metadata.name: Required value: name or generateName is required"])
        if rtype.namespaced:
            if namespace is None:
                raise APIError(405, "MethodNotAllowed", "create needs a namespace in the path for %s" % rtype.plural)
            if meta.get("namespace") not in (None, "", namespace):
                raise APIError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
            if self.store.get(NAMESPACE_KEY, "", namespace) is None:
                raise APIError(404, "NotFound", 'namespaces "%s" not found' % namespace, {"name": namespace, "kind": "namespaces"})
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        with self.write_lock:
            if self.store.get(rtype.storage_key, namespace if rtype.namespaced else "", meta["name"]) is not None:
                raise APIError(409, "AlreadyExists", '%s "%s" already exists' % (rtype.plural, meta["name"]),
                               {"name": meta["name"], "group": rtype.group, "kind": rtype.plural})
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            for field in ("resourceVersion", "deletionTimestamp", "managedFields"):
                meta.pop(field, None)
            if rtype.generation:
                meta["generation"] = 1
            if rtype.crd and rtype.status:
                obj.pop("status", None)
            if rtype.kind == "Pod":
                default_pod(obj)
            obj = self._admit_and_validate(rtype, obj, None, "CREATE", "", dry_run)
            if managed is not None:
                obj["metadata"]["managedFields"] = managed
            else:
                obj = self._field_manager(rtype).update(None, obj, options.manager)
            if rtype.kind == "CustomResourceDefinition":
                obj = self._establish_crd(obj)
            obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
            return self._store(rtype, obj, "ADDED", dry_run)

    def update(self, rtype, namespace, name, body, dry_run=False, subresource="", options=None):
        options = options or WriteOptions(dry_run)
        if not isinstance(body, dict):
            raise APIError(400, "BadRequest", "the request body must be a JSON object")
        with self.write_lock:
            old = self.store.get(rtype.storage_key, namespace if rtype.namespaced else "", name)
            if old is None:
                raise not_found(rtype, name)
            body_name = (body.get("metadata") or {}).get("name")
            if body_name not in (None, name):
                raise APIError(400, "BadRequest", "the name of the object (%s) does not match the name on the URL (%s)" % (body_name, name))
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise conflict(rtype, name, "the object has been modified; please apply your changes to the latest version and try again")
            return self._write(rtype, old, self._decode(rtype, json_copy(body), options), subresource, dry_run, options)

    def patch(self, rtype, namespace, name, patch_body, content_type, dry_run=False, subresource="", options=None):
        options = options or WriteOptions(dry_run)
        if content_type.split(";")[0].strip() == patching.APPLY_PATCH:
            return self.apply(rtype, namespace, name, patch_body, options, subresource)
        with self.write_lock:
            old = self.store.get(rtype.storage_key, namespace if rtype.namespaced else "", name)
            if old is None:
                raise not_found(rtype, name)
            current = self._present(rtype, json_copy(old))
            try:
                new = patching.apply_patch(current, patch_body, content_type, rtype.kind if not rtype.crd else None)
            except patching.PatchError as exc:
                raise APIError(exc.code, {415: "UnsupportedMediaType", 400: "BadRequest"}.get(exc.code, "Invalid"), exc.message)
            wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise conflict(rtype, name, "the object has been modified; please apply your changes to the latest version and try again")
            return self._write(rtype, old, self._decode(rtype, new, options), subresource, dry_run, options)

    def apply(self, rtype, namespace, name, raw, options, subresource=""):
        """Server-side apply: create when absent, else merge ``raw`` (YAML or JSON) as ``options.field_manager``."""
        applied = self._applied_config(rtype, namespace, name, raw, options)
        manager = self._field_manager(rtype)
        with self.write_lock:
            old = self.store.get(rtype.storage_key, namespace if rtype.namespaced else "", name)
            if old is None and subresource:
                raise not_found(rtype, name)
            try:
                new = manager.apply(self._present(rtype, json_copy(old)) if old else None, applied, options.field_manager, options.force, subresource)
            except fieldmanager.ApplyConflict as exc:
                raise apply_conflict(exc.conflicts)
            if old is None:
                managed = new["metadata"].pop("managedFields")
                new["metadata"]["name"] = name
                if rtype.namespaced:
                    new["metadata"]["namespace"] = namespace
                return self.create(rtype, namespace, new, options.dry_run, options, managed=managed)
            return self._write(rtype, old, new, subresource, options.dry_run, options, managed=new["metadata"]["managedFields"])

    def _applied_config(self, rtype, namespace, name, raw, options):
        if not options.field_manager:
            raise APIError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                           {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                               {"reason": "FieldValueRequired", "message": "Required value: is required for apply patch", "field": "fieldManager"}]})
        try:
            applied = yaml.safe_load(raw.decode() if isinstance(raw, bytes) else raw)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise APIError(400, "BadRequest", "error decoding YAML: %s" % exc)
        if not isinstance(applied, dict):
            raise APIError(400, "BadRequest", "the apply configuration must be an object")
        meta = applied.get("metadata") or {}
        if meta.get("name") != name:
            raise APIError(400, "BadRequest", "the name of the object (%s) does not match the name on the URL (%s)" % (meta.get("name"), name))
        if rtype.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise APIError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if (applied.get("apiVersion"), applied.get("kind")) != (rtype.api_version, rtype.kind):
            raise APIError(400, "BadRequest", "the apply configuration is %s %s, not %s %s (no conversion here)"
                           % (applied.get("apiVersion"), applied.get("kind"), rtype.api_version, rtype.kind))
        return self._decode(rtype, applied, options)

    def _write(self, rtype, old, new, subresource, dry_run, options=None, managed=None):
        """Shared update path: subresource rules, metadata, validation, admission, generation, finalizers."""
        if subresource == "status":
            merged = json_copy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            if rtype.kind == "Node":  # the real nodes/status strategy keeps only the spec: metadata changes stand
                for field in ("labels", "annotations"):
                    if field in (new.get("metadata") or {}):
                        merged["metadata"][field] = new["metadata"][field]
                    else:
                        merged["metadata"].pop(field, None)
            new = merged
        elif rtype.status:
            if "status" in old:
                new["status"] = json_copy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        new = self._admit_and_validate(rtype, new, old, "UPDATE", subresource, dry_run)
        if managed is not None:
            new["metadata"]["managedFields"] = managed
        else:
            new = self._field_manager(rtype).update(old, new, (options or WriteOptions()).manager, subresource)
        if rtype.generation and _spec_part(new) != _spec_part(old):
            meta = new["metadata"]
            meta["generation"] = int(old_meta.get("generation") or 1) + 1
        new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
        if rtype.kind == "CustomResourceDefinition" and subresource != "status":
            new = self._establish_crd(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            if dry_run:
                return new
            return self._remove(rtype, new)
        if _comparable(new) == _comparable(self._present(rtype, json_copy(old))):
            return self._present(rtype, old)      # a no-op keeps the resourceVersion, as on a real server
        return self._store(rtype, new, "MODIFIED", dry_run)

    def _admit_and_validate(self, rtype, obj, old, operation, subresource, dry_run):
        """Mutating webhooks, then the CRD schema, then validating webhooks: the real server's order."""
        hooks = rtype.group != "admissionregistration.k8s.io"
        mutating = self.store.list(MUTATING_KEY)[0] if hooks else []
        validate = getattr(admission, "run_validating_webhooks", None)   # offered by newer admission modules
        validating = self.store.list(VALIDATING_KEY)[0] if hooks and validate else []
        request = {"operation": operation, "subResource": subresource, "dryRun": bool(dry_run),
                   "resource": {"group": rtype.group, "version": rtype.version, "resource": rtype.plural},
                   "kind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
                   "name": obj["metadata"].get("name"), "namespace": obj["metadata"].get("namespace", ""),
                   "oldObject": self._present(rtype, json_copy(old)) if old else None,
                   "userInfo": {"username": "system:admin", "groups": ["system:masters"]}}
        try:
            if mutating:
                obj = admission.run_mutating_webhooks(mutating, dict(request, object=self._present(rtype, json_copy(obj))), self.store)
            if rtype.crd:
                obj, errors = schema.validate_and_default(self.store.get(CRD_KEY, "", rtype.crd), rtype.version, obj)
                if errors:
                    raise invalid(rtype, obj["metadata"].get("name", ""), errors)
            if validating:
                validate(validating, dict(request, object=self._present(rtype, json_copy(obj))))
        except admission.AdmissionDenied as exc:
            raise APIError(exc.code, "Forbidden" if exc.code < 500 else "InternalError", exc.message)
        return obj

    def _establish_crd(self, crd):
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        expected = "%s.%s" % (names.get("plural"), spec.get("group"))
        if crd["metadata"]["name"] != expected:
            raise invalid(self.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions"), crd["metadata"]["name"],
                          ['metadata.name: Invalid value: "%s": must be spec.names.plural+"."+spec.group' % crd["metadata"]["name"]])
        stamp = now_rfc3339()
        crd["status"] = {"acceptedNames": json_copy(names),
                         "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
                         "conditions": [{"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                                         "message": "no conflicts found", "lastTransitionTime": stamp},
                                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                                         "message": "the initial names have been accepted", "lastTransitionTime": stamp}]}
        old = self.store.get(CRD_KEY, "", crd["metadata"]["name"])
        if old and (old.get("status") or {}).get("conditions"):
            # keep transition times when nothing changed, so re-applying a CRD is a no-op
            crd["status"]["conditions"] = old["status"]["conditions"]
        return crd

    def _store(self, rtype, obj, event, dry_run):
        """Store a created or updated object (a CRD's kind is served from then on); a dry run returns it unstored."""
        if dry_run:
            return obj
        stored = self.store.put(rtype.storage_key, obj, event)
        if rtype.kind == "CustomResourceDefinition":
            self.registry.register_crd(stored)
        return stored

    def _remove(self, rtype, obj):
        meta = obj["metadata"]
        removed = self.store.remove(rtype.storage_key, meta.get("namespace"), meta["name"])
        if rtype.storage_key == NAMESPACE_KEY:
            self.store.drop_namespace(meta["name"])      # what the namespace controller does, at once
        if rtype.kind == "CustomResourceDefinition":
            for served in [t for t in self.registry.types.values() if t.crd == meta["name"]][:1]:
                self.store.drop_type(served.storage_key)
            self.registry.unregister_crd(meta["name"])
        return removed

    def delete(self, rtype, namespace, name, dry_run=False, preconditions=None):
        with self.write_lock:
            old = self.store.get(rtype.storage_key, namespace if rtype.namespaced else "", name)
            if old is None:
                raise not_found(rtype, name)
            wanted = (preconditions or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise conflict(rtype, name, "the ResourceVersion in the precondition does not match")
            wanted_uid = (preconditions or {}).get("uid")
            if wanted_uid and wanted_uid != old["metadata"].get("uid"):
                raise conflict(rtype, name, "the UID in the precondition does not match")
            old = self._present(rtype, old)
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp") or dry_run:
                    return old
                old["metadata"]["deletionTimestamp"] = now_rfc3339()
                old["metadata"]["deletionGracePeriodSeconds"] = 0
                return self.store.put(rtype.storage_key, old, "MODIFIED")
            if dry_run:
                return old
            return self._remove(rtype, old)

    def delete_collection(self, rtype, namespace, label_selector=None, field_selector=None, dry_run=False):
        deleted = []
        for obj in self.list(rtype, namespace, label_selector, field_selector)["items"]:
            try:
                deleted.append(self.delete(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"], dry_run))
            except APIError as exc:
                if exc.code != 404:
                    raise
        return {"kind": rtype.kind + "List", "apiVersion": rtype.api_version, "metadata": {}, "items": deleted}

    def bind(self, namespace, name, binding, dry_run=False):
        """POST pods/<name>/binding: what kube-scheduler does to place a pod."""
        pods = self.registry.get("", "v1", "pods")
        target = (binding.get("target") or {}).get("name")
        if not target:
            raise invalid(pods, name, ["target.name: Required value"])
        with self.write_lock:
            pod = self.store.get(pods.storage_key, namespace, name)
            if pod is None:
                raise not_found(pods, name)
            if (pod.get("spec") or {}).get("nodeName"):
                raise conflict(pods, name, "pod %s is already assigned to node \"%s\"" % (name, pod["spec"]["nodeName"]))
            pod["spec"]["nodeName"] = target
            conditions = [c for c in (pod.setdefault("status", {}).get("conditions") or []) if c.get("type") != "PodScheduled"]
            conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()})
            pod["status"]["conditions"] = conditions
            if not dry_run:
                self.store.put(pods.storage_key, self._present(pods, pod), "MODIFIED")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def evict(self, namespace, name, body, dry_run=False):
        """POST pods/<name>/eviction: delete the pod unless its PodDisruptionBudget forbids it (429, sandbox/kubeapi/eviction.py)."""
        pods = self.registry.get("", "v1", "pods")
        budgets = self.registry.get("policy", "v1", "poddisruptionbudgets")
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise APIError(400, "BadRequest", "name in URL does not match name in Eviction object")
        with self.write_lock:
            pod = self.store.get(pods.storage_key, namespace, name)
            if pod is None:
                raise not_found(pods, name)
            namespace_pods = self.list(pods, namespace)["items"]
            eviction.check_eviction(pod, self.list(budgets, namespace)["items"], namespace_pods, APIError)
            self.delete(pods, namespace, name, dry_run or "All" in ((body.get("deleteOptions") or {}).get("dryRun") or []),
                        (body.get("deleteOptions") or {}).get("preconditions"))
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    # -- watch --------------------------------------------------------------------------------
    def watch(self, rtype, namespace, resource_version, label_selector=None, field_selector=None, timeout=60.0,
              bookmarks=False, stopped=lambda: False, bookmark_interval=5.0, send_initial_events=False):
        """Yield watch events (dicts) until ``timeout`` or ``stopped()``; with ``send_initial_events`` (a watch list, as
        kubectl wait does) the initial ADDED events end with a bookmark annotated ``k8s.io/initial-events-end``."""
        labels, fields = self._selectors(label_selector, field_selector)

        def visible(obj):
            return obj is not None and (namespace is None or obj["metadata"].get("namespace") == namespace) \
                and labels.matches(obj["metadata"].get("labels")) and fields.matches(obj)

        deadline = time.monotonic() + timeout
        if resource_version in (None, "", "0") or send_initial_events:
            listing = self.list(rtype, namespace, label_selector, field_selector)
            for item in listing["items"]:
                yield {"type": "ADDED", "object": item}
            last_rv = int(listing["metadata"]["resourceVersion"])
            if send_initial_events:
                yield {"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version,
                                                      "metadata": {"resourceVersion": str(last_rv),
                                                                   "annotations": {"k8s.io/initial-events-end": "true"}}}}
        else:
            try:
                last_rv = int(resource_version)
            except ValueError:
                raise APIError(400, "BadRequest", "invalid resourceVersion %r" % resource_version)
        last_sent = time.monotonic()
        while not stopped():
            events = self.store.events_after(last_rv)
            if events is None:
                yield {"type": "ERROR", "object": APIError(410, "Expired", "too old resource version: %d (%d)"
                                                           % (last_rv, self.store.compacted_rv)).status()}
                return
            for event in events:
                last_rv = event.rv
                if event.storage_key != rtype.storage_key:
                    continue
                now_visible, was_visible = visible(event.obj), visible(event.old)
                if event.type == "DELETED":
                    kind = "DELETED" if was_visible else None
                elif event.type == "ADDED":
                    kind = "ADDED" if now_visible else None
                else:
                    kind = {(True, True): "MODIFIED", (True, False): "ADDED", (False, True): "DELETED"}.get((now_visible, was_visible))
                if kind:
                    obj = self._present(rtype, json_copy(event.obj))
                    yield {"type": kind, "object": obj}
                    last_sent = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if bookmarks and time.monotonic() - last_sent >= bookmark_interval:
                yield {"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version,
                                                      "metadata": {"resourceVersion": str(max(last_rv, self.store.rv))}}}
                last_sent = time.monotonic()
            self.store.wait_for_change(last_rv, min(remaining, 0.5))
