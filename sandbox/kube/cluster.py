"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

    python -m sandbox.kube.cluster up     --state-dir DIR [--scheduler-extender-config FILE] [--bin-dir BIN]
    python -m sandbox.kube.cluster status --state-dir DIR
    python -m sandbox.kube.cluster down   --state-dir DIR

The binaries are the pinned release built by sandbox/kube/build.sh (.build/kube/<version>/). Everything lives under
DIR: pki/ (own CA, serving and client certificates, service-account key), etcd/ (data), logs/, run/ (pids),
ports.json (chosen free at the first `up`, kept across restarts), admin.kubeconfig (O=system:masters) and one
kubeconfig per daemon, scheduler-config.yaml (a KubeSchedulerConfiguration; with --scheduler-extender-config, the
`extenders` entry of the file the scheduler_extender role writes is merged in, as the role tells users to).

`up` is idempotent: what runs and is healthy is left alone, what is missing is started, and it waits on each
component's health endpoint. `down` sends SIGTERM, then SIGKILL after --timeout seconds, and waits until every
process is gone. Nothing is written outside DIR, nothing is mounted, no root privilege is used.
"""

import argparse
import base64
import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GO_MOD = os.path.join(REPO, "sandbox", "kube", "go.mod")
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Small, so that a node whose heartbeats stop turns NotReady quickly (the fake-node tests rely on it); upstream: 50s.
NODE_MONITOR_GRACE = "20s"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
PORTS = ("etcd_client", "etcd_peer", "apiserver", "controller_manager", "scheduler")
PORT_OWNERS = {"etcd_client": "etcd", "etcd_peer": "etcd", "apiserver": "kube-apiserver",
               "controller_manager": "kube-controller-manager", "scheduler": "kube-scheduler"}
PORT_RANGE = (20000, 32000)  # below the kernel's ephemeral range (32768-60999), where outgoing connections land
DAEMON_USERS = {"controller-manager": "system:kube-controller-manager", "scheduler": "system:kube-scheduler"}


def pinned_version():
    """The Kubernetes release that sandbox/kube/go.mod pins (e.g. v1.37.2)."""
    with open(GO_MOD, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "k8s.io/kubernetes" and fields[1].startswith("v"):
                return fields[1]
    raise RuntimeError("no k8s.io/kubernetes version in %s" % GO_MOD)


def default_bin_dir():
    return os.environ.get("KUBE_BIN_DIR") or os.path.join(REPO, ".build", "kube", pinned_version())


class Progress:
    """Progress lines with the seconds elapsed since `up`/`down` began."""

    def __init__(self, quiet=False):
        self.start = time.monotonic()
        self.quiet = quiet

    def elapsed(self):
        return time.monotonic() - self.start

    def __call__(self, message):
        if not self.quiet:
            print("cluster: [+%5.1fs] %s" % (self.elapsed(), message), flush=True)


# --- certificates ------------------------------------------------------------------------------------------------

def crypto_modules():
    """The `cryptography` modules, imported when certificates are made (not for `status` or `down`)."""
    # pylint: disable=import-outside-toplevel
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    return types.SimpleNamespace(x509=x509, hashes=hashes, serialization=serialization, ec=ec, eku=ExtendedKeyUsageOID, oid=NameOID)


def write_file(path, data, mode=0o600):
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as handle:
        handle.write(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def _new_key(path):
    crypto = crypto_modules()
    serialization = crypto.serialization
    key = crypto.ec.generate_private_key(crypto.ec.SECP256R1())
    write_file(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return key


def issue_certificate(pki, name, common_name, ca=None, organizations=(), server=False, client=False, dns=(), ips=()):
    # pylint: disable=too-many-arguments,too-many-positional-arguments,too-many-locals
    """Write pki/NAME.key and pki/NAME.crt: a CA (ca=None) or a certificate signed by ca=(key, cert)."""
    crypto = crypto_modules()
    x509, hashes, serialization, eku, oid = crypto.x509, crypto.hashes, crypto.serialization, crypto.eku, crypto.oid
    key = _new_key(os.path.join(pki, name + ".key"))
    subject = x509.Name([x509.NameAttribute(oid.ORGANIZATION_NAME, org) for org in organizations]
                        + [x509.NameAttribute(oid.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650)))
    if ca is None:
        builder = (builder.issuer_name(subject)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        signer = key
    else:
        signer, ca_cert = ca
        usages = ([eku.SERVER_AUTH] if server else []) + ([eku.CLIENT_AUTH] if client else [])
        builder = (builder.issuer_name(ca_cert.subject)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False))
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    write_file(os.path.join(pki, name + ".crt"), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key, cert


def ensure_pki(state, progress):
    """The CA, serving certificates, client certificates and the service-account key pair; made once, then kept."""
    pki = os.path.join(state, "pki")
    if os.path.exists(os.path.join(pki, "complete")):
        return pki
    os.makedirs(pki, mode=0o700, exist_ok=True)
    ca = issue_certificate(pki, "ca", "katalyst-sandbox-kubernetes-ca")
    api_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    issue_certificate(pki, "apiserver", "kube-apiserver", ca, server=True, ips=("127.0.0.1", api_ip),
                      dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"))
    issue_certificate(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ca, ["system:masters"], client=True)
    issue_certificate(pki, "admin", "kubernetes-admin", ca, ["system:masters"], client=True)
    # The front proxy (requestheader) CA: the apiserver's identity towards aggregated APIs, and what the daemons'
    # delegated authentication reads from kube-system/extension-apiserver-authentication.
    issue_certificate(pki, "front-proxy-client", "front-proxy-client", issue_certificate(pki, "front-proxy-ca", "katalyst-sandbox-front-proxy-ca"), client=True)
    for daemon, user in DAEMON_USERS.items():
        issue_certificate(pki, daemon, user, ca, client=True)                                     # its identity towards the apiserver
        issue_certificate(pki, daemon + "-serving", user, ca, server=True, dns=("localhost",), ips=("127.0.0.1",))  # its /healthz port
    serialization = crypto_modules().serialization
    sa_key = _new_key(os.path.join(pki, "sa.key"))
    write_file(os.path.join(pki, "sa.pub"), sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    write_file(os.path.join(pki, "complete"), "")
    progress("certificates: own CA, apiserver serving cert, admin + daemon client certs, service-account key (%s)" % pki)
    return pki


def _b64file(path):
    with open(path, "rb") as handle:
        return base64.b64encode(handle.read()).decode()


def write_kubeconfig(path, server, pki, cert_name, user):
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sandbox-kube", "preferences": {},
        "clusters": [{"name": "sandbox-kube", "cluster": {
            "server": server, "certificate-authority-data": _b64file(os.path.join(pki, "ca.crt"))}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64file(os.path.join(pki, cert_name + ".crt")),
            "client-key-data": _b64file(os.path.join(pki, cert_name + ".key"))}}],
        "contexts": [{"name": "sandbox-kube", "context": {"cluster": "sandbox-kube", "user": user}}],
    }
    write_if_changed(path, yaml.safe_dump(config, sort_keys=False))


def write_if_changed(path, text):
    """Write the file unless it already holds exactly this text; return whether it changed."""
    with contextlib.suppress(OSError):
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    write_file(path, text)
    return True


def scheduler_config(state, extender_config=None):
    """Our KubeSchedulerConfiguration, with the `extenders` of the scheduler_extender role's file merged in."""
    config = {
        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": os.path.join(state, "scheduler.kubeconfig")},
        "leaderElection": {"leaderElect": False},
    }
    if extender_config:
        with open(extender_config, encoding="utf-8") as handle:
            extra = yaml.safe_load(handle) or {}
        if extra.get("kind", "KubeSchedulerConfiguration") != "KubeSchedulerConfiguration" or not extra.get("extenders"):
            raise RuntimeError("%s: no `extenders` in a KubeSchedulerConfiguration" % extender_config)
        config["extenders"] = extra["extenders"]
    return yaml.safe_dump(config, sort_keys=False)


