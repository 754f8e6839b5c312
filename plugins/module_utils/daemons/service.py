# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""What every katalyst daemon shares: config file + SIGHUP reload, graceful shutdown on SIGTERM,
structured (JSON) logs, periodic loops with health tracking, and an HTTP endpoint serving
``/healthz`` and Prometheus ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..credentials import choose_token, token_file_of

try:
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

LOG = logging.getLogger("katalyst")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record):
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + ".%03dZ" % record.msecs,
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in self.RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def http_metrics(registry):
    """{"requests", "seconds"}: the request counter and latency histogram the daemons' HTTP servers share ({} without
    prometheus_client or a registry)."""
    if prometheus_client is None or registry is None:
        return {}
    return {"requests": prometheus_client.Counter("katalyst_http_requests_total", "HTTP requests by path and status code",
                                                  ["daemon", "path", "code"], registry=registry),
            "seconds": prometheus_client.Histogram("katalyst_http_request_duration_seconds", "Time to answer one request", ["daemon", "path"],
                                                   registry=registry, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1))}


def set_gauge_series(gauge, values, previous=()):
    """Make ``gauge`` show exactly ``values`` ({label values tuple: number}): each set, and the series of ``previous``
    (what the last call set) that are gone removed, so a deleted pool or config leaves no stale series. Returns the
    keys set, for the next call's ``previous``."""
    for key, value in values.items():
        gauge.labels(*key).set(value)
    for key in set(previous) - set(values):
        try:
            gauge.remove(*key)
        except KeyError:
            pass
    return set(values)


def setup_logging(level="info", json_logs=True):
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if json_logs else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    set_log_level(level)


def set_log_level(level):
    """The root logger's level from a config's ``log_level`` (INFO for a name logging does not know); SIGHUP changes it."""
    logging.getLogger().setLevel(getattr(logging, str(level).upper(), logging.INFO))


def load_config(path, defaults):
    """``defaults`` updated with the YAML file's mapping; unknown keys are an error (typos must not pass)."""
    with open(path) as handle:
        loaded = yaml.safe_load(handle) or {}
    if not isinstance(loaded, dict):
        raise ValueError("%s: expected a mapping at the top level" % path)
    try:
        return with_defaults(loaded, defaults)
    except ValueError as exc:
        raise ValueError("%s: %s" % (path, exc)) from None


def with_defaults(settings, defaults):
    """``defaults`` updated with ``settings``; a setting ``defaults`` does not have is an error (typos must not pass)."""
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError("unknown setting(s): %s" % ", ".join(unknown))
    config = dict(defaults)
    config.update(settings)
    return config


def user_agent(component):
    """The User-Agent a daemon sends: its name first, as client-go's components do (``kube-scheduler/v1.x ...``)."""
    return "%s (katalyst.colocation)" % component


