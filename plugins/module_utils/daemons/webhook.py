# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""katalyst-webhook: the node mutating admission webhook of online overcommitment (cluster spec 2.5).

    python -m katalyst_colocation.daemons.webhook --config /etc/katalyst/webhook.yaml

HTTPS, AdmissionReview ``admission.k8s.io/v1`` and ``v1beta1`` on ``/node``: for ``UPDATE nodes/status``
it records the kubelet-reported values in ``original_*`` annotations and amplifies cpu and memory
allocatable/capacity (``overcommit.mutate_node``), answering a JSONPatch. An update that passes the
stored amplified values through keeps the true originals (the stored object is the request's
``oldObject``), so nothing is amplified twice. Stateless: run as many as you like behind one Service.
It never denies: a node it cannot read is allowed unchanged (register it with ``failurePolicy: Ignore``).
``/healthz`` and ``/metrics`` are served on the same port.
"""

from __future__ import annotations

import base64
import functools
import gc
import ipaddress
import json
import logging

from . import entrypoint, service
from .http_server import KeepAliveServer, answer_object, server_ssl_context
from .. import overcommit

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

LOG = logging.getLogger("katalyst.webhook")

DEFAULTS = {
    "listen_address": "0.0.0.0",
    "port": 9443,
    "tls_cert_file": "",
    "tls_key_file": "",
    "plain_http": False,          # only for tests and benchmarks: the API server calls webhooks over HTTPS
    "log_level": "info",
    "json_logs": True,
}

WEBHOOK_NAME = "node-mutation.katalyst.kubewharf.io"
WEBHOOK_CONFIGURATION_NAME = "katalyst-node-mutating-webhook-configuration"


def webhook_configuration(url, ca_bundle_pem, timeout_seconds=30, service=None):
    """The MutatingWebhookConfiguration to register (katalyst's chart, with v1 and v1beta1 reviews).

    ``url`` when given, else ``service`` (``{"namespace", "name", "port"}``): the Service that routes to every control
    host's webhook (``webhook_service``)."""
    client_config = {"url": url} if url else {"service": {"namespace": service["namespace"], "name": service["name"],
                                                          "port": int(service.get("port") or 443), "path": "/node"}}
    client_config["caBundle"] = base64.b64encode(ca_bundle_pem.encode()).decode()
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_CONFIGURATION_NAME},
            "webhooks": [{"name": WEBHOOK_NAME, "admissionReviewVersions": ["v1", "v1beta1"],
                          "clientConfig": client_config,
                          "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes/status"],
                                     "scope": "*"}],
                          "failurePolicy": "Ignore", "matchPolicy": "Equivalent", "sideEffects": "None",
                          "timeoutSeconds": timeout_seconds, "reinvocationPolicy": "Never"}]}


SERVICE_PORT_NAME = "https"
ENDPOINTS_MANAGER = "katalyst.kubewharf.io/webhook-role"


def _address_type(address):
    try:
        return "IPv%d" % ipaddress.ip_address(address).version
    except ValueError:
        return "FQDN"


def webhook_service(namespace, name, port, target_port, addresses):
    """A selectorless Service and its EndpointSlices (one per address type, in a stable order) listing every control
    host's webhook: the API server reaches any of them through ``<name>.<namespace>.svc``."""
    labels = {"app.kubernetes.io/name": "katalyst-webhook", "app.kubernetes.io/managed-by": "katalyst.colocation"}
    objects = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"type": "ClusterIP",
                         "ports": [{"name": SERVICE_PORT_NAME, "port": int(port), "targetPort": int(target_port), "protocol": "TCP"}]}}]
    by_type = {}
    for address in addresses:
        by_type.setdefault(_address_type(str(address)), [])
        if str(address) not in by_type[_address_type(str(address))]:
            by_type[_address_type(str(address))].append(str(address))
    for address_type in sorted(by_type):
        objects.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": "%s-%s" % (name, address_type.lower()), "namespace": namespace,
                                     "labels": dict(labels, **{"kubernetes.io/service-name": name,
                                                               "endpointslice.kubernetes.io/managed-by": ENDPOINTS_MANAGER})},
                        "addressType": address_type,
                        "ports": [{"name": SERVICE_PORT_NAME, "port": int(target_port), "protocol": "TCP"}],
                        "endpoints": [{"addresses": [address], "conditions": {"ready": True}} for address in by_type[address_type]]})
    return objects


def _touched(node):
    """The parts of a Node that ``mutate_node`` may change, at their real paths (diffing 25 KB nodes is slow)."""
    view = {}
    if "metadata" in node:
        metadata = node["metadata"]
        view["metadata"] = {"annotations": metadata["annotations"]} if isinstance(metadata, dict) and "annotations" in metadata else {}
    if "status" in node:
        status = node["status"]
        view["status"] = {key: status[key] for key in ("allocatable", "capacity") if key in status} if isinstance(status, dict) else {}
    return view


def _pointer(path, key):
    return path + "/" + key.replace("~", "~0").replace("/", "~1")


def _same(old, new):
    """Equal as JSON: the same object (``mutate_node`` shares what it leaves alone), or equal values of one type."""
    return old is new or (type(old) is type(new) and old == new)