# --- ports -------------------------------------------------------------------------------------------------------

def port_free(port):
    """Whether a listener can bind 127.0.0.1:port. SO_REUSEADDR as Go's listeners set it: the TIME_WAIT connections a
    stopped daemon leaves behind do not make its port taken, only another listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(taken):
    for port in random.sample(range(*PORT_RANGE), 500):
        if port not in taken and port_free(port):
            return port
    raise RuntimeError("no free port in %d-%d" % PORT_RANGE)


def port_freed(port, timeout=10.0):
    """Whether the port is free or frees within ``timeout``: a component just killed may still hold it (a SIGKILLed
    multi-threaded process shows as a zombie while its other threads exit; their sockets close last)."""
    deadline = time.monotonic() + timeout
    while not port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def ensure_ports(state, running, progress):
    """The recorded ports (ports.json); new free ones at the first start, or for a stopped component whose port
    another process took meanwhile. `running`: the components that run (their ports are theirs, not taken)."""
    path = os.path.join(state, "ports.json")
    ports = {}
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8") as handle:
            ports = {k: int(v) for k, v in json.load(handle).items() if k in PORTS}
    for name in PORTS:
        port = ports.get(name)
        # a restarted component keeps its port (clients hold it in their kubeconfigs) unless another process keeps it
        if port and (PORT_OWNERS[name] in running or port_freed(port)):
            continue
        ports[name] = pick_port(set(ports.values()))
        if port:
            progress("port %d (%s) is taken by another process: using %d" % (port, name, ports[name]))
    write_if_changed(path, json.dumps(ports, indent=1, sort_keys=True) + "\n")
    return ports


# --- processes ---------------------------------------------------------------------------------------------------

def _proc_stat(pid):
    """(state, starttime) of a process from /proc, or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def _pid_file(state, name):
    return os.path.join(state, "run", name + ".json")