def _file_signature(path):
    """(inode, mtime, size) of a file, None when it is missing: a writer replaces the file atomically."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _read_token(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def follow_token_file(configuration, kubeconfig_path, renewed_token_file="", clock=time.time):
    """Make a ``kubernetes.client.Configuration`` loaded from ``kubeconfig_path`` re-read the user's ``tokenFile`` when
    the file changes (a new inode, mtime or size: the writer replaces it atomically), before each request.

    With ``renewed_token_file`` (where the daemon writes the token it renews itself, daemons/token_renewal.py), both
    files are followed and the client sends ``credentials.choose_token`` of the two: the renewed token while it is the
    same ServiceAccount's and expires later, else the kubeconfig's.

    The kubernetes client reads ``tokenFile`` once, and its own refresh hook puts that first token back before every
    request, so it is replaced here. Returns the token file's path, or None (and changes nothing) when the kubeconfig's
    user has no ``tokenFile``."""
    with open(kubeconfig_path) as handle:
        token_path = token_file_of(yaml.safe_load(handle), kubeconfig_path)
    if token_path is None:
        return None
    key = "BearerToken" if "BearerToken" in configuration.api_key else "authorization"
    paths = [token_path] + ([renewed_token_file] if renewed_token_file else [])
    seen = {"signatures": None}

    def refresh(config):
        signatures = tuple(_file_signature(path) for path in paths)
        if signatures[0] is None or signatures == seen["signatures"]:
            return                      # gone for a moment: keep the last token, the API server says when it is stale
        tokens = [_read_token(path) if signature else "" for path, signature in zip(paths, signatures)]
        if tokens[0]:
            config.api_key[key] = "Bearer %s" % (choose_token(tokens[0], tokens[1], clock()) if len(tokens) > 1 else tokens[0])
            seen["signatures"] = signatures

    configuration.refresh_api_key_hook = refresh
    refresh(configuration)
    return token_path


def bearer_token(configuration):
    """The token a ``kubernetes.client.Configuration`` sends now (after its refresh hook), "" when none."""
    if configuration.refresh_api_key_hook is not None:
        configuration.refresh_api_key_hook(configuration)
    value = configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization") or ""
    return value[len("Bearer "):] if value.startswith("Bearer ") else value


def counting_retries(on_retry, total=3):
    """urllib3's own retries as the kubernetes client has them by default (``Retry(3)``: connection errors, and 413/429/503
    answers with ``Retry-After``, on idempotent methods), each one reported to ``on_retry(reason)``: they never reach
    KubeClient or an Informer, so without this a daemon's metrics would not show them."""
    import urllib3  # pylint: disable=import-outside-toplevel

    class CountingRetry(urllib3.util.Retry):      # Retry.new() makes another of type(self): the counting goes on
        def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
            retry = super().increment(method, url, response, error, _pool, _stacktrace)   # raises once they are used up
            on_retry(str(response.status) if response is not None and response.status else "transport")
            return retry
    return CountingRetry(total)


def kube_api_client(component, kubeconfig="", like=None, renewed_token_file="", on_retry=None):
    """The daemon's own ``kubernetes.client.ApiClient``, whose User-Agent names the daemon, so that the API server's
    audit log (and the emulator's request log, which the RBAC tests read) tell the daemons apart.

    On the configuration of ``like`` when given (tests run a daemon in-process on their cluster: it still talks as
    itself), else from ``kubeconfig`` (following its ``tokenFile`` and ``renewed_token_file``: ``follow_token_file``), else
    from the in-cluster service account."""
    from kubernetes import client, config as kube_config  # pylint: disable=import-outside-toplevel
    if like is not None:
        api_client = client.ApiClient(like.configuration)
    elif kubeconfig:
        api_client = kube_config.new_client_from_config(config_file=kubeconfig)
        # a `tokenFile:` user: a token refreshed on disk is used from the next request on, without a restart
        follow_token_file(api_client.configuration, kubeconfig, renewed_token_file)
    else:
        configuration = client.Configuration()
        kube_config.load_incluster_config(client_configuration=configuration)
        api_client = client.ApiClient(configuration)
    api_client.user_agent = user_agent(component)
    if on_retry is not None and api_client.configuration.retries is None:
        # the pools are made on first use, with these arguments (the configuration, maybe a test's, stays as it is)
        api_client.rest_client.pool_manager.connection_pool_kw["retries"] = counting_retries(on_retry)
    return api_client


