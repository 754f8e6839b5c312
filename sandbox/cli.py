"""Bring the embedded sandbox up and down, and run the demo against it.

    python -m sandbox up     [--state-dir .sandbox] [--backend emulator|real] [--without-real-node]
                                                      cluster + node sysroots + kubelets (+ a real kubelet node)
    python -m sandbox status [--state-dir .sandbox]
    python -m sandbox demo   [--state-dir .sandbox]   playbooks/site.yml, playbooks/examples/sample_workload.yml, a summary
    python -m sandbox report [--state-dir .sandbox]   the summary's node tables again (sandbox/demo_report.py)
    python -m sandbox down   [--state-dir .sandbox]
    python -m sandbox service ensure|restart|stop NAME [--fingerprint F] -- COMMAND...

`service` is the sandbox's stand-in for systemd: the roles start their daemons with it when
`katalyst_service_manager: sandbox` (there is no systemd on the sandbox's machine). `ensure` starts
the daemon unless it already runs with the same fingerprint (a hash of its config and code), and
prints `changed` or `unchanged` so Ansible can report it honestly.

The emulator keeps its objects in STATE_DIR/apiserver.json and its port in STATE_DIR/apiserver.port, so `down`
then `up` (or a second `make demo`) finds the cluster as it was left, at the same address: the kubeconfigs the
demo installed stay valid and the demo only restarts the daemons. When that port is taken by then, the emulator
takes a free one and `up` says so.

Two backends play the cluster. `emulator` (the default, up in seconds): our API emulator plus the sandbox scheduler.
`real` (sandbox/realbackend.py): the pinned Kubernetes release's etcd, kube-apiserver, kube-controller-manager and
kube-scheduler on loopback (built first when missing), state in STATE/kube. Either way the sandbox kubelets keep the
sandbox nodes' Node objects alive, and the node plays and the daemons are the same. The real backend adds a real
kubelet node where the host can run one (root, containerd): kube-node-0, with real pods and processes, which the
demo's playbooks include through STATE/real-node.yml (`--without-real-node` leaves it out). `up` records its backend in
STATE/backend; `demo` and `status` follow it, `up` with the other backend stops the one that ran, and `down` stops
whichever runs.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse

import yaml

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVENTORY = os.path.join(TOP, "inventories", "sandbox", "hosts.yml")
PLAYBOOK = os.path.join(TOP, "playbooks", "site.yml")
# The demo's sample workload: pools and pods of every QoS level, so that the summary has something to show.
WORKLOAD_PLAYBOOK = os.path.join(TOP, "playbooks", "examples", "sample_workload.yml")
SETTLE_TIMEOUT = 180   # seconds for the agents to bind NUMA nodes and the next heartbeats to come back amplified
BACKENDS = ("emulator", "real")
BACKEND_FILE = "backend"           # the backend `up` started in this state directory: `demo` and `status` follow it
API_PORT_FILE = "apiserver.port"   # the emulator's port, kept across down/up so that the kubeconfigs stay the same
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)")


def inventory_nodes(path=INVENTORY):
    with open(path) as handle:
        inventory = yaml.safe_load(handle)
    hosts = inventory["all"]["children"]["katalyst_nodes"]["hosts"]
    return sorted(hosts)


def pid_alive(pidfile, marker=b"sandbox"):
    """The pid in ``pidfile`` if that process runs and its command line contains ``marker``."""
    try:
        with open(pidfile) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, 0)
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return pid if marker in handle.read() else None
    except (OSError, ValueError):
        return None


def start_process(args, pidfile, logfile):
    with open(logfile, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=TOP)
    with open(pidfile, "w") as handle:
        handle.write(str(process.pid))
    return process


def stop_process(pidfile, name, timeout=15.0, marker=b"sandbox"):
    pid = pid_alive(pidfile, marker)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and pid_alive(pidfile, marker):
            time.sleep(0.1)
        if pid_alive(pidfile, marker):
            os.kill(pid, signal.SIGKILL)
        print("stopped %s (pid %d)" % (name, pid))
    if os.path.exists(pidfile):
        os.unlink(pidfile)


def kube_client(kubeconfig):
    from kubernetes import client, config  # pylint: disable=import-outside-toplevel
    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    last_error = None
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # pylint: disable=broad-except
            last_error = exc
        time.sleep(0.2)
    sys.exit("sandbox: timed out waiting for %s%s" % (what, " (%s)" % last_error if last_error else ""))


def nodes_ready(kubeconfig, names):
    core = kube_client(kubeconfig)
    ready = set()
    for node in core.list_node().items:
        for condition in (node.status.conditions or []) if node.status else []:
            if condition.type == "Ready" and condition.status == "True":
                ready.add(node.metadata.name)
    return set(names) <= ready


def kubeconfig_port(kubeconfig):
    """The port of the server the kubeconfig's first cluster names, or None (no file, no port, unreadable)."""
    try:
        with open(kubeconfig) as handle:
            server = yaml.safe_load(handle)["clusters"][0]["cluster"]["server"]
        return urllib.parse.urlsplit(server).port
    except (OSError, ValueError, LookupError, TypeError, AttributeError, yaml.YAMLError):
        return None