def _diff(old, new, path, operations):
    """JSONPatch operations turning the dict ``old`` into the dict ``new``: ``remove``, ``add`` and ``replace`` key by
    key, down through nested dicts; any other value (lists included) is replaced whole when it differs."""
    for key in old:
        if key not in new:
            operations.append({"op": "remove", "path": _pointer(path, key)})
    for key, value in new.items():
        if key not in old:
            operations.append({"op": "add", "path": _pointer(path, key), "value": value})
        elif isinstance(old[key], dict) and isinstance(value, dict):
            if old[key] is not value:
                _diff(old[key], value, _pointer(path, key), operations)
        elif not _same(old[key], value):
            operations.append({"op": "replace", "path": _pointer(path, key), "value": value})
    return operations


def node_patch(node, mutated):
    """The JSONPatch from ``node`` to ``mutate_node``'s answer for it, over the parts it may change (``_touched``).

    Built directly rather than with ``jsonpatch.make_patch``: the patch is the same once applied, and a review costs
    a few dict lookups instead of a generic diff (the hot path of every kubelet heartbeat)."""
    return _diff(_touched(node), _touched(mutated), "", [])


def review(admission_review, counter=None):
    """The AdmissionReview answer to one AdmissionReview (same apiVersion, same uid)."""
    api_version = admission_review.get("apiVersion") or "admission.k8s.io/v1"
    request = admission_review.get("request") or {}
    response = {"uid": request.get("uid", ""), "allowed": True}
    outcome = "ignored"
    resource = (request.get("resource") or {}).get("resource")
    node = request.get("object")
    if isinstance(node, dict) and resource in (None, "nodes") and (request.get("kind") or {}).get("kind", "Node") == "Node":
        try:
            mutated = overcommit.mutate_node(node, request.get("operation"), request.get("subResource") or "",
                                             old_node=request.get("oldObject") or None)
            operations = node_patch(node, mutated)
            outcome = "unchanged"
            if operations:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(operations, separators=(",", ":")).encode()).decode()
                outcome = "mutated"
        except (ValueError, TypeError, AttributeError) as exc:
            outcome = "error"
            LOG.warning("node %s left unchanged: %s", (node.get("metadata") or {}).get("name"), exc)
            if api_version.endswith("/v1"):
                response["warnings"] = ["katalyst-webhook left the node unchanged: %s" % exc]
    if counter is not None:
        counter.labels(outcome).inc()
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


class WebhookDaemon:
    def __init__(self, config):
        self.config = service.with_defaults(config or {}, DEFAULTS)
        context = None
        if self.config["tls_cert_file"] and self.config["tls_key_file"]:
            context = server_ssl_context(self.config["tls_cert_file"], self.config["tls_key_file"])
        elif not self.config["plain_http"]:
            raise ValueError("tls_cert_file and tls_key_file are required (the API server only calls webhooks over HTTPS)")
        self.daemon = service.Daemon("katalyst-webhook")
        self.counter = None
        if prometheus_client is not None:
            self.counter = prometheus_client.Counter("katalyst_webhook_reviews_total", "Node AdmissionReviews by outcome", ["outcome"],
                                                     registry=self.daemon.registry)
        self.server = KeepAliveServer(self.daemon, {"node": self.handle_raw}, self.config["listen_address"], self.config["port"], context)
        self.daemon.on_reload(self.reload_tls)

    def handle(self, body):
        return 200, review(body, self.counter)

    def handle_raw(self, raw):
        """POST /node: the AdmissionReview answer to a request body, as JSON bytes (400 when it is not a JSON object)."""
        return answer_object(raw, functools.partial(review, counter=self.counter))

    def reload_tls(self):
        """SIGHUP: load a renewed certificate into the running server."""
        if self.config["tls_cert_file"] and self.server.ssl_context is not None:
            self.server.ssl_context.load_cert_chain(self.config["tls_cert_file"], self.config["tls_key_file"])

    def start(self):
        port = self.server.start()
        LOG.info("katalyst-webhook serving %s on %s:%d", "HTTPS" if self.server.ssl_context else "HTTP",
                 self.config["listen_address"], port)
        return port

    def stop(self):
        self.daemon.stop()
        self.server.stop()


def load(config_path):
    """The webhook of a config file (main's)."""
    return WebhookDaemon(service.load_config(config_path, DEFAULTS))


GC_THRESHOLDS = (20000, 20, 20)


def tune_gc(thresholds=GC_THRESHOLDS):
    """Collect once and freeze what lives now (modules, the registry) out of the collector's passes, then collect the
    youngest generation every ``thresholds[0]`` net allocations instead of 700: parsing one 25 KB AdmissionReview makes
    some 1,500 dicts and lists, which set off two or three collections of the half-built tree per review at the default.
    A review's objects form no cycles (JSON trees): reference counting frees them as soon as the answer is out."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def main(argv=None):
    return entrypoint.run_daemon("katalyst-webhook", load, argv, settle=tune_gc)


if __name__ == "__main__":
    raise SystemExit(main())
