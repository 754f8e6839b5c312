"""Mutating admission: call registered webhooks (AdmissionReview v1/v1beta1 over HTTPS) and apply
the JSONPatch they return, honouring rules, selectors, ``failurePolicy`` and ``timeoutSeconds``.

``clientConfig.url`` is called as given. ``clientConfig.service`` is resolved through the Service's port and its
EndpointSlices (``kubernetes.io/service-name``), as kube-apiserver's endpoint resolver does (``--enable-aggregator-routing``;
without it kube-apiserver calls the Service's cluster IP and kube-proxy picks the endpoint). The TLS server name is
``<service>.<namespace>.svc``. One difference, on purpose: kube-apiserver picks one random ready endpoint and a
refused connection fails the call (``failurePolicy`` decides); the emulator starts at a random ready endpoint and tries
the next one when a connection is refused (never after a timeout), so a killed endpoint that is still listed ready
costs nothing here and, on a real cluster, about its share of the calls until the slice drops it.
``timeoutSeconds`` bounds the whole call (connect, send, answer), not each socket operation.
"""

import base64
import http.client
import json
import logging
import random
import socket
import ssl
import time
import urllib.parse
import uuid

import jsonpatch

from ansible_collections.katalyst.colocation.plugins.module_utils.selectors import label_selector_from_dict

LOG = logging.getLogger("sandbox.kubeapi.admission")
SUPPORTED_REVIEW_VERSIONS = ("v1", "v1beta1")


class AdmissionDenied(Exception):
    def __init__(self, message, code=400):
        super().__init__(message)
        self.message = message
        self.code = code


def _match_list(values, wanted):
    return any(value == "*" or value == wanted for value in values or [])


def _match_resource(patterns, resource, sub_resource):
    name = resource + ("/" + sub_resource if sub_resource else "")
    for pattern in patterns or []:
        if pattern == "*" and not sub_resource:
            return True
        if pattern == "*/*" or pattern == name or (pattern.startswith("*/") and sub_resource and pattern[2:] == sub_resource):
            return True
        if pattern.endswith("/*") and pattern[:-2] == resource and sub_resource:
            return True
    return False


def rules_match(webhook, request):
    resource = request["resource"]
    for rule in webhook.get("rules") or []:
        if not _match_list(rule.get("operations"), request["operation"]) and "*" not in (rule.get("operations") or []):
            continue
        if not _match_list(rule.get("apiGroups"), resource["group"]):
            continue
        if not _match_list(rule.get("apiVersions"), resource["version"]):
            continue
        if not _match_resource(rule.get("resources"), resource["resource"], request.get("subResource") or ""):
            continue
        scope = rule.get("scope", "*")
        if scope == "Cluster" and request.get("namespace"):
            continue
        if scope == "Namespaced" and not request.get("namespace"):
            continue
        return True
    return False


def selectors_match(webhook, request):
    labels = ((request.get("object") or request.get("oldObject") or {}).get("metadata") or {}).get("labels") or {}
    object_selector = webhook.get("objectSelector")
    if object_selector is not None and not label_selector_from_dict(object_selector).matches(labels):
        return False
    return True


def _ssl_context(client_config):
    bundle = client_config.get("caBundle")
    if bundle:
        return ssl.create_default_context(cadata=base64.b64decode(bundle).decode())
    return ssl.create_default_context()


SERVICES_KEY = "/services"
ENDPOINTSLICES_KEY = "discovery.k8s.io/endpointslices"


def service_endpoints(store, service_ref):
    """The ``(address, port)`` pairs a ``clientConfig.service`` reaches: the ready endpoints of the Service's
    EndpointSlices on the slice port named as the Service port (kube-apiserver's endpoint resolver)."""
    namespace, name = service_ref.get("namespace", ""), service_ref.get("name", "")
    wanted = int(service_ref.get("port") or 443)
    if store is None:
        raise RuntimeError("service %s/%s: no store to resolve it in" % (namespace, name))
    service = store.get(SERVICES_KEY, namespace, name)
    if service is None:
        raise RuntimeError('service "%s" not found' % name)
    service_port = next((port for port in (service.get("spec") or {}).get("ports") or [] if int(port.get("port") or 0) == wanted), None)
    if service_port is None:
        raise RuntimeError("service %s/%s has no port %d" % (namespace, name, wanted))
    port_name = service_port.get("name") or ""
    endpoints = []
    for endpoint_slice in store.list(ENDPOINTSLICES_KEY, namespace)[0]:
        if ((endpoint_slice.get("metadata") or {}).get("labels") or {}).get("kubernetes.io/service-name") != name:
            continue
        ports = [port for port in endpoint_slice.get("ports") or [] if (port.get("name") or "") == port_name and port.get("port")]
        for endpoint in endpoint_slice.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            endpoints.extend((address, int(port["port"])) for address in endpoint.get("addresses") or [] for port in ports)
    if not endpoints:
        raise RuntimeError("service %s/%s has no ready endpoint on port %d" % (namespace, name, wanted))
    return endpoints