def recorded_api_port(state):
    """The port this state directory's emulator last served on: STATE/apiserver.port, else its kubeconfig's, else None."""
    try:
        with open(os.path.join(state, API_PORT_FILE)) as handle:
            port = int(handle.read().strip())
        return port if 0 < port < 65536 else None
    except (OSError, ValueError):
        return kubeconfig_port(os.path.join(state, "kubeconfig"))


def start_api_emulator(state, timeout=120):
    """Start the emulator of ``state`` on its recorded port, so that its kubeconfig (and every copy the roles install)
    stays the same across restarts; on a free port when none is recorded or the recorded one is taken.
    Wait until it serves and record its port. Return (port, which port that is, in words: "the recorded one", ...)."""
    kubeconfig = os.path.join(state, "kubeconfig")
    api_pidfile = os.path.join(state, "apiserver.pid")
    recorded = recorded_api_port(state)
    if os.path.exists(kubeconfig):
        os.unlink(kubeconfig)   # the emulator writes it once it listens: its appearance is the signal to wait for
    logfile = os.path.join(state, "apiserver.log")
    process = start_process([sys.executable, "-m", "sandbox.kubeapi", "--port", str(recorded or 0), "--port-fallback",
                             "--state", os.path.join(state, "apiserver.json"), "--kubeconfig", kubeconfig, "--pidfile", api_pidfile],
                            api_pidfile, logfile)

    def serving():
        if process.poll() is not None:
            sys.exit("sandbox: the API emulator exited with code %d; see %s" % (process.returncode, logfile))
        return os.path.exists(kubeconfig) and kube_client(kubeconfig).list_namespace() is not None
    wait_for(serving, timeout, "the API emulator")
    port = kubeconfig_port(kubeconfig)
    with open(os.path.join(state, API_PORT_FILE), "w") as handle:
        handle.write("%d\n" % port)
    if recorded is None:
        return port, "a new one"
    if port == recorded:
        return port, "the recorded one"
    return port, "a new one: the recorded port %d is taken, so the next demo points the daemons' kubeconfigs at this one" % recorded


def recorded_backend(state):
    """The backend the last `up` in ``state`` started (the emulator when none did)."""
    try:
        with open(os.path.join(state, BACKEND_FILE)) as handle:
            backend = handle.read().strip()
    except OSError:
        return "emulator"
    return backend if backend in BACKENDS else "emulator"


def record_backend(state, backend):
    with open(os.path.join(state, BACKEND_FILE), "w") as handle:
        handle.write(backend + "\n")


def backend_kubeconfig(state, backend):
    from sandbox import realbackend  # pylint: disable=import-outside-toplevel
    return realbackend.kubeconfig(state) if backend == "real" else os.path.join(state, "kubeconfig")


def emulator_up(state):
    """The API emulator of ``state`` (started unless it runs); its kubeconfig."""
    kubeconfig = os.path.join(state, "kubeconfig")
    if not pid_alive(os.path.join(state, "apiserver.pid")):
        print("sandbox: API emulator up (kubeconfig %s) on port %d, %s" % ((kubeconfig,) + start_api_emulator(state)))
    return kubeconfig


def real_up(state):
    """The real control plane of ``state`` (built and started unless it runs); its admin kubeconfig."""
    from sandbox import realbackend  # pylint: disable=import-outside-toplevel
    return realbackend.up(state)


