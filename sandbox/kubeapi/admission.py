"""Mutating admission: call registered webhooks (AdmissionReview v1/v1beta1 over HTTPS) and apply
the JSONPatch they return, honouring rules, selectors, ``failurePolicy`` and ``timeoutSeconds``.
"""

import base64
import json
import logging
import ssl
import tempfile
import urllib.request
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
    context = ssl.create_default_context()
    if bundle:
        pem = base64.b64decode(bundle).decode()
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as handle:
            handle.write(pem)
            handle.flush()
            context = ssl.create_default_context(cafile=handle.name)
    return context


def call_webhook(webhook, request):
    """POST one AdmissionReview; returns the response dict (``allowed``, ``patch``, ``status``...)."""
    client_config = webhook.get("clientConfig") or {}
    url = client_config.get("url")
    if not url:
        raise RuntimeError("webhook %s: clientConfig.service cannot be resolved in the sandbox (use url)" % webhook["name"])
    versions = [v for v in webhook.get("admissionReviewVersions") or ["v1"] if v in SUPPORTED_REVIEW_VERSIONS]
    if not versions:
        raise RuntimeError("webhook %s: none of admissionReviewVersions %s is supported" % (webhook["name"], webhook.get("admissionReviewVersions")))
    version = versions[0]
    uid = str(uuid.uuid4())
    review = {"apiVersion": "admission.k8s.io/%s" % version, "kind": "AdmissionReview",
              "request": dict(request, uid=uid, requestKind=request["kind"], requestResource=request["resource"])}
    data = json.dumps(review).encode()
    http_request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    timeout = float(webhook.get("timeoutSeconds") or 10)
    with urllib.request.urlopen(http_request, timeout=timeout, context=_ssl_context(client_config)) as response:
        body = json.loads(response.read())
    answer = body.get("response")
    if not isinstance(answer, dict):
        raise RuntimeError("webhook %s: AdmissionReview without a response" % webhook["name"])
    if answer.get("uid") != uid:
        raise RuntimeError("webhook %s: response uid %r does not match request uid %r" % (webhook["name"], answer.get("uid"), uid))
    return answer


def run_mutating_webhooks(configs, request):
    """Run every matching webhook in order; returns the (possibly) mutated object."""
    obj = request.get("object")
    for config in sorted(configs, key=lambda c: c["metadata"]["name"]):
        for webhook in config.get("webhooks") or []:
            if not rules_match(webhook, request) or not selectors_match(webhook, request):
                continue
            if request.get("dryRun") and webhook.get("sideEffects") not in ("None", "NoneOnDryRun"):
                continue
            policy = webhook.get("failurePolicy", "Fail")
            try:
                answer = call_webhook(webhook, dict(request, object=obj))
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