def exit_cleanly(code):
    """End the process now that every loop has stopped.

    Watch and HTTP threads are daemon threads blocked in socket reads; letting the interpreter tear
    them down can abort the process while one holds the stderr lock, so flush and leave directly.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)  # pylint: disable=protected-access


class Loop:
    """A periodic job. ``run_once()`` raises on failure; health is 'a success within tolerance x period'."""

    def __init__(self, name, period_seconds, run_once, tolerance=3):
        self.name = name
        self.period_seconds = float(period_seconds)
        self.run_once = run_once
        self.tolerance = tolerance
        self.last_success = None
        self.last_error = None
        self.runs = 0
        self.failures = 0
        self.wakeup = threading.Event()

    def healthy(self, now):
        if self.last_success is None:
            return self.runs == 0
        return now - self.last_success <= self.period_seconds * self.tolerance

    def trigger(self):
        """Run the loop now (e.g. a watch event arrived) instead of waiting for the period."""
        self.wakeup.set()


class Daemon:
    """Runs loops in threads, serves health and metrics, handles SIGHUP/SIGTERM."""

    def __init__(self, name, registry=None, clock=time.monotonic):
        self.name = name
        self.loops = []
        self.stop_event = threading.Event()
        self.reload_handlers = []
        self.clock = clock
        self.http = None
        self.registry = registry
        self.metrics = {}
        if prometheus_client is not None:
            self.registry = registry or prometheus_client.CollectorRegistry()
            self.metrics["loop_runs"] = prometheus_client.Counter(
                "katalyst_loop_runs_total", "Loop iterations by outcome", ["daemon", "loop", "outcome"], registry=self.registry)
            self.metrics["loop_seconds"] = prometheus_client.Histogram(
                "katalyst_loop_duration_seconds", "Duration of one loop iteration", ["daemon", "loop"], registry=self.registry,
                buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
            self.metrics["api_retries"] = prometheus_client.Counter(
                "katalyst_api_retries_total", "API calls retried (client: KubeClient; informer: list/watch started again) by reason",
                ["daemon", "source", "reason"], registry=self.registry)

    def api_retry_counter(self, source):
        """An ``on_retry(reason)`` for KubeClient and Informer: counts into katalyst_api_retries_total."""
        def count(reason):
            if self.metrics:
                self.metrics["api_retries"].labels(self.name, source, reason).inc()
        return count

    def add_loop(self, loop):
        self.loops.append(loop)
        return loop

    def on_reload(self, handler):
        self.reload_handlers.append(handler)

    def reload(self):
        for handler in self.reload_handlers:
            try:
                handler()
                LOG.info("configuration reloaded", extra={"daemon": self.name})
            except Exception as exc:  # pylint: disable=broad-except
                LOG.error("reload failed, keeping the previous configuration: %s", exc, extra={"daemon": self.name})
        for loop in self.loops:
            loop.trigger()

    def _run_loop(self, loop):
        while not self.stop_event.is_set():
            started = self.clock()
            loop.runs += 1
            try:
                loop.run_once()
                loop.last_success = self.clock()
                loop.last_error = None
                outcome = "success"
            except Exception as exc:  # pylint: disable=broad-except
                loop.failures += 1
                loop.last_error = str(exc)
                outcome = "error"
                LOG.exception("loop %s failed: %s", loop.name, exc, extra={"daemon": self.name, "loop": loop.name})
            if self.metrics:
                self.metrics["loop_runs"].labels(self.name, loop.name, outcome).inc()
                self.metrics["loop_seconds"].labels(self.name, loop.name).observe(self.clock() - started)
            loop.wakeup.wait(loop.period_seconds)
            loop.wakeup.clear()

    def health(self):
        now = self.clock()
        loops = {loop.name: {"healthy": loop.healthy(now), "runs": loop.runs, "failures": loop.failures,
                             "last_error": loop.last_error} for loop in self.loops}
        return all(item["healthy"] for item in loops.values()), loops

    def serve_http(self, address, port):
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                if self.path.startswith("/healthz"):
                    ok, loops = daemon.health()
                    self._send(200 if ok else 503, "application/json", json.dumps({"ok": ok, "loops": loops}).encode())
                elif self.path.startswith("/metrics") and prometheus_client is not None:
                    self._send(200, prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(daemon.registry))
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code, content_type, body):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: health probes are frequent
                pass

        self.http = ThreadingHTTPServer((address, port), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, name="%s-http" % self.name, daemon=True).start()
        return self.http.server_address[1]

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reload, daemon=True).start())

    def start(self):
        threads = []
        for loop in self.loops:
            thread = threading.Thread(target=self._run_loop, args=(loop,), name="%s-%s" % (self.name, loop.name), daemon=True)
            thread.start()
            threads.append(thread)
        return threads

    def stop(self):
        self.stop_event.set()
        for loop in self.loops:
            loop.trigger()

    def run_forever(self):
        threads = self.start()
        while not self.stop_event.wait(0.5):
            pass
        for thread in threads:
            thread.join(timeout=10)
        if self.http is not None:
            self.http.shutdown()
        LOG.info("%s stopped", self.name, extra={"daemon": self.name})