def stop_cluster(state):
    """Stop whichever cluster runs in ``state``: the kubelets (and sandbox scheduler), the emulator, the real control plane."""
    from sandbox import realbackend  # pylint: disable=import-outside-toplevel
    stop_process(os.path.join(state, "cluster.pid"), "sandbox kubelets and scheduler")
    stop_process(os.path.join(state, "apiserver.pid"), "API emulator")
    realbackend.down(state)


def start_kubelets(state, nodes, kubeconfig, backend):
    """The sandbox kubelets of ``nodes`` against ``kubeconfig``, plus the sandbox scheduler on the emulator (a real
    cluster has kube-scheduler)."""
    cluster_pidfile = os.path.join(state, "cluster.pid")
    if pid_alive(cluster_pidfile):
        return
    command = [sys.executable, "-m", "sandbox.cluster", "--state-dir", state, "--kubeconfig", kubeconfig]
    if backend == "real":
        command.append("--without-scheduler")
    else:
        command += ["--scheduler-config", os.path.join(state, "kube-scheduler-config.yaml")]
    for name in nodes:
        command += ["--node", name]
    start_process(command, cluster_pidfile, os.path.join(state, "cluster.log"))


def cmd_up(args):
    from sandbox.sysroot import build_sysroot  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(prog="python -m sandbox up")
    parser.add_argument("--backend", choices=BACKENDS, default="emulator",
                        help="the cluster: our API emulator (default, seconds) or the real Kubernetes control plane")
    parser.add_argument("--without-real-node", action="store_true",
                        help="real backend: no real kubelet node (kube-node-0), the sandbox nodes only")
    options = parser.parse_args(args.extra)
    backend = options.backend
    state = os.path.abspath(args.state_dir)
    os.makedirs(state, exist_ok=True)
    nodes = inventory_nodes()
    for name in nodes:
        build_sysroot(os.path.join(state, "nodes", name, "sysroot"))
    if recorded_backend(state) != backend:
        print("sandbox: switching %s from the %s to the %s backend" % (state, recorded_backend(state), backend))
        stop_cluster(state)   # the daemons a demo started stay: the next demo gives them the new kubeconfig
    record_backend(state, backend)
    kubeconfig = real_up(state) if backend == "real" else emulator_up(state)
    start_kubelets(state, nodes, kubeconfig, backend)
    # a real kube-controller-manager's node lifecycle controller under load takes longer than the emulator
    wait_for(lambda: nodes_ready(kubeconfig, nodes), 180 if backend == "real" else 60, "%d Ready nodes" % len(nodes))
    where = "real control plane" if backend == "real" else "API emulator"
    print("sandbox: %d nodes Ready on the %s: %s" % (len(nodes), where, ", ".join(nodes)))
    if backend == "real":
        from sandbox import realbackend  # pylint: disable=import-outside-toplevel
        if options.without_real_node:
            realbackend.real_node_down(state)
        elif realbackend.real_node_up(state):
            print("sandbox: real kubelet node %s Ready (containerd + runc, real pods); its inventory: %s"
                  % (realbackend.REAL_NODE, realbackend.real_node_inventory(state)))
    return 0


def service_files(state, name):
    base = os.path.join(state, "services", name)
    return base + ".pid", base + ".fingerprint", base + ".log"


def cmd_service(args):
    state = os.path.abspath(args.state_dir)
    if len(args.extra) < 2:
        sys.exit("usage: python -m sandbox service ensure|restart|stop NAME [--fingerprint F] -- COMMAND...")
    action, name, rest = args.extra[0], args.extra[1], args.extra[2:]
    fingerprint = ""
    if rest[:1] == ["--fingerprint"]:
        fingerprint, rest = rest[1], rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    os.makedirs(os.path.join(state, "services"), exist_ok=True)
    pidfile, fingerprint_file, logfile = service_files(state, name)
    marker = b"katalyst"   # every service the roles start is one of our katalyst-* daemons
    running = pid_alive(pidfile, marker)
    current = open(fingerprint_file).read() if os.path.exists(fingerprint_file) else None
    if action == "stop":
        stop_process(pidfile, name, marker=marker)
        print("changed" if running else "unchanged")
        return 0
    if action == "ensure" and running and current == fingerprint:
        print("unchanged")
        return 0
    if not rest:
        sys.exit("sandbox service %s: no command given" % name)
    stop_process(pidfile, name, marker=marker)
    start_process(rest, pidfile, logfile)
    with open(fingerprint_file, "w") as handle:
        handle.write(fingerprint)
    time.sleep(0.5)
    if not pid_alive(pidfile, marker):
        sys.exit("sandbox service %s exited at once; see %s" % (name, logfile))
    print("changed")
    return 0


