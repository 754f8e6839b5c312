"""Issue 15: node heartbeats through katalyst-webhook (the real daemon, a subprocess) while it is restarted, slowed
past its timeout (SIGSTOP) or down; and with two control hosts' webhooks behind a Service, one of them killed.

Figures:
  * "node heartbeats through the webhook, with the webhook restarted, slowed past its timeout, or down in between":
    one case per heartbeat. Expected: after every heartbeat every stored node has allocatable and capacity at most
    the kubelet's values times the ratio and ``original_*`` annotations equal to the kubelet's values (never
    amplified twice); a heartbeat while the webhook answers is amplified exactly, one while it is down or stopped keeps
    the kubelet's raw values (failurePolicy Ignore); no heartbeat takes longer than the webhook timeout (plus slack).
  * "one of two control hosts' webhook killed while nodes heartbeat": one case per kill. Expected: every heartbeat
    while one webhook is dead is amplified by the other, reached through the Service's EndpointSlice.
"""

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import record, sized

kubernetes = pytest.importorskip("kubernetes")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import (  # noqa: E402
    WEBHOOK_CONFIGURATION_NAME, webhook_configuration, webhook_service)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "katalyst.kubewharf.io/"
NAMESPACE, SERVICE = "katalyst-system", "katalyst-webhook"
TIMEOUT_SECONDS = 1
SLACK_SECONDS = 1.0         # a loaded 2-core machine: the emulator's own work on top of the webhook timeout
NODES = ["hb-%d" % index for index in range(5)]
RAW = {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"}, "allocatable": {"cpu": "7500m", "memory": "15Gi", "pods": "110"}}
AMPLIFIED = {"capacity": {"cpu": "16", "memory": "24Gi", "pods": "110"}, "allocatable": {"cpu": "15", "memory": "23040Mi", "pods": "110"}}
LIMIT_MILLI = {"cpu": 2.0, "memory": 1.5}       # the ratios
HEARTBEAT_FIGURE = "node heartbeats through the webhook, with the webhook restarted, slowed past its timeout, or down in between"
FAILOVER_FIGURE = "one of two control hosts' webhook killed while nodes heartbeat"


def _name(text):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def service_certs(directory, addresses=("127.0.0.1", "127.0.0.2")):
    """A CA and a serving certificate for the addresses and the Service's DNS names."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("chaos-ca")).issuer_name(_name("chaos-ca")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    names += [x509.DNSName("%s.%s.svc" % (SERVICE, NAMESPACE)), x509.DNSName("%s.%s.svc.cluster.local" % (SERVICE, NAMESPACE))]
    cert = (x509.CertificateBuilder().subject_name(_name("%s.%s.svc" % (SERVICE, NAMESPACE))).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {name: str(path) for name, path in paths.items()}


def free_port(addresses):
    """A port free on every address."""
    for _attempt in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses:
                with socket.socket() as sock:
                    sock.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port")


class WebhookProcess:
    """The real katalyst-webhook daemon as a subprocess on one address."""

    def __init__(self, directory, address, port, certs):
        self.address, self.port, self.certs = address, port, certs
        self.config = directory / ("webhook-%s.yaml" % address)
        self.config.write_text("listen_address: %s\nport: %d\ntls_cert_file: %s\ntls_key_file: %s\nlog_level: error\n"
                               % (address, port, certs["cert"], certs["key"]))
        self.log = open(directory / ("webhook-%s.log" % address), "ab")     # pylint: disable=consider-using-with
        self.process = None

    def start(self, wait=True):
        env = dict(os.environ, PYTHONPATH="%s/.build/collections" % REPO)
        self.process = subprocess.Popen([sys.executable, "-m", "ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook",
                                         "--config", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_healthy()

    def healthy(self):
        context = ssl.create_default_context(cafile=self.certs["ca"])
        try:
            with urllib.request.urlopen("https://%s:%d/healthz" % (self.address, self.port), timeout=1, context=context) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("katalyst-webhook exited with %s" % self.process.returncode)
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError("katalyst-webhook on %s did not become healthy" % self.address)

    def kill(self, sig=signal.SIGKILL):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def freeze(self):
        freeze(self.process)

    def thaw(self):
        thaw(self.process)

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.kill()
        self.log.close()


def thread_states(pid):
    """The state letter of every thread of ``pid`` (``T`` stopped), from /proc/<pid>/task/*/stat."""
    states = []
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, task), encoding="ascii") as handle:
                states.append(handle.read().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:       # a thread that ended since the listing
            continue
    return states


def wait_threads(process, stopped, timeout=30):
    """Wait until every thread of ``process`` is stopped (``stopped``) or none is; raise if it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError("process %d exited with %s" % (process.pid, process.returncode))
        states = thread_states(process.pid)
        if states and all((state == "T") == stopped for state in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("process %d threads %s: not %s after %ss" % (process.pid, "".join(states), "stopped" if stopped else "running", timeout))
        time.sleep(0.001)


def freeze(process, timeout=30):
    """SIGSTOP, and return once every thread of ``process`` is stopped. kill() returns when the signal is queued, not
    when it has taken effect: one thread takes it and stops the others on its way out of the kernel, and until that
    thread is scheduled the others run on (on this daemon: p95 8 ms, up to 87 ms on a loaded 2-core machine), so a
    request sent at once could still be answered by a webhook taken for frozen."""
    process.send_signal(signal.SIGSTOP)
    wait_threads(process, stopped=True, timeout=timeout)


def thaw(process, timeout=30):
    """SIGCONT, and return once no thread of ``process`` is stopped."""
    process.send_signal(signal.SIGCONT)
    wait_threads(process, stopped=False, timeout=timeout)


def milli(value):
    from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity  # pylint: disable=import-outside-toplevel
    return parse_quantity(value).milli_value()


def violations(core):
    """Every stored node whose allocatable/capacity exceeds the kubelet's times the ratio, or whose originals are not the kubelet's."""
    found = []
    for node in core.list_node().items:
        if node.metadata.name not in NODES:
            continue
        annotations = node.metadata.annotations or {}
        for field in ("allocatable", "capacity"):
            stored = (getattr(node.status, field) if node.status else None) or {}
            for resource, ratio in LIMIT_MILLI.items():
                if resource in stored and milli(stored[resource]) > milli(RAW[field][resource]) * ratio:
                    found.append("%s %s %s=%s" % (node.metadata.name, field, resource, stored[resource]))
                original = annotations.get(PREFIX + "original_%s_%s" % (field, resource))
                if original is not None and milli(original) != milli(RAW[field][resource]):
                    found.append("%s original_%s_%s=%s" % (node.metadata.name, field, resource, original))
    return found


def prepare_nodes(core):
    for name in NODES:
        try:
            core.delete_node(name)
        except kubernetes.client.ApiException:
            pass
        core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "annotations": {PREFIX + "cpu_overcommit_ratio": "2", PREFIX + "memory_overcommit_ratio": "1.5"}}})


def register(admission, configuration):
    try:
        admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIGURATION_NAME)
    except kubernetes.client.ApiException:
        pass
    admission.create_mutating_webhook_configuration(configuration)


def heartbeat(core, name, kind):
    """One status update as a kubelet (raw values) or as another client passing the stored values through (conditions only)."""
    body = {"status": dict(RAW)} if kind == "kubelet" else {"status": {"conditions": [{"type": "Chaos", "status": "True",
                                                                                      "reason": "R%d" % time.monotonic_ns()}]}}
    began = time.monotonic()
    core.patch_node_status(name, body)
    elapsed = time.monotonic() - began
    node = core.read_node(name)
    return elapsed, {"allocatable": dict(node.status.allocatable or {}), "capacity": dict(node.status.capacity or {})}


@pytest.fixture
def apis(emulator):
    core = kubernetes.client.CoreV1Api(emulator.client)
    admission = kubernetes.client.AdmissionregistrationV1Api(emulator.client)
    prepare_nodes(core)
    yield core, admission
    try:
        admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIGURATION_NAME)
    except kubernetes.client.ApiException:
        pass


# One cycle of 20 heartbeats: what the webhook does before each, and what the heartbeat must come back as
# ("amplified", "raw" or "either" while it is starting or resuming).
CYCLE = (["up"] * 8 + ["kill", "down", "down", "start", "up", "up", "stop", "stopped", "resume", "up"])


def test_heartbeats_through_restarts_stops_and_outages(apis, tmp_path):
    core, admission = apis
    certs = service_certs(tmp_path, ("127.0.0.1",))
    port = free_port(["127.0.0.1"])
    webhook = WebhookProcess(tmp_path, "127.0.0.1", port, certs)
    webhook.start()
    register(admission, webhook_configuration("https://127.0.0.1:%d/node" % port, open(certs["ca"]).read(), timeout_seconds=TIMEOUT_SECONDS))
    total = sized(1000, 100)
    began, slowest, outcomes = time.monotonic(), 0.0, {}
    kills = 0
    try:
        for index in range(total):
            step = CYCLE[index % len(CYCLE)]
            expect = {"up": "amplified", "down": "raw", "stopped": "raw", "kill": "raw", "stop": "raw"}.get(step, "either")
            if step == "kill":
                webhook.kill(signal.SIGKILL if kills % 2 else signal.SIGTERM)
                kills += 1
            elif step == "start":
                webhook.start(wait=False)           # the heartbeat races the daemon's start
            elif step == "stop":
                webhook.wait_healthy()
                webhook.freeze()        # frozen before the heartbeat: a SIGSTOP still in flight is not a stopped webhook
            elif step == "resume":
                webhook.thaw()
            elif step == "up" and CYCLE[(index - 1) % len(CYCLE)] == "start":
                webhook.wait_healthy()
            kind = "kubelet" if index % 3 or index < len(NODES) else "pass-through"
            name = NODES[index % len(NODES)]
            elapsed, status = heartbeat(core, name, kind)
            slowest = max(slowest, elapsed)
            got = "amplified" if status == AMPLIFIED else "raw" if status == RAW else "other"
            bad = violations(core)
            blocked = elapsed > TIMEOUT_SECONDS + SLACK_SECONDS
            if kind == "pass-through" and expect == "raw":
                ok = not bad and not blocked and got in ("amplified", "raw")     # keeps whatever was stored
            else:
                ok = not bad and not blocked and (got == expect or (expect == "either" and got in ("amplified", "raw")))
            outcome = "%s %s: %s%s%s" % (step, kind, got, " blocked %.1fs" % elapsed if blocked else "", " " + "; ".join(bad[:2]) if bad else "")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            record(HEARTBEAT_FIGURE, outcome, ok)
            assert ok, (index, outcome, status)
    finally:
        webhook.close()
    print("%d heartbeats in %.1fs, slowest %.2fs: %s" % (total, time.monotonic() - began, slowest, sorted(outcomes.items())))


def test_one_of_two_webhooks_killed_while_nodes_heartbeat(apis, emulator, tmp_path):
    core, admission = apis
    addresses = ["127.0.0.1", "127.0.0.2"]
    certs = service_certs(tmp_path, addresses)
    port = free_port(addresses)
    webhooks = [WebhookProcess(tmp_path, address, port, certs) for address in addresses]
    for webhook in webhooks:
        webhook.start()
    try:
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    except kubernetes.client.ApiException as exc:
        assert exc.status == 409
    service, *slices = webhook_service(NAMESPACE, SERVICE, 443, port, addresses)
    for existing in core.list_namespaced_service(NAMESPACE).items:
        core.delete_namespaced_service(existing.metadata.name, NAMESPACE)
    core.create_namespaced_service(NAMESPACE, service)
    custom = kubernetes.client.CustomObjectsApi(emulator.client)
    for endpoint_slice in slices:
        try:
            custom.delete_namespaced_custom_object("discovery.k8s.io", "v1", NAMESPACE, "endpointslices", endpoint_slice["metadata"]["name"])
        except kubernetes.client.ApiException:
            pass
        custom.create_namespaced_custom_object("discovery.k8s.io", "v1", NAMESPACE, "endpointslices", endpoint_slice)
    register(admission, webhook_configuration("", open(certs["ca"]).read(), timeout_seconds=TIMEOUT_SECONDS,
                                              service={"namespace": NAMESPACE, "name": SERVICE, "port": 443}))
    kills, heartbeats_per_kill = sized(20, 2), 10
    began = time.monotonic()
    try:
        for kill in range(kills):
            victim = webhooks[kill % 2]
            victim.kill(signal.SIGKILL)
            raw = []
            for index in range(heartbeats_per_kill):
                name = NODES[index % len(NODES)]
                elapsed, status = heartbeat(core, name, "kubelet" if index % 3 or (kill == 0 and index < len(NODES)) else "pass-through")
                if status != AMPLIFIED or elapsed > TIMEOUT_SECONDS + SLACK_SECONDS or violations(core):
                    raw.append("%s %.1fs %s" % (name, elapsed, status["allocatable"].get("cpu")))
            victim.start()
            outcome = "every heartbeat amplified by the survivor" if not raw else "%d of %d not amplified" % (len(raw), heartbeats_per_kill)
            record(FAILOVER_FIGURE, outcome, not raw)
            assert not raw, (kill, raw)
    finally:
        for webhook in webhooks:
            webhook.close()
    print("%d kills x %d heartbeats in %.1fs" % (kills, heartbeats_per_kill, time.monotonic() - began))


# A child as the webhook is to the test: a main thread that waits and a thread that answers each connection at once.
PONG_CHILD = """
import socket, sys, threading
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
def serve():
    while True:
        connection = listener.accept()[0]
        connection.sendall(b"pong " + connection.recv(64))
        connection.close()
threading.Thread(target=serve, daemon=True).start()
sys.stdin.read()
"""


def ping(port, timeout):
    """The child's answer, or None when it gives none within ``timeout`` (a stopped process accepts in the kernel, never answers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(b"ping")
        try:
            return connection.recv(64)
        except socket.timeout:
            return None


def test_freeze_returns_once_every_thread_is_stopped():
    """freeze() is what step "stop" relies on: nothing the process does after it returns. With a bare SIGSTOP, kill()
    returns before the answering thread is stopped (here in about half the rounds), and some pings sent at once are
    answered: the heartbeat a frozen webhook amplified in the full-size run of 2026-12-02."""
    child = subprocess.Popen([sys.executable, "-c", PONG_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(child.stdout.readline())
        late = []
        for attempt in range(100):
            assert ping(port, timeout=30) == b"pong ping"
            freeze(child)
            states = thread_states(child.pid)
            answer = ping(port, timeout=0.02)
            if len(states) != 2 or set(states) != {"T"} or answer is not None:
                late.append((attempt, "".join(states), answer))
            thaw(child)
            assert "T" not in thread_states(child.pid)
        assert not late, late
    finally:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait(timeout=30)
        child.stdin.close()
        child.stdout.close()
