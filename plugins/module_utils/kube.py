# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""One Kubernetes client for modules and daemons, on the official ``kubernetes`` package.

Authentication takes kubernetes.core's option names and ``K8S_AUTH_*`` environment variables, so
AWX's built-in Kubernetes credential works unchanged. Objects are plain dicts. Writes retry on 409
Conflict (re-read, re-apply the mutation) and on transient failures (5xx, 429, timeouts, refused
connections) with exponential backoff; ``dry_run=True`` uses the API server's dry-run for check mode.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import time
import uuid

try:
    from kubernetes import client as kube_client, config as kube_config
    from kubernetes.client.rest import ApiException
    from kubernetes.dynamic import DynamicClient
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR = None
except ImportError as _import_error:  # pragma: no cover - reported by the caller
    kube_client = kube_config = DynamicClient = None

    class ApiException(Exception):
        status = None
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = _import_error

try:
    import urllib3
    TRANSIENT_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
except ImportError:  # pragma: no cover
    TRANSIENT_ERRORS = (ConnectionError, TimeoutError)

# Option name -> environment variable, as kubernetes.core names them.
AUTH_ENV = {
    "kubeconfig": "K8S_AUTH_KUBECONFIG",
    "context": "K8S_AUTH_CONTEXT",
    "host": "K8S_AUTH_HOST",
    "api_key": "K8S_AUTH_API_KEY",
    "username": "K8S_AUTH_USERNAME",
    "password": "K8S_AUTH_PASSWORD",
    "validate_certs": "K8S_AUTH_VERIFY_SSL",
    "ca_cert": "K8S_AUTH_SSL_CA_CERT",
    "client_cert": "K8S_AUTH_CERT_FILE",
    "client_key": "K8S_AUTH_KEY_FILE",
    "proxy": "K8S_AUTH_PROXY",
    "no_proxy": "K8S_AUTH_NO_PROXY",
    "proxy_headers": "K8S_AUTH_PROXY_HEADERS",
    "impersonate_user": "K8S_AUTH_IMPERSONATE_USER",
    "impersonate_groups": "K8S_AUTH_IMPERSONATE_GROUPS",
}
TRANSIENT_STATUS = (429, 500, 502, 503, 504)


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 for transport errors)."""

    def __init__(self, message, status=0, reason="", body=None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.body = body or {}


def _truthy(value):
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes", "on")


def resolve_auth(params, environ=None):
    """Auth settings: explicit parameters first, then ``K8S_AUTH_*`` variables."""
    environ = os.environ if environ is None else environ
    auth = {}
    for option, variable in AUTH_ENV.items():
        value = (params or {}).get(option)
        if value is None and environ.get(variable) not in (None, ""):
            value = environ[variable]
            if option == "validate_certs":
                value = _truthy(value)
            elif option == "impersonate_groups":
                value = [group.strip() for group in value.split(",") if group.strip()]
            elif option == "proxy_headers":
                value = json.loads(value)
        if value is not None:
            auth[option] = value
    return auth


def require_kubernetes(module):
    """Fail an Ansible module with one clear message when the kubernetes Python package is missing on its host."""
    if not HAS_KUBERNETES:
        module.fail_json(msg="the kubernetes Python package is required on the host running this module (pip install kubernetes): %s"
                         % KUBERNETES_IMPORT_ERROR)


# Auth options copied as they are onto the client Configuration when set.
AUTH_CONFIGURATION_ATTRIBUTES = (("ca_cert", "ssl_ca_cert"), ("client_cert", "cert_file"), ("client_key", "key_file"),
                                 ("proxy", "proxy"), ("no_proxy", "no_proxy"), ("proxy_headers", "proxy_headers"))


def build_api_client(auth):
    """A ``kubernetes.client.ApiClient`` from resolved auth settings."""
    if not HAS_KUBERNETES:
        raise KubeError("the kubernetes Python package is required (pip install kubernetes): %s" % KUBERNETES_IMPORT_ERROR)
    configuration = kube_client.Configuration()
    kubeconfig = auth.get("kubeconfig")
    try:
        if isinstance(kubeconfig, dict):
            kube_config.load_kube_config_from_dict(kubeconfig, context=auth.get("context"), client_configuration=configuration)
        elif kubeconfig or not auth.get("host"):
            path = os.path.expanduser(kubeconfig or "~/.kube/config")
            if os.path.exists(path):
                kube_config.load_kube_config(config_file=path, context=auth.get("context"), client_configuration=configuration)
            elif kubeconfig:
                raise KubeError("kubeconfig %s does not exist" % path)
            else:
                kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException as exc:
        raise KubeError("cannot load Kubernetes configuration: %s" % exc)
    if auth.get("host"):
        configuration.host = auth["host"]
    if auth.get("api_key"):
        configuration.api_key = {"authorization": "Bearer %s" % auth["api_key"]}
    if auth.get("username"):
        configuration.username = auth["username"]
        configuration.password = auth.get("password")
    if "validate_certs" in auth:
        configuration.verify_ssl = bool(auth["validate_certs"])
    for option, attribute in AUTH_CONFIGURATION_ATTRIBUTES:
        if auth.get(option):
            setattr(configuration, attribute, auth[option])
    api_client = kube_client.ApiClient(configuration)
    if auth.get("impersonate_user"):
        api_client.set_default_header("Impersonate-User", auth["impersonate_user"])
    for group in auth.get("impersonate_groups") or []:
        api_client.set_default_header("Impersonate-Group", group)
    return api_client


def _error_from(exc, what):
    status = getattr(exc, "status", 0) or 0
    body = {}
    try:
        body = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        pass
    message = body.get("message") or getattr(exc, "reason", None) or str(exc)
    return KubeError("%s: %s (HTTP %s)" % (what, message, status or "error"), status, body.get("reason", ""), body)


def _retry_after(exc, ceiling=30.0):
    """Seconds a 429/503 answer's ``Retry-After`` header asks the client to wait (0 when absent or not a number)."""
    value = (getattr(exc, "headers", None) or {}).get("Retry-After")
    try:
        return min(max(float(value), 0.0), ceiling)
    except (TypeError, ValueError):
        return 0.0