def cmd_down(args):
    state = os.path.abspath(args.state_dir)
    services = os.path.join(state, "services")
    for entry in sorted(os.listdir(services)) if os.path.isdir(services) else []:
        if entry.endswith(".pid"):
            stop_process(os.path.join(services, entry), entry[:-4], marker=b"katalyst")
    stop_cluster(state)
    return 0


def cmd_status(args):
    state = os.path.abspath(args.state_dir)
    from sandbox import realbackend  # pylint: disable=import-outside-toplevel
    print("%-24s %s" % ("backend", recorded_backend(state)))
    for name, pidfile in (("API emulator", "apiserver.pid"), ("kubelets+scheduler", "cluster.pid")):
        pid = pid_alive(os.path.join(state, pidfile))
        print("%-24s %s" % (name, "running (pid %d)" % pid if pid else "stopped"))
    for name, words in realbackend.status(state):
        print("%-24s %s" % (name, words))
    return 0


def summarize(runs, kubeconfig, state=None):
    """The demo summary: each playbook's recap, the cluster, then what colocation did on each node. ``runs``:
    [(playbook, its output lines)]. Returns the number of changes."""
    print("\n=== katalyst.colocation demo summary ===")
    total_changed, hosts = 0, set()
    for playbook, output_lines in runs:
        for line in output_lines:
            match = RECAP.match(line.strip())
            if match:
                host = match.groupdict()
                hosts.add(host["host"])
                total_changed += int(host["changed"])
                print("  %-18s ok=%-3s changed=%-3s failed=%-2s %s"
                      % (host["host"], host["ok"], host["changed"], host["failed"], os.path.relpath(playbook, TOP)))
    print("  %d hosts, %d changes%s" % (len(hosts), total_changed, " (converged: nothing to change)" if not total_changed else ""))
    try:
        from kubernetes import client, config  # pylint: disable=import-outside-toplevel
        api = config.new_client_from_config(config_file=kubeconfig)
        crds = client.ApiextensionsV1Api(api).list_custom_resource_definition().items
        print("  cluster: %d nodes, CRDs: %s" % (len(client.CoreV1Api(api).list_node().items),
                                                 ", ".join(sorted(c.metadata.name for c in crds)) or "none"))
    except Exception as exc:  # pylint: disable=broad-except
        print("  cluster: unavailable (%s)" % exc)
    print_report(kubeconfig, state)
    return total_changed


def negative_oom_score_adj(state, nodes):
    """{node: whether its agent may write negative oom_score_adj} from the sandbox nodes' sysroots (CAP_SYS_RESOURCE)."""
    from ansible_collections.katalyst.colocation.plugins.module_utils import nodeinfo  # pylint: disable=import-outside-toplevel
    from ansible_collections.katalyst.colocation.plugins.module_utils.sysfs import SysFS  # pylint: disable=import-outside-toplevel
    allowed = {}
    for name in nodes:
        sysroot = os.path.join(state, "nodes", name, "sysroot") if state else ""
        if sysroot and os.path.isdir(sysroot):
            status = SysFS(sysroot).read_text("/proc/self/status", default="")
            allowed[name] = nodeinfo.cap_eff_allows(status, nodeinfo.CAP_SYS_RESOURCE)
    return allowed


def print_report(kubeconfig, state=None):
    """What the sample workload shows on each node (sandbox/demo_report.py)."""
    from sandbox import demo_report  # pylint: disable=import-outside-toplevel
    try:
        snapshot = demo_report.gather(kubeconfig)
    except Exception as exc:  # pylint: disable=broad-except
        print("  nodes: unavailable (%s)" % exc)
        return
    names = [node["metadata"]["name"] for node in snapshot["nodes"]]
    processes = demo_report.host_processes(snapshot["pods"])
    reports = demo_report.build_reports(snapshot, processes, demo_report.host_totalpages() if processes else 0,
                                        negative_oom_score_adj(state, names))
    print("\n=== colocation on each node: the pods in kill order, first killed first ===")
    for line in demo_report.format_report(reports):
        print(line)
    print("oom_score_adj: actual = read from /proc, the pod's processes run on this host (the real kubelet node of the real\n"
          "  backend); planned = what katalyst-agent writes (its engine, each pod assumed to use its memory request: the sandbox\n"
          "  kubelets run no processes). Only the order within a node matters: a node with one priority gets the most\n"
          "  protective value.")


