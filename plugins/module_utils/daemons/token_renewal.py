# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""A daemon renews its own ServiceAccount token before it expires (docs/credentials.md, "Renewal").

The playbook (service_account_kubeconfig) writes the kubeconfig's ``tokenFile``; between playbook runs nobody else
refreshes it. With ``renewed_token_file`` set, a loop looks at the token the client sends and, when less than a third
of its lifetime is left (``credentials.plan_token_renewal``), asks the TokenRequest API for a new token of the same
ServiceAccount (same audiences, lifetime and Node binding) and writes it to ``renewed_token_file``; the client follows
both files and sends the later valid one of the same ServiceAccount (``service.follow_token_file``). The token itself
is never logged, put in an exception or in a metric.
"""

from __future__ import annotations

import json
import logging
import time

from .. import credentials, privatefiles
from . import service

LOG = logging.getLogger("katalyst.token_renewal")

# The settings every daemon with an API client takes (agent.py, controller.py, extender.py DEFAULTS).
DEFAULTS = {
    # where the daemon writes the token it renews itself; "" = no renewal (the playbook's token is used until it expires)
    "renewed_token_file": "",
    "token_renewal_period_seconds": 60,
    # renew when this many seconds or fewer are left; null: when less than a third of the token's lifetime is left
    "token_renew_before_seconds": None,
}


def api_error_message(exc):
    """What an ApiException says, without its headers or anything else of the exchange: HTTP status, reason and the
    Status message (a TokenRequest's answer carries the token only on success)."""
    try:
        message = json.loads(exc.body or "{}").get("message") or ""
    except (ValueError, AttributeError):
        message = ""
    return "HTTP %s %s%s" % (exc.status, exc.reason or "", ": " + message if message else "")


class TokenRenewer:
    """The ``token_renewal`` loop's pass: renew the token ``api_client`` sends when it is due."""

    def __init__(self, api_client, renewed_token_file, renew_before_seconds=None, registry=None, daemon_name="", clock=time.time):
        self.api_client = api_client
        self.renewed_token_file = renewed_token_file
        self.renew_before_seconds = renew_before_seconds
        self.daemon_name = daemon_name
        self.clock = clock
        self.metrics = {}
        prometheus_client = service.prometheus_client
        if prometheus_client is not None and registry is not None:
            self.metrics["renewals"] = prometheus_client.Counter(
                "katalyst_token_renewals_total", "Renewals of the daemon's own ServiceAccount token by result", ["daemon", "result"],
                registry=registry)
            self.metrics["expiry"] = prometheus_client.Gauge(
                "katalyst_token_expiry_timestamp_seconds", "When the token the daemon sends expires (Unix seconds)", ["daemon"],
                registry=registry)

    def _count(self, result):
        if self.metrics:
            self.metrics["renewals"].labels(self.daemon_name, result).inc()

    def _show_expiry(self, token):
        expiry = (credentials.jwt_claims(token) or {}).get("exp")
        if self.metrics and isinstance(expiry, (int, float)):
            self.metrics["expiry"].labels(self.daemon_name).set(expiry)

    def run_once(self):
        """Renew when due; raises (a message without the token) when the TokenRequest or the write fails, so that the
        loop logs it and tries again next period. Returns the reason it renewed, or None."""
        from kubernetes import client  # pylint: disable=import-outside-toplevel
        from kubernetes.client.exceptions import ApiException  # pylint: disable=import-outside-toplevel
        token = service.bearer_token(self.api_client.configuration)
        self._show_expiry(token)
        renewal = credentials.plan_token_renewal(token, self.clock(), self.renew_before_seconds)
        if renewal is None:
            return None
        account = credentials.SERVICE_ACCOUNT_USER % (renewal.namespace, renewal.service_account)
        try:
            answer = client.CoreV1Api(self.api_client).create_namespaced_service_account_token(
                renewal.service_account, renewal.namespace, renewal.body)
        except ApiException as exc:
            self._count("error")
            raise RuntimeError("renewing the token of %s failed: %s" % (account, api_error_message(exc))) from None
        except Exception as exc:  # pylint: disable=broad-except
            self._count("error")
            raise RuntimeError("renewing the token of %s failed: %s" % (account, type(exc).__name__)) from None
        renewed = answer.status.token if answer.status is not None else None
        if credentials.token_identity(credentials.jwt_claims(renewed))[:2] != (renewal.namespace, renewal.service_account):
            self._count("error")
            raise RuntimeError("the TokenRequest for %s answered no token of that ServiceAccount" % account)
        try:
            privatefiles.write_private(self.renewed_token_file, renewed + "\n")
        except OSError as exc:
            self._count("error")
            raise RuntimeError("writing the renewed token of %s to %s failed: %s" % (account, self.renewed_token_file, exc.strerror)) from None
        self._count("renewed")
        self._show_expiry(service.bearer_token(self.api_client.configuration))
        LOG.info("renewed the token of %s (%s), expires %s", account, renewal.reason,
                 credentials.timestamp(credentials.jwt_claims(renewed)["exp"]), extra={"daemon": self.daemon_name})
        return renewal.reason


def daemon_api_client(daemon, config, like=None):
    """The daemon's API client (``service.kube_api_client``) and, when ``renewed_token_file`` is set and the client
    is the kubeconfig's own (not a test's ``like``), the ``token_renewal`` loop on ``daemon``."""
    renewing = bool(config["renewed_token_file"]) and bool(config["kubeconfig"]) and like is None
    api_client = service.kube_api_client(daemon.name, config["kubeconfig"], like=like,
                                         renewed_token_file=config["renewed_token_file"] if renewing else "",
                                         on_retry=daemon.api_retry_counter("urllib3"))
    if renewing:
        renewer = TokenRenewer(api_client, config["renewed_token_file"], config["token_renew_before_seconds"], daemon.registry, daemon.name)
        daemon.add_loop(service.Loop("token_renewal", config["token_renewal_period_seconds"], renewer.run_once))
    return api_client