class _Connection(http.client.HTTPSConnection):
    """HTTPS to an address, with the TLS server name (SNI and certificate check) given apart from it."""

    def __init__(self, address, port, server_name, context, deadline):
        super().__init__(address, port, timeout=max(deadline - time.monotonic(), 0.001), context=context)
        self.server_name = server_name
        self.deadline = deadline

    def connect(self):
        sock = socket.create_connection((self.host, self.port), max(self.deadline - time.monotonic(), 0.001))
        try:
            sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
            self.sock = self._context.wrap_socket(sock, server_hostname=self.server_name)
        except BaseException:
            sock.close()
            raise


def _post(targets, path, server_name, context, data, deadline):
    """POST to the first target that accepts the connection; a refused connection moves on to the next."""
    error = None
    for address, port in targets:
        connection = _Connection(address, port, server_name, context, deadline)
        try:
            try:
                connection.connect()
            except ConnectionRefusedError as exc:
                error = exc
                continue
            connection.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            connection.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            response = connection.getresponse()
            body = response.read()
            if time.monotonic() > deadline:
                raise TimeoutError("timed out")
            if response.status != 200:
                raise RuntimeError("HTTP %d: %s" % (response.status, body[:200]))
            return body
        finally:
            connection.close()
    raise error


def call_webhook(webhook, request, store=None):
    """POST one AdmissionReview; returns the response dict (``allowed``, ``patch``, ``status``...)."""
    client_config = webhook.get("clientConfig") or {}
    url = client_config.get("url")
    service_ref = client_config.get("service")
    if url:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https":
            raise RuntimeError("webhook %s: url must be https" % webhook["name"])
        server_name = parsed.hostname
        targets = [(parsed.hostname, parsed.port or 443)]
        path = (parsed.path or "/") + ("?" + parsed.query if parsed.query else "")
    elif service_ref:
        server_name = "%s.%s.svc" % (service_ref.get("name"), service_ref.get("namespace"))
        targets = service_endpoints(store, service_ref)
        start = random.randrange(len(targets))
        targets = targets[start:] + targets[:start]
        path = service_ref.get("path") or "/"
    else:
        raise RuntimeError("webhook %s: clientConfig has neither url nor service" % webhook["name"])
    versions = [v for v in webhook.get("admissionReviewVersions") or ["v1"] if v in SUPPORTED_REVIEW_VERSIONS]
    if not versions:
        raise RuntimeError("webhook %s: none of admissionReviewVersions %s is supported" % (webhook["name"], webhook.get("admissionReviewVersions")))
    version = versions[0]
    uid = str(uuid.uuid4())
    review = {"apiVersion": "admission.k8s.io/%s" % version, "kind": "AdmissionReview",
              "request": dict(request, uid=uid, requestKind=request["kind"], requestResource=request["resource"])}
    data = json.dumps(review).encode()
    deadline = time.monotonic() + float(webhook.get("timeoutSeconds") or 10)
    body = json.loads(_post(targets, path, server_name, _ssl_context(client_config), data, deadline))
    answer = body.get("response")
    if not isinstance(answer, dict):
        raise RuntimeError("webhook %s: AdmissionReview without a response" % webhook["name"])
    if answer.get("uid") != uid:
        raise RuntimeError("webhook %s: response uid %r does not match request uid %r" % (webhook["name"], answer.get("uid"), uid))
    return answer


def run_mutating_webhooks(configs, request, store=None):
    """Run every matching webhook in order; returns the (possibly) mutated object (``store`` resolves service references)."""
    obj = request.get("object")
    for config in sorted(configs, key=lambda c: c["metadata"]["name"]):
        for webhook in config.get("webhooks") or []:
            if not rules_match(webhook, request) or not selectors_match(webhook, request):
                continue
            if request.get("dryRun") and webhook.get("sideEffects") not in ("None", "NoneOnDryRun"):
                continue
            policy = webhook.get("failurePolicy", "Fail")
            try:
                answer = call_webhook(webhook, dict(request, object=obj), store)
                if not answer.get("allowed"):
                    status = answer.get("status") or {}
                    raise AdmissionDenied('admission webhook "%s" denied the request: %s'
                                          % (webhook["name"], status.get("message", "")), int(status.get("code") or 400))
                if answer.get("patch"):
                    if answer.get("patchType", "JSONPatch") != "JSONPatch":
                        raise RuntimeError("webhook %s: unsupported patchType %r" % (webhook["name"], answer.get("patchType")))
                    operations = json.loads(base64.b64decode(answer["patch"]))
                    obj = jsonpatch.apply_patch(obj, operations, in_place=False)
            except AdmissionDenied:
                raise
            except Exception as exc:  # pylint: disable=broad-except
                if policy == "Ignore":
                    LOG.warning("failed calling webhook %s (failurePolicy Ignore): %s", webhook["name"], exc)
                    continue
                raise AdmissionDenied('Internal error occurred: failed calling webhook "%s": %s' % (webhook["name"], exc), 500)
    return obj
