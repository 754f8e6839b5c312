# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The daemons' JSON-over-HTTP(S) server (asyncio, keep-alive) with /healthz and /metrics, and its JSON helpers."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import ssl
import threading
import time
from http import HTTPStatus

from . import service

try:
    import prometheus_client
except ImportError:  # pragma: no cover
    prometheus_client = None

try:
    import orjson   # optional (requirements.txt lists it; no distribution package everywhere): the stdlib answers the same
except ImportError:
    orjson = None

LOG = logging.getLogger("katalyst.http")


def server_ssl_context(cert_file, key_file):
    """TLS for a server; re-read on SIGHUP by building a new context (certificates rotate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class KeepAliveServer:
    """HTTP/1.1 server of the webhook and the scheduler extender: POST routes, GET /healthz and /metrics of a
    service.Daemon, optional TLS, keep-alive.

    One asyncio loop in its own thread serves every connection, answering requests in the order they arrive (a thread
    per connection left the order to whichever thread got the GIL next, which made p99 three times the mean), parses
    request heads itself (``http.server`` uses the email package) and writes each answer in one piece.
    A route is ``handler(raw body bytes) -> (http code, JSON body bytes)``."""

    MAX_HEADER_BYTES = 65536
    MAX_BODY_BYTES = 64 * 1024 * 1024

    def __init__(self, daemon, routes, address, port, ssl_context=None):
        self.daemon = daemon
        self.routes = dict(routes)     # last path segment -> handler(raw bytes) -> (http code, JSON bytes)
        self.address = address
        self.port = port
        self.ssl_context = ssl_context
        self.loop = None
        self.server = None
        self.thread = None
        self.writers = set()
        self.metrics = service.http_metrics(daemon.registry)
        self.children = {}
        self.date = (0, "")

    def _observe(self, path, code, seconds):
        if self.metrics:
            children = self.children.get((path, code))
            if children is None:
                children = self.children[(path, code)] = (self.metrics["requests"].labels(self.daemon.name, path, str(code)),
                                                          self.metrics["seconds"].labels(self.daemon.name, path))
            children[0].inc()
            children[1].observe(seconds)

    def start(self):
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, self.address, int(self.port), ssl=self.ssl_context,
                                                                        backlog=128, limit=self.MAX_HEADER_BYTES))
        self.thread = threading.Thread(target=self.loop.run_forever, name="%s-http" % self.daemon.name, daemon=True)
        self.thread.start()
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def stop(self):
        """Stop listening and close every connection; the port is free when this returns."""
        if self.loop is None or self.thread is None:
            return

        def shutdown():
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.stop()
        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(timeout=10)
        self.thread = None
        if not self.loop.is_running():
            # let the cancelled connections finish, then release the loop's selector and sockets
            pending = asyncio.all_tasks(self.loop)
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending))
            self.loop.close()

    async def _connection(self, reader, writer):
        self.writers.add(writer)
        try:
            while await self._exchange(reader, writer):
                pass
        except (OSError, ValueError, asyncio.IncompleteReadError):     # resets, a peer gone mid-request
            pass
        except asyncio.CancelledError:
            # stop() cancels open connections; ending normally here, as asyncio on Python 3.11 calls task.exception()
            # on the finished handler and logs a cancelled one as an error
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _exchange(self, reader, writer):
        """Read one request, answer it; False when the connection is to be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            return self._send(writer, 431, "text/plain", b"request headers too large\n", close=True)
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return self._send(writer, 400, "text/plain", b"bad request line\n", close=True)
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        connection_header = headers.get("connection", "").lower()
        close = "close" in connection_header or (version == "HTTP/1.0" and "keep-alive" not in connection_header)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._send(writer, 411, "text/plain", b"a Content-Length is required\n", close=True)
        try:
            length = int(headers.get("content-length") or 0)
            if not 0 <= length <= self.MAX_BODY_BYTES:
                raise ValueError(length)
        except ValueError:
            return self._send(writer, 400, "text/plain", b"bad Content-Length\n", close=True)
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length) if length else b""
        if method == "POST":
            self._post(writer, target, body, close)
        elif method == "GET":
            self._get(writer, target, close)
        else:
            return self._send(writer, 501, "text/plain", b"unsupported method\n", close=True)
        if writer.transport.get_write_buffer_size() > 65536:
            await writer.drain()
        return not close

    def _get(self, writer, target, close):
        path = target.split("?", 1)[0]
        if path == "/healthz":
            ok, loops = self.daemon.health()
            self._send(writer, 200 if ok else 503, "application/json", json.dumps({"ok": ok, "loops": loops}).encode(), close)
        elif path == "/metrics" and prometheus_client is not None:
            self._send(writer, 200, prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(self.daemon.registry), close)
        else:
            self._send(writer, 404, "text/plain", b"not found\n", close)

    def _post(self, writer, target, body, close):
        started = time.monotonic()
        path = target.split("?", 1)[0]
        verb = path.rstrip("/").rsplit("/", 1)[-1]
        handler = self.routes.get(verb)
        if handler is None:
            code, reply = 404, json_bytes({"error": "unknown path %s" % path})
        else:
            try:
                code, reply = handler(body)
            except Exception as exc:  # pylint: disable=broad-except
                LOG.exception("%s %s failed", self.daemon.name, path)
                code, reply = 500, json_bytes({"error": str(exc)})
        # counted before the answer goes out: a client that reads /metrics after its reply sees its request
        self._observe(verb if handler else "unknown", code, time.monotonic() - started)
        self._send(writer, code, "application/json", reply, close)

    def _http_date(self):
        now = int(time.time())
        if self.date[0] != now:
            self.date = (now, email.utils.formatdate(now, usegmt=True))
        return self.date[1]

    def _send(self, writer, code, content_type, body, close=False):
        """Queue one answer; False (the connection closes after it) when ``close``."""
        head = "HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            code, _PHRASES.get(code, ""), self.daemon.name, self._http_date(), content_type, len(body), "Connection: close\r\n" if close else "")
        writer.write(head.encode("latin-1") + body)
        return not close


_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def parse_json(raw):
    """A request body's JSON. With orjson when it is installed (parsing a 25 KB Node review is most of a review's
    cost, several times faster there); anything orjson refuses (NaN, integers past 64 bits, lone surrogates...) goes
    to the stdlib parser, so what is accepted, and how it reads, never depends on whether orjson is there."""
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def answer_object(raw, answer):
    """(200, ``answer(body)`` as JSON) for a request body holding a JSON object, else (400, the error as JSON)."""
    try:
        body = parse_json(raw or b"{}")
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
    except ValueError as exc:
        return 400, json_bytes({"error": "invalid JSON body: %s" % exc})
    return 200, json_bytes(answer(body))


def json_bytes(payload):
    """Compact JSON of an answer; orjson when installed (an extender answer lists up to every node's name), the stdlib
    for anything orjson refuses (integers past 64 bits, non-string keys)."""
    if orjson is not None:
        try:
            return orjson.dumps(payload)
        except TypeError:     # orjson.JSONEncodeError
            pass
    return json.dumps(payload, separators=(",", ":")).encode()