def wait_for_workload(kubeconfig, timeout=SETTLE_TIMEOUT):
    """Until the sample workload has settled (pods running, NUMA bindings, amplified allocatable), at most ``timeout``
    seconds; what is still missing then is printed, and the demo goes on."""
    from sandbox import demo_report  # pylint: disable=import-outside-toplevel
    print("sandbox: waiting up to %d s for the sample workload: pods running, NUMA bindings, amplified allocatable, "
          "real processes in priority order" % timeout,
          flush=True)
    started = time.monotonic()
    missing = ["nothing read yet"]
    while time.monotonic() - started < timeout:
        try:
            snapshot = demo_report.gather(kubeconfig)
            processes = demo_report.host_processes(snapshot["pods"])
            reports = demo_report.build_reports(snapshot, processes, demo_report.host_totalpages()) if processes else ()
            missing = demo_report.unsettled(snapshot, reports=reports)
        except Exception as exc:  # pylint: disable=broad-except
            missing = ["the cluster did not answer (%s)" % exc]
        if not missing:
            print("sandbox: the sample workload settled in %.0f s" % (time.monotonic() - started))
            return True
        time.sleep(1.0)
    print("sandbox: after %d s still waiting for: %s" % (timeout, "; ".join(missing)))
    return False


def run_playbook(command):
    """Run ansible-playbook, echoing its output; (return code, output lines)."""
    print("sandbox: %s" % " ".join(command), flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=TOP)
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    return process.wait(), lines


def cmd_demo(args):
    state = os.path.abspath(args.state_dir)
    backend = recorded_backend(state)
    kubeconfig = backend_kubeconfig(state, backend)
    # All sandbox nodes at once (serial is a play keyword: inventory variables cannot set it).
    options = ["-e", "katalyst_node_serial=100%"]
    if backend == "real":   # the same inventory, pointed at the real cluster (client certificates, RBAC)
        options += ["-e", "katalyst_kubeconfig=%s" % kubeconfig]
    options += list(args.extra)
    inventories = ["-i", INVENTORY]
    if backend == "real":
        from sandbox import realbackend  # pylint: disable=import-outside-toplevel
        if realbackend.real_node_inventory(state):   # the real kubelet node `up` started: its agent, its pods
            inventories += ["-i", realbackend.real_node_inventory(state)]
    rc, lines = run_playbook(["ansible-playbook"] + inventories + [PLAYBOOK] + options)
    runs = [(PLAYBOOK, lines)]
    if backend == "real" and rc == 0:
        realbackend.apply_scheduler_config(state)
    if rc == 0:
        # after kube-scheduler took the extender (real backend), so that the pods are placed through it
        rc, lines = run_playbook(["ansible-playbook"] + inventories + [WORKLOAD_PLAYBOOK] + options)
        runs.append((WORKLOAD_PLAYBOOK, lines))
    if rc == 0:
        wait_for_workload(kubeconfig)
    summarize(runs, kubeconfig, state)
    return rc


def cmd_report(args):
    state = os.path.abspath(args.state_dir)
    print_report(backend_kubeconfig(state, recorded_backend(state)), state)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # --state-dir may come anywhere before a "--"; everything else after the command is passed through.
    state_dir = os.path.join(TOP, ".sandbox")
    end = argv.index("--") if "--" in argv else len(argv)
    if "--state-dir" in argv[:end]:
        index = argv.index("--state-dir")
        state_dir = argv[index + 1]
        del argv[index:index + 2]
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "demo", "report", "service"))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="extra ansible-playbook arguments (demo)")
    args = parser.parse_args(argv[:1])
    args.extra = argv[1:]
    args.state_dir = state_dir
    handlers = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "demo": cmd_demo, "report": cmd_report, "service": cmd_service}
    return handlers[args.command](args)