def _plain(_client, data):
    """The dynamic client's serializer for KubeClient: the decoded JSON as it is (its default wraps every field in a
    ResourceField, which ``to_dict()`` then unwraps: a millisecond per object, a second per LIST of 5,000 nodes)."""
    return data


class KubeClient:
    """Dict-in, dict-out access to any resource by apiVersion and kind, with retries."""

    PATCH_TYPES = {"merge": "application/merge-patch+json", "json": "application/json-patch+json",
                   "strategic": "application/strategic-merge-patch+json"}

    def __init__(self, auth=None, api_client=None, retries=5, backoff_seconds=0.2, conflict_retries=10, sleep=time.sleep, on_retry=None,
                 may_write=None):
        self.api_client = api_client or build_api_client(resolve_auth(auth or {}))
        self.on_retry = on_retry      # on_retry(reason): a daemon counts its retries (reason: the HTTP status or "transport")
        # may_write(): asked before every create/replace/patch/delete (mutate and emit_event go through them); a
        # leader-elected daemon refuses writes once its Lease may have passed to another replica
        self.may_write = may_write
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.conflict_retries = conflict_retries
        self.sleep = sleep
        self._dynamic = None
        self._resources = {}      # (apiVersion, kind) -> the discovered resource (a search of discovery per call otherwise)
        self.calls = 0

    @property
    def dynamic(self):
        if self._dynamic is None:
            self._dynamic = self._call("discovery", lambda: DynamicClient(self.api_client))
        return self._dynamic

    def resource(self, api_version, kind):
        found = self._resources.get((api_version, kind))
        if found is None:
            found = self._resources[(api_version, kind)] = self._discover(api_version, kind)
        return found

    def _discover(self, api_version, kind):
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except Exception as exc:  # pylint: disable=broad-except
            # A CRD created moments ago: refresh discovery once (retried like any call: a 503 or a reset connection
            # while discovering is not "not served", whose 404 callers take for an object that is gone).
            try:
                return self._call("discover %s %s" % (api_version, kind), lambda: self._rediscover(api_version, kind))
            except KubeError as error:
                if error.status in TRANSIENT_STATUS or error.status == 0:
                    raise
                raise KubeError("the API server does not serve %s %s: %s" % (api_version, kind, exc), 404)
            except Exception:  # pylint: disable=broad-except
                raise KubeError("the API server does not serve %s %s: %s" % (api_version, kind, exc), 404)

    def _rediscover(self, api_version, kind):
        self._resources.clear()
        self.dynamic.resources.invalidate_cache()
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def _call(self, what, func):
        """Run ``func`` with retries on transient failures; API errors become KubeError."""
        delay = self.backoff_seconds
        for attempt in range(self.retries + 1):
            self.calls += 1
            try:
                return func()
            except ApiException as exc:
                if exc.status in TRANSIENT_STATUS and attempt < self.retries:
                    self._retrying(str(exc.status))
                    self.sleep(max(delay, _retry_after(exc)))     # the server's Retry-After (429, 503) when it asks for longer
                    delay *= 2
                    continue
                raise _error_from(exc, what)
            except TRANSIENT_ERRORS as exc:
                if attempt < self.retries:
                    self._retrying("transport")
                    self.sleep(delay)
                    delay *= 2
                    continue
                raise KubeError("%s: %s" % (what, exc), 0)
        raise KubeError("%s: giving up" % what)   # pragma: no cover

    def _write(self, what, func):
        if self.may_write is not None and not self.may_write():
            raise KubeError("%s refused: this replica has not renewed its Lease within the renew deadline" % what)
        return self._call(what, func)

    def _retrying(self, reason):
        if self.on_retry is not None:
            self.on_retry(reason)

    @staticmethod
    def _what(verb, api_version, kind, name=None, namespace=None):
        target = "%s/%s" % (namespace, name) if namespace and name else (name or "")
        return "%s %s %s %s" % (verb, kind, target, api_version)

    # -- reads --------------------------------------------------------------------------------
    def get(self, api_version, kind, name, namespace=None):
        """The object as a dict, or None when it does not exist."""
        res = self.resource(api_version, kind)
        try:
            return self._call(self._what("get", api_version, kind, name, namespace),
                              lambda: res.get(name=name, namespace=namespace, serializer=_plain))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version, kind, namespace=None, label_selector=None, field_selector=None):
        res = self.resource(api_version, kind)
        result = self._call(self._what("list", api_version, kind, namespace=namespace),
                            lambda: res.get(namespace=namespace, label_selector=label_selector, field_selector=field_selector, serializer=_plain))
        return result.get("items") or []

    # -- writes -------------------------------------------------------------------------------
    def create(self, obj, dry_run=False):
        res = self.resource(obj["apiVersion"], obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace")
        return self._write(self._what("create", obj["apiVersion"], obj["kind"], obj["metadata"].get("name"), namespace),
                           lambda: res.create(body=obj, namespace=namespace, dry_run="All" if dry_run else None, serializer=_plain))

    def replace(self, obj, dry_run=False, subresource=None):
        res = self.resource(obj["apiVersion"], obj["kind"])
        if subresource:
            res = res.subresources[subresource]
        meta = obj["metadata"]
        return self._write(self._what("replace", obj["apiVersion"], obj["kind"], meta.get("name"), meta.get("namespace")),
                           lambda: res.replace(body=obj, name=meta["name"], namespace=meta.get("namespace"),
                                               dry_run="All" if dry_run else None, serializer=_plain))

    def patch(self, api_version, kind, name, patch, namespace=None, patch_type="merge", subresource=None, dry_run=False):
        res = self.resource(api_version, kind)
        if subresource:
            res = res.subresources[subresource]
        return self._write(self._what("patch", api_version, kind, name, namespace),
                           lambda: res.patch(body=patch, name=name, namespace=namespace, content_type=self.PATCH_TYPES[patch_type],
                                             dry_run="All" if dry_run else None, serializer=_plain))

    def delete(self, api_version, kind, name, namespace=None, dry_run=False):
        """Delete; returns False when the object did not exist."""
        res = self.resource(api_version, kind)
        try:
            self._write(self._what("delete", api_version, kind, name, namespace),
                        lambda: res.delete(name=name, namespace=namespace, dry_run="All" if dry_run else None))
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    def evict(self, name, namespace, grace_period_seconds=None, dry_run=False):
        """POST pods/<name>/eviction (policy/v1): the API server deletes the pod unless a PodDisruptionBudget forbids
        it. That refusal (429 with a ``DisruptionBudget`` cause) is raised at once as KubeError 429, not retried like a
        throttling 429: the budget will not change within the backoff; the caller tries again at its next pass.
        Returns False when the pod is gone already."""
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        options = {}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = int(grace_period_seconds)
        if dry_run:
            options["dryRun"] = ["All"]
        if options:
            body["deleteOptions"] = options
        what = self._what("evict", "v1", "Pod", name, namespace)

        def post():
            try:
                return kube_client.CoreV1Api(self.api_client).create_namespaced_pod_eviction(name, namespace, body, _preload_content=False)
            except ApiException as exc:
                error = _error_from(exc, what)
                if exc.status == 429 and any(cause.get("reason") == "DisruptionBudget"
                                             for cause in (error.body.get("details") or {}).get("causes") or []):
                    raise error from None
                raise
        try:
            self._write(what, post)
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    def mutate(self, api_version, kind, name, mutation, namespace=None, subresource=None, dry_run=False):
        """Read, apply ``mutation(obj_copy)`` (returns the new object or None for no change), replace.

        On 409 Conflict the object is read again and the mutation re-applied (bounded). Returns
        ``(before, after)``; ``after`` is ``before`` when nothing changed, None when the object is gone.
        """
        for _attempt in range(self.conflict_retries + 1):
            current = self.get(api_version, kind, name, namespace)
            if current is None:
                return None, None
            wanted = mutation(copy.deepcopy(current))
            if wanted is None or wanted == current:
                return current, current
            try:
                return current, self.replace(wanted, dry_run=dry_run, subresource=subresource)
            except KubeError as exc:
                if exc.status != 409:
                    raise
        raise KubeError("%s: still conflicting after %d attempts" % (self._what("update", api_version, kind, name, namespace),
                                                                     self.conflict_retries), 409)

    def emit_event(self, involved, reason, message, event_type="Normal", component="katalyst-colocation", now=None, host=None):
        """A core/v1 Event about ``involved`` (an object dict); best effort, never raises.

        ``host``: the node the reporter runs on, written to ``source.host`` and ``reportingInstance`` (the agent's node
        isolation policy admits an agent's Event only when both name the agent's node, docs/rbac.md)."""
        meta = involved.get("metadata") or {}
        stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = meta.get("namespace") or "default"
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": "%s.%s" % (meta.get("name", "object"), uuid.uuid4().hex[:12]), "namespace": namespace},
                 "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"), "name": meta.get("name"),
                                    "namespace": meta.get("namespace"), "uid": meta.get("uid")},
                 "reason": reason, "message": message[:1024], "type": event_type, "source": {"component": component},
                 "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1, "reportingComponent": component}
        if host:
            event["source"]["host"] = event["reportingInstance"] = host
        try:
            return self.create(event)
        except KubeError:
            return None
