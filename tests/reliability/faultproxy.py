"""A seeded fault-injecting reverse proxy for the Kubernetes API (plain HTTP, in front of the API emulator).

Each request is forwarded to ``target``; with probability ``rate`` it gets one fault instead, picked by a seeded
``random.Random`` (the sequence of decisions is fixed by the seed; which request meets which depends on thread timing):

``500`` / ``503`` / ``429``   a Status answer (``Retry-After`` on 429 and 503), the request never reaches the server
``reset``                     the connection is reset (RST): before forwarding, or after (the write happened, the answer is lost)
``slow``                      the request is forwarded after a delay (``slow_seconds``)
``cut``                       a watch: streamed through, then cut (RST, no final chunk) after ``cut_seconds``
``gone``                      a watch with a resourceVersion: ``410 Gone``, as an HTTP 410 or as a 200 with an ERROR event

Watch responses are streamed through chunk by chunk (HTTP/1.1 chunked), so a watch through the proxy sees events as they
happen. ``counts`` holds the requests proxied and the faults injected by type.
"""

import collections
import http.client
import json
import random
import socket
import struct
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("500", "503", "429", "reset", "slow", "cut", "gone")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host", "content-length"}


def _status(code, reason, message):
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                       "reason": reason, "code": code}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):   # quiet
        pass

    def _reset(self):
        """Abort the connection with a TCP RST."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _answer(self, code, body, headers=()):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self):
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        watch = query.get("watch", [""])[0] in ("true", "1")
        version = query.get("resourceVersion", [""])[0]
        fault, variant, delay = proxy.decide(watch, version not in ("", "0"))
        if fault in ("500", "503", "429"):
            code = int(fault)
            reason = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}[code]
            headers = () if code == 500 else (("Retry-After", str(proxy.retry_after)),)
            self._answer(code, _status(code, reason, "injected fault: %s" % reason), headers)
            return
        if fault == "reset" and variant == 0:
            self._reset()
            return
        if fault == "gone":
            message = "too old resource version: %s (injected)" % version
            if variant == 0:
                self._answer(410, _status(410, "Expired", message))
            else:
                event = json.dumps({"type": "ERROR", "object": json.loads(_status(410, "Expired", message))}).encode() + b"\n"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
            return
        if fault == "slow" and proxy.stopping.wait(delay):
            self._reset()
            return
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_HEADERS}
        upstream = http.client.HTTPConnection(proxy.host, proxy.port, timeout=None if watch else 60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            if fault == "reset":           # variant 1: the server did it; the client never hears
                response.read()
                self._reset()
                return
            if watch and response.status == 200:
                self._stream(response, delay if fault == "cut" else None, upstream)
                return
            payload = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in HOP_HEADERS:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (OSError, http.client.HTTPException):
            self._reset()
        finally:
            upstream.close()

    def _stream(self, response, cut_after, upstream):
        proxy = self.server.proxy
        self.send_response(200)
        for name, value in response.getheaders():
            if name.lower() not in HOP_HEADERS:
                self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        cut = threading.Event()
        if cut_after is not None:
            def cutter():
                if not proxy.stopping.wait(cut_after):
                    cut.set()
                    try:               # wakes the read below: the upstream stream ends, this one is then reset
                        upstream.sock.shutdown(socket.SHUT_RDWR)
                    except (OSError, AttributeError):
                        pass
            threading.Thread(target=cutter, daemon=True).start()
        with proxy.lock:
            proxy.streams.add(upstream)
        try:
            while True:
                try:
                    data = response.read1(65536)
                except (OSError, http.client.HTTPException, ValueError):
                    data = b""
                if not data or cut.is_set() or proxy.stopping.is_set():
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            if cut.is_set() or proxy.stopping.is_set():
                self._reset()                  # mid-stream: no terminating chunk
            else:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self._reset()
        finally:
            with proxy.lock:
                proxy.streams.discard(upstream)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class FaultProxy:
    """``FaultProxy(target_url, seed=1, rate=0.1).start()``; ``.url``; ``.counts``; ``.enabled`` turns faults on/off."""

    def __init__(self, target, seed=1, rate=0.1, faults=FAULTS, slow_seconds=1.0, cut_seconds=(0.2, 3.0), retry_after=1):
        parts = urllib.parse.urlsplit(target)
        self.host, self.port = parts.hostname, parts.port
        self.random = random.Random(seed)
        self.rate = rate
        self.faults = tuple(faults)
        self._slow = slow_seconds
        self._cut = cut_seconds
        self.retry_after = retry_after
        self.enabled = True
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.streams = set()
        self.stopping = threading.Event()
        self.httpd = None

    def decide(self, watch, has_version):
        """``(fault or None, variant, delay)`` for one request (delay: of a slow answer, or before a cut); counts it."""
        with self.lock:
            self.counts["requests"] += 1
            if watch:
                self.counts["watches"] += 1
            roll, pick, variant = self.random.random(), self.random.random(), self.random.randrange(2)
            slow, cut = self.random.uniform(self._slow / 4, self._slow), self.random.uniform(*self._cut)
            if not self.enabled or roll >= self.rate:
                return None, 0, 0.0
            usable = [f for f in self.faults if (f != "cut" or watch) and (f != "gone" or (watch and has_version))]
            if not usable:             # e.g. a proxy of watch faults only: lists and writes pass
                return None, 0, 0.0
            fault = usable[int(pick * len(usable))]
            self.counts[fault] += 1
            return fault, variant, cut if fault == "cut" else slow

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def injected(self):
        return {name: self.counts[name] for name in FAULTS if self.counts[name]}

    def start(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.proxy = self
        threading.Thread(target=self.httpd.serve_forever, name="fault-proxy", daemon=True).start()
        return self

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        with self.lock:
            streams = list(self.streams)
        for upstream in streams:
            try:
                upstream.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        self.httpd.server_close()