def recorded(state, name):
    with contextlib.suppress(OSError, ValueError):
        with open(_pid_file(state, name), encoding="utf-8") as handle:
            return json.load(handle)
    return None


def alive(record):
    """Whether the recorded process still runs (same pid AND same start time, so a reused pid does not count;
    a zombie waiting for its reaper is dead)."""
    if not record:
        return False
    stat = _proc_stat(record["pid"])
    return bool(stat) and stat[0] not in ("Z", "X") and stat[1] == record["starttime"]


def start(state, name, argv):
    log = os.path.join(state, "logs", name + ".log")
    with open(log, "ab") as out:
        out.write(("\n==== %s start: %s\n" % (datetime.datetime.now().isoformat(timespec="seconds"), " ".join(argv))).encode())
        out.flush()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                   cwd=state, start_new_session=True)
    stat = _proc_stat(process.pid)
    record = {"pid": process.pid, "starttime": stat[1] if stat else 0, "argv": argv, "log": log}
    write_file(_pid_file(state, name), json.dumps(record, indent=1) + "\n")
    return record, process


def log_tail(path, lines=15):
    with contextlib.suppress(OSError):
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 20000))
            return "\n".join(handle.read().decode(errors="replace").splitlines()[-lines:])
    return ""


def _last_start_log(path):
    """What the log holds since the last start (each start writes a `==== ` line)."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 200000))
            return handle.read().decode(errors="replace").rsplit("\n==== ", 1)[-1]
    return ""


def https_get(url, pki, cert_name="admin", timeout=5.0):
    """GET over TLS verified against our CA, with a client certificate; (status, body) or (None, error)."""
    context = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
    context.load_cert_chain(os.path.join(pki, cert_name + ".crt"), os.path.join(pki, cert_name + ".key"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    return _get(opener, url, timeout)


def http_get(url, timeout=5.0):
    return _get(urllib.request.build_opener(urllib.request.ProxyHandler({})), url, timeout)


def _get(opener, url, timeout):
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as err:
        return None, str(err)


class Cluster:
    """The control plane of one state directory."""

    def __init__(self, state, bin_dir=None, progress=None, without=(), disabled_controllers=(), disabled_admission_plugins=()):
        """`without`: components not to run (e.g. the scheduler, for tests that bind pods themselves);
        `disabled_controllers`: controller-manager controllers to turn off (e.g. node-lifecycle-controller, for Node
        objects that no kubelet keeps alive); `disabled_admission_plugins`: apiserver admission plugins to turn off
        (e.g. TaintNodesByCondition, whose not-ready taint only the node lifecycle controller removes)."""
        unknown = set(without) - set(COMPONENTS[2:])
        if unknown:
            raise RuntimeError("only the controller-manager and the scheduler can be left out, not %s" % ", ".join(sorted(unknown)))
        self.components = tuple(c for c in COMPONENTS if c not in without)
        self.disabled_controllers = tuple(disabled_controllers)
        self.disabled_admission_plugins = tuple(disabled_admission_plugins)
        self.state = os.path.abspath(state)
        self.bin_dir = os.path.abspath(bin_dir or default_bin_dir())
        self.progress = progress or Progress()
        self.pki = os.path.join(self.state, "pki")
        self.ports = {}
        self.kubeconfig = os.path.join(self.state, "admin.kubeconfig")

    # the command line of each component
    def argv(self, name):
        p, pki, st = self.ports, self.pki, self.state
        binary = os.path.join(self.bin_dir, name)
        if name == "etcd":
            peer = "http://127.0.0.1:%d" % p["etcd_peer"]
            client = "http://127.0.0.1:%d" % p["etcd_client"]
            return [binary, "--name=sandbox", "--data-dir=%s" % os.path.join(st, "etcd"),
                    "--listen-client-urls=" + client, "--advertise-client-urls=" + client,
                    "--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
                    "--initial-cluster=sandbox=" + peer, "--log-level=warn"]
        if name == "kube-apiserver":
            return [binary, "--etcd-servers=http://127.0.0.1:%d" % p["etcd_client"],
                    "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=%d" % p["apiserver"],
                    "--tls-cert-file=%s/apiserver.crt" % pki, "--tls-private-key-file=%s/apiserver.key" % pki,
                    "--client-ca-file=%s/ca.crt" % pki,
                    "--authorization-mode=Node,RBAC",
                    # The default chain stays on; these are named so that a reader sees the webhooks are in it.
                    "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                    "--requestheader-client-ca-file=%s/front-proxy-ca.crt" % pki,
                    "--requestheader-allowed-names=front-proxy-client", "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    "--proxy-client-cert-file=%s/front-proxy-client.crt" % pki,
                    "--proxy-client-key-file=%s/front-proxy-client.key" % pki,
                    "--service-account-issuer=" + SA_ISSUER,
                    "--service-account-key-file=%s/sa.pub" % pki, "--service-account-signing-key-file=%s/sa.key" % pki,
                    "--service-cluster-ip-range=" + SERVICE_CIDR,
                    "--kubelet-client-certificate=%s/apiserver-kubelet-client.crt" % pki,
                    "--kubelet-client-key=%s/apiserver-kubelet-client.key" % pki,
                    # A node's name does not resolve here (no DNS for it): reach kubelets at their InternalIP, as kubeadm does.
                    "--kubelet-preferred-address-types=InternalIP,Hostname",
                    # The `kubernetes` Service cannot point at a loopback address (the apiserver refuses to start).
                    "--endpoint-reconciler-type=none",
                    "--allow-privileged=true", "--profiling=false", "--cert-dir=%s" % os.path.join(pki, "generated")] + (
                        ["--disable-admission-plugins=" + ",".join(self.disabled_admission_plugins)] if self.disabled_admission_plugins else [])
        daemon = "controller-manager" if name == "kube-controller-manager" else "scheduler"
        kubeconfig = os.path.join(st, daemon + ".kubeconfig")
        common = [binary, "--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig,
                  "--authorization-kubeconfig=" + kubeconfig, "--bind-address=127.0.0.1",
                  "--secure-port=%d" % p["controller_manager" if daemon == "controller-manager" else "scheduler"],
                  "--tls-cert-file=%s/%s-serving.crt" % (pki, daemon), "--tls-private-key-file=%s/%s-serving.key" % (pki, daemon),
                  "--client-ca-file=%s/ca.crt" % pki, "--profiling=false"]
        if name == "kube-controller-manager":
            return common + ["--use-service-account-credentials=true", "--leader-elect=false",
                             "--service-account-private-key-file=%s/sa.key" % pki, "--root-ca-file=%s/ca.crt" % pki,
                             "--cluster-signing-cert-file=%s/ca.crt" % pki, "--cluster-signing-key-file=%s/ca.key" % pki,
                             "--service-cluster-ip-range=" + SERVICE_CIDR,
                             "--node-monitor-grace-period=" + NODE_MONITOR_GRACE, "--node-monitor-period=2s",
                             "--controllers=" + ",".join(["*"] + ["-" + c for c in self.disabled_controllers])]
        return [a for a in common if not a.startswith("--kubeconfig=")] + [
            "--config=" + os.path.join(st, "scheduler-config.yaml")]

    def health(self, name):
        """(healthy, detail) of a component, from its own health endpoint."""
        p = self.ports
        if name == "etcd":
            status, body = http_get("http://127.0.0.1:%d/health" % p["etcd_client"])
            return status == 200 and '"true"' in body, body
        url = {"kube-apiserver": "https://127.0.0.1:%d/readyz" % p["apiserver"],
               "kube-controller-manager": "https://127.0.0.1:%d/healthz" % p["controller_manager"],
               "kube-scheduler": "https://127.0.0.1:%d/healthz" % p["scheduler"]}[name]
        status, body = https_get(url, self.pki)
        return status == 200 and body.strip() == "ok", "%s %s" % (status, body.strip()[-300:])

    def wait_healthy(self, name, record, process, timeout):
        deadline = time.monotonic() + timeout
        detail = ""
        while time.monotonic() < deadline:
            # Exited first: on a port it failed to bind, another process (another test's etcd) may answer.
            if process.poll() is not None or not alive(record):
                raise RuntimeError("%s exited (code %s) before it became healthy; its log %s ends:\n%s"
                                   % (name, process.poll(), record["log"], log_tail(record["log"])))
            ok, detail = self.health(name)
            if ok and alive(record):
                return
            time.sleep(0.5)
        raise RuntimeError("%s not healthy after %.0fs (last: %s); its log %s ends:\n%s"
                           % (name, timeout, detail, record["log"], log_tail(record["log"])))

    def check_binaries(self):
        for name in COMPONENTS:
            path = os.path.join(self.bin_dir, name)
            if not os.access(path, os.X_OK):
                raise RuntimeError("%s is missing: build the pinned release first (`make kube-build`)" % path)

    @contextlib.contextmanager
    def locked(self):
        os.makedirs(self.state, exist_ok=True)
        with open(os.path.join(self.state, ".lock"), "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def write_configs(self, extender_config):
        """The kubeconfigs (they name the apiserver's port) and the scheduler's configuration; whether the latter changed."""
        server = "https://127.0.0.1:%d" % self.ports["apiserver"]
        write_kubeconfig(self.kubeconfig, server, self.pki, "admin", "kubernetes-admin")
        for daemon, user in DAEMON_USERS.items():
            write_kubeconfig(os.path.join(self.state, daemon + ".kubeconfig"), server, self.pki, daemon, user)
        return write_if_changed(os.path.join(self.state, "scheduler-config.yaml"), scheduler_config(self.state, extender_config))

    def start_component(self, name, timeout, running, extender_config):
        """Start one component and wait until it is healthy. When its port was taken between the choice and the bind
        (other test suites on this machine), choose another, rewrite what names it, and try again (3 attempts)."""
        for attempt in range(1, 4):
            record, process = start(self.state, name, self.argv(name))
            self.progress("%s started (pid %d, log %s): waiting until healthy" % (name, record["pid"], record["log"]))
            try:
                self.wait_healthy(name, record, process, timeout)
                break
            except RuntimeError:
                if attempt == 3 or process.poll() is None or "address already in use" not in _last_start_log(record["log"]):
                    raise
            keys = [k for k, owner in PORT_OWNERS.items() if owner == name]
            for key in keys:
                self.ports[key] = pick_port(set(self.ports.values()))
            write_file(os.path.join(self.state, "ports.json"), json.dumps(self.ports, indent=1, sort_keys=True) + "\n")
            self.progress("%s: its port was taken meanwhile: trying again on %s" % (name, ", ".join(str(self.ports[k]) for k in keys)))
            self.write_configs(extender_config)
            if name == "kube-apiserver":  # the daemons that run still point at the old port
                dependents = [n for n in ("kube-controller-manager", "kube-scheduler") if n in running]
                self.stop(dependents, 30.0)
                running.difference_update(dependents)
        self.progress("%s healthy on 127.0.0.1:%d" % (name, self.ports[_port_of(name)]))

    def up(self, extender_config=None, timeout=240.0):
        """Start what does not run, wait until everything is healthy. Return the number of components started."""
        self.check_binaries()
        with self.locked():
            for sub in ("logs", "run", "etcd"):
                os.makedirs(os.path.join(self.state, sub), mode=0o700, exist_ok=True)
            running = {n for n in COMPONENTS if alive(recorded(self.state, n))}
            unwanted = [n for n in COMPONENTS if n in running and n not in self.components]
            if unwanted:
                self.progress("not wanted in this control plane: stopping %s" % ", ".join(unwanted))
                self.stop(unwanted, 30.0)
                running.difference_update(unwanted)
            ensure_pki(self.state, self.progress)
            self.ports = ensure_ports(self.state, running, self.progress)
            if self.write_configs(extender_config) and "kube-scheduler" in running:
                self.progress("scheduler configuration changed: restarting kube-scheduler")
                self.stop(["kube-scheduler"], 30.0)
                running.discard("kube-scheduler")
            write_file(os.path.join(self.state, "components.json"), json.dumps(list(self.components)) + "\n")
            started = 0
            for name in self.components:
                if name in running and name != "kube-scheduler" and recorded(self.state, name)["argv"] != self.argv(name):
                    self.progress("%s runs with other options than asked for: restarting it" % name)
                    self.stop([name], 30.0)
                    running.discard(name)
                if name not in running:
                    self.start_component(name, timeout, running, extender_config)
                    started += 1
                    continue
                record = recorded(self.state, name)
                ok, detail = self.health(name)
                if not ok:
                    self.progress("%s runs (pid %d) but is not healthy yet (%s): waiting" % (name, record["pid"], detail))
                    self.wait_healthy(name, record, Adopted(record), timeout)
                self.progress("%s already runs (pid %d) and is healthy" % (name, record["pid"]))
            if started:
                self.progress("control plane up in %.1fs: export KUBECONFIG=%s" % (self.progress.elapsed(), self.kubeconfig))
            else:
                self.progress("everything already runs: nothing to do (KUBECONFIG=%s)" % self.kubeconfig)
            return started

    def stop(self, names, timeout):
        """SIGTERM the recorded processes, SIGKILL what still runs after `timeout`, wait until all are gone."""
        records = {n: recorded(self.state, n) for n in names}
        running = {n: r for n, r in records.items() if alive(r)}
        for name, record in running.items():
            self.progress("stopping %s (pid %d)" % (name, record["pid"]))
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(alive(r) for r in running.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for name, record in running.items():
            if alive(record):
                self.progress("%s (pid %d) did not stop within %.0fs: SIGKILL" % (name, record["pid"], timeout))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(alive(r) for r in running.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("still running after SIGKILL: %s" % ", ".join(n for n, r in running.items() if alive(r)))
            time.sleep(0.1)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_pid_file(self.state, name))
        if running:
            self.progress("%s stopped" % ", ".join(running))
        return list(running)

    def down(self, timeout=30.0):
        """Stop the clients of the apiserver, then the apiserver, then etcd (so none of them waits on a dead peer)."""
        if not os.path.isdir(self.state):
            self.progress("no state directory %s: nothing runs" % self.state)
            return []
        stopped = []
        with self.locked():
            for group in (["kube-scheduler", "kube-controller-manager"], ["kube-apiserver"], ["etcd"]):
                stopped += self.stop(group, timeout)
        self.progress("stopped %s" % (", ".join(stopped) if stopped else "nothing: nothing ran"))
        return stopped

    def status(self):
        """{component: (pid or None, healthy, detail)}."""
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(self.state, "ports.json"), encoding="utf-8") as handle:
                self.ports = json.load(handle)
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(self.state, "components.json"), encoding="utf-8") as handle:
                self.components = tuple(json.load(handle))
        result = {}
        for name in self.components:
            record = recorded(self.state, name)
            if not alive(record):
                result[name] = (None, False, "not running")
                continue
            ok, detail = self.health(name)
            result[name] = (record["pid"], ok, detail)
        return result


class Adopted:  # pylint: disable=too-few-public-methods
    """A process started by an earlier `up` (not our child): poll() says whether it exited, as Popen's does."""

    def __init__(self, record):
        self.record = record

    def poll(self):
        return None if alive(self.record) else "?"


def _port_of(name):
    return {"etcd": "etcd_client", "kube-apiserver": "apiserver", "kube-controller-manager": "controller_manager",
            "kube-scheduler": "scheduler"}[name]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sandbox.kube.cluster", description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--bin-dir", help="the built release (default: .build/kube/<go.mod's version>, or $KUBE_BIN_DIR)")
    parser.add_argument("--scheduler-extender-config",
                        help="the KubeSchedulerConfiguration the scheduler_extender role writes: its `extenders` are merged in")
    parser.add_argument("--without", action="append", default=[], choices=COMPONENTS[2:],
                        help="up: leave this component out (repeatable)")
    parser.add_argument("--disable-controller", action="append", default=[], metavar="NAME",
                        help="up: turn this kube-controller-manager controller off (repeatable), e.g. node-lifecycle-controller")
    parser.add_argument("--disable-admission-plugin", action="append", default=[], metavar="NAME",
                        help="up: turn this kube-apiserver admission plugin off (repeatable), e.g. TaintNodesByCondition")
    parser.add_argument("--timeout", type=float, default=None,
                        help="up: seconds to wait for each component (240); down: seconds between SIGTERM and SIGKILL (30)")
    args = parser.parse_args(argv)
    cluster = Cluster(args.state_dir, args.bin_dir, without=args.without, disabled_controllers=args.disable_controller,
                      disabled_admission_plugins=args.disable_admission_plugin)

    def status():
        states = cluster.status()
        lines = ["%-24s %s" % (name, "pid %d, %s" % (pid, "healthy" if ok else "UNHEALTHY: " + detail) if pid else "not running")
                 for name, (pid, ok, detail) in states.items()]
        return lines, all(state[1] for state in states.values())
    return run_command("cluster", args.command, lambda: cluster.up(args.scheduler_extender_config, timeout=args.timeout or 240.0),
                       lambda: cluster.down(timeout=args.timeout or 30.0), status)


def run_command(prog, command, up, down, status):
    """The up|down|status command line's shape, shared with sandbox.kube.node: ``status()`` gives (lines, healthy);
    exit 0, 3 when status finds something not running or unhealthy, 1 on an error (printed)."""
    try:
        if command == "up":
            up()
        elif command == "down":
            down()
        else:
            lines, healthy = status()
            print("\n".join(lines))
            return 0 if healthy else 3
    except RuntimeError as err:
        print("%s: ERROR: %s" % (prog, err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
