"""The demo path end to end: `python -m sandbox up` in a temporary state directory, then `python -m sandbox demo`
(playbooks/site.yml on inventories/sandbox: CRDs, katalyst-controller with tide + overcommit + cnr,
katalyst-webhook, katalyst-scheduler-extender, the node roles and agents; then the sample workload,
playbooks/examples/sample_workload.yml). Then, in the running sandbox: the sample workload's pods run on the sandbox
kubelets where their nodeSelectors put them, the agent bound the NUMA pair to two NUMA nodes, the overcommit pool's
node has its allocatable amplified by the webhook exactly once, the TideNodePool gave its nodes their roles, and the
demo's summary shows each node with its tide role, allocatable and pods; a pod is bound by the sandbox scheduler
configured with the role's extender. Before those checks the sandbox goes down and up again and the demo runs once
more: it restarts the daemons and changes nothing else (the sample workload reports changed=0).
The first run (with --diff) also shows the RBAC objects, and leaves each daemon its own ServiceAccount token (the
agents' bound to their nodes), 0600 under 0700 directories, with no token in the output and no admin credential on
the nodes."""

import os
import re
import stat
import subprocess
import sys
import time

import yaml
from kubernetes import client, config

from ansible_collections.katalyst.colocation.plugins.module_utils import credentials, overcommit, qos, tide
from ansible_collections.katalyst.colocation.plugins.module_utils.quantity import parse_quantity
from tests.integration.ansible_runner import REPO
from tests.integration.role_testing import free_port
from tests.integration.waiting import wait_until

RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
PREFIX = "katalyst.kubewharf.io/"
TASK_HEADER = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.+?)\] \**$")
CHANGED = re.compile(r"^changed: \[([^\]]+)\]")
# the tasks that start a daemon under the sandbox's service stand-in: the only changes a demo after down/up may report
DAEMON_START = re.compile(r"^katalyst\.colocation\.\w+ : Run katalyst-[a-z-]+ on the sandbox( node)?$")


def sandbox(state, *args, timeout=900):       # a demo takes 40-60 s on a quiet machine, minutes on a loaded one
    environ = dict(os.environ, PYTHONPATH="%s/.build/collections:%s" % (REPO, REPO),
                   ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO), ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
                   PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([sys.executable, "-m", "sandbox", args[0], "--state-dir", str(state)] + list(args[1:]), cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=timeout, check=False)


SAMPLE = "katalyst-demo"           # the sample workload's namespace, NodeOvercommitConfig and TideNodePool
# where the sample workload's nodeSelectors put its pods: the colocation node (the overcommit pool's), the tidal pool's
# offline reserve and its online tide node
SAMPLE_PODS = {"web-1": "sandbox-node-1", "db-0": "sandbox-node-1", "db-1": "sandbox-node-1", "batch-1": "sandbox-node-1",
               "batch-2": "sandbox-node-2", "web-2": "sandbox-node-3"}
SAMPLE_SUMMARY = {"sandbox-node-1": "tide: not in a pool   overcommit pool katalyst-demo: cpu x1.5, memory x1.2",
                  "sandbox-node-2": "tide: offline (reserve), pool katalyst-demo   no overcommit pool",
                  "sandbox-node-3": "tide: online (tide node), pool katalyst-demo   no overcommit pool"}
WORKLOAD_RECAP = re.compile(r"^\s+(\S+)\s+ok=\d+\s+changed=(\d+)\s+failed=\d+\s+playbooks/examples/sample_workload\.yml$", re.MULTILINE)


def demo_recap(demo, extra_hosts=()):
    """{host: changed} from a successful demo's PLAY RECAPs (site.yml's and the sample workload's, summed), for the
    sandbox's hosts and ``extra_hosts``."""
    assert demo.returncode == 0, demo.stdout[-5000:] + demo.stderr[-2000:]
    recap = {}
    for host, _ok, changed, _unreachable, failed in RECAP.findall(demo.stdout):
        assert int(failed) == 0, demo.stdout[-3000:]
        recap[host] = recap.get(host, 0) + int(changed)
    assert set(recap) == {"sandbox-control", "sandbox-node-1", "sandbox-node-2", "sandbox-node-3", *extra_hosts}, demo.stdout[-3000:]
    assert WORKLOAD_RECAP.findall(demo.stdout), demo.stdout[-3000:]      # the sample workload ran after site.yml
    return recap


def workload_changes(demo):
    """The sample workload playbook's changes, from the demo summary."""
    return sum(int(changed) for _host, changed in WORKLOAD_RECAP.findall(demo.stdout))


def changed_tasks(output):
    """[(task, host)] for every `changed:` line of ansible-playbook's default output (loop items included)."""
    changes, task = [], None
    for line in output.splitlines():
        header = TASK_HEADER.match(line)
        if header:
            task = header.group(1)
        changed = CHANGED.match(line)
        if changed:
            changes.append((task, changed.group(1)))
    return changes


def test_site_on_the_sandbox_shows_colocation(sandbox_state):
    started = time.monotonic()
    up = sandbox(sandbox_state, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    timings = {"up": time.monotonic() - started}
    # the demo's own ports are fixed; this sandbox may run beside it
    demo_options = ["-e", "katalyst_sandbox_dir=%s" % sandbox_state, "-e", "webhook_port=%d" % free_port(),
                    "-e", "scheduler_extender_port=%d" % free_port()]
    first = sandbox(sandbox_state, "demo", *(demo_options + ["--diff"]))
    recap = demo_recap(first)
    timings["site.yml + sample workload"] = time.monotonic() - started - timings["up"]
    assert recap["sandbox-control"] > 0 and workload_changes(first) > 0
    check_summary(first.stdout)
    # --diff showed the RBAC objects it created
    assert "katalyst-colocation:katalyst-controller" in first.stdout   # (the emulator serves no ValidatingAdmissionPolicy)
    check_credentials(sandbox_state, first.stdout + first.stderr)

    # down and up again: the emulator comes back on its port, so the demo finds every file as it wrote it and only
    # starts the daemons `down` stopped (the checks below then run against the restarted sandbox)
    kubeconfig = (sandbox_state / "kubeconfig").read_text()
    restarted = time.monotonic()
    down = sandbox(sandbox_state, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    up = sandbox(sandbox_state, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert ", the recorded one\n" in up.stdout, up.stdout
    assert (sandbox_state / "kubeconfig").read_text() == kubeconfig
    demo = sandbox(sandbox_state, "demo", *demo_options)
    recap = demo_recap(demo)
    changes = changed_tasks(demo.stdout)
    assert changes and all(DAEMON_START.match(task) for task, _host in changes), changes
    assert recap == {host: sum(1 for _task, changed_host in changes if changed_host == host) for host in recap}, (recap, changes)
    assert workload_changes(demo) == 0, demo.stdout[-3000:]
    check_summary(demo.stdout)
    timings["down, up, site.yml + sample workload"] = time.monotonic() - restarted

    api = config.new_client_from_config(config_file=str(sandbox_state / "kubeconfig"))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    hooks = client.AdmissionregistrationV1Api(api).list_mutating_webhook_configuration().items
    assert [hook.webhooks[0].failure_policy for hook in hooks] == ["Ignore"]

    check_sample_workload(core, custom, lambda check, what: wait_until(check, timeout=180, what=what))

    # the sandbox scheduler (configured with the role's extender) binds a pod
    core.create_namespaced_pod("default", {"metadata": {"name": "web"}, "spec": {
        "containers": [{"name": "app", "image": "app", "resources": {"requests": {"cpu": "1"}}}],
        "tolerations": [{"operator": "Exists"}]}})
    wait_until(lambda: core.read_namespaced_pod("web", "default").spec.node_name is not None, what="the pod to be bound")
    scheduler_config = (sandbox_state / "kube-scheduler-config.yaml").read_text()
    assert "urlPrefix" in scheduler_config
    timings["total"] = time.monotonic() - started
    print("end-to-end timings: " + ", ".join("%s %.1f s" % item for item in timings.items()))


def check_credentials(state, output):
    """Each daemon talks as its own ServiceAccount (never the admin kubeconfig), each node's agent with a token bound to
    that node; kubeconfigs and tokens are 0600 under 0700 directories; no token shows in the playbook's output, and the
    admin credential is in no file under the nodes."""
    admin_token = credentials.kubeconfig_user(yaml.safe_load((state / "kubeconfig").read_text()))[1]["token"]
    daemons = {"controller": "katalyst-controller", "scheduler-extender": "katalyst-scheduler-extender"}
    control = state / "control" / "sandbox-control" / "etc" / "katalyst" / "credentials"
    files = {daemons[name]: control / ("%s.token" % name) for name in daemons}
    files.update({"katalyst-agent@" + node: state / "nodes" / node / "sysroot" / "etc" / "katalyst" / "credentials" / "agent.token"
                  for node in ("sandbox-node-1", "sandbox-node-2", "sandbox-node-3")})
    for who, path in files.items():
        token = path.read_text().strip()
        claims = credentials.jwt_claims(token)
        account, _at, node = who.partition("@")
        assert credentials.token_identity(claims)[:2] == ("katalyst-system", account), (who, claims)
        assert (credentials.token_node(claims) or (None,))[0] == (node or None), (who, claims)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path
        kubeconfig = path.with_suffix(".kubeconfig")
        assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600, kubeconfig
        assert credentials.kubeconfig_user(yaml.safe_load(kubeconfig.read_text()))[1] == {"tokenFile": str(path)}, kubeconfig
        assert token not in output and token[-32:] not in output, "the token of %s is in the output" % who
    installed = [path for node in (state / "nodes").iterdir() for top in ("etc/katalyst", "var/lib/katalyst")
                 for path in (node / "sysroot" / top).rglob("*") if path.is_file()]
    kubeconfigs = [path for path in installed if path.suffix == ".kubeconfig"]
    assert [path.name for path in kubeconfigs] == ["agent.kubeconfig"] * 3, installed
    for path in installed:
        # (the emulator's admin token is a short word: look for it as a kubeconfig's token)
        text = path.read_text()
        assert '"token": "%s"' % admin_token not in text and "token: %s" % admin_token not in text, "the admin credential is in %s" % path


def check_summary(output):
    """The demo's summary: each node with its tide role and overcommit pool, the amplified allocatable of the pool's
    node, and the sample workload's pods in kill order under the node they run on."""
    assert "sandbox: the sample workload settled in" in output, output[-3000:]
    report = output[output.index("=== colocation on each node"):]
    tables = {}
    for line in report.splitlines()[1:]:
        if not line.strip() or line.startswith("oom_score_adj:"):
            break
        if line.startswith("sandbox-node-"):
            name, header = line.split(None, 1)
            tables[name] = {"header": header.strip(), "lines": []}
        elif tables:
            tables[name]["lines"].append(line.split())
    assert {name: table["header"] for name, table in tables.items()} == SAMPLE_SUMMARY, report
    allocatable = {name: " ".join(table["lines"][0]) for name, table in tables.items()}
    assert allocatable["sandbox-node-1"].startswith("allocatable cpu 31.5 -> 47.25, memory 63.0Gi -> 75.6Gi"), report
    assert allocatable["sandbox-node-2"] == "allocatable cpu 31.5, memory 63.0Gi", report
    rows = {name: [line for line in table["lines"] if line[0].isdigit()] for name, table in tables.items()}
    assert {pod: name for name, lines in rows.items() for line in lines for pod in line[1:2]} == SAMPLE_PODS, report
    # kill order on the colocation node: the reclaimed pod first, the NUMA-bound pair last, each on its own NUMA node
    node_1 = rows["sandbox-node-1"]
    assert [line[1] for line in node_1[:2]] == ["batch-1", "web-1"] and {line[1] for line in node_1[2:]} == {"db-0", "db-1"}, report
    assert [int(line[0]) for line in node_1] == [1, 2, 3, 4] and all(line[-1] == "planned" for line in node_1), report
    assert int(node_1[0][5]) > int(node_1[1][5]) > int(node_1[2][5]), report
    numas = [line[4] for line in node_1[2:]]
    assert all(numa.isdigit() for numa in numas) and len(set(numas)) == 2, report


def check_sample_workload(core, custom, wait, extra_pods=None):
    """What the sample workload shows, through the API: its pods (and ``extra_pods``: {name: node}) run where their
    nodeSelectors put them, the NUMA pair is bound to two NUMA nodes, the overcommit pool's node is amplified exactly
    once (x1.5, not x2.25) while the others keep their allocatable, and the TideNodePool gave its two nodes their roles.
    `wait(check, what)` waits on a condition."""
    wanted = dict(SAMPLE_PODS, **(extra_pods or {}))

    def running():
        pods = {pod.metadata.name: pod for pod in core.list_namespaced_pod(SAMPLE).items}
        placed = {name: (pod.status.phase, pod.spec.node_name) for name, pod in pods.items()}
        return placed == {name: ("Running", node_name) for name, node_name in wanted.items()}
    wait(running, "the sample workload's pods to run on their nodes")

    def numa_bound():
        results = [(core.read_namespaced_pod(name, SAMPLE).metadata.annotations or {}).get(qos.NUMA_BIND_RESULT_KEY)
                   for name in ("db-0", "db-1")]
        return all(results) and len(set(results)) == 2
    wait(numa_bound, "the agent to bind db-0 and db-1 to two NUMA nodes")

    def amplified():
        node = core.read_node("sandbox-node-1")
        annotations = node.metadata.annotations or {}
        original = annotations.get(PREFIX + "original_allocatable_cpu")
        return (annotations.get(PREFIX + "cpu_overcommit_ratio") == "1.5" and original is not None
                and node.status.allocatable["cpu"] == annotations.get(PREFIX + "overcommit_allocatable_cpu")
                and parse_quantity(node.status.allocatable["cpu"]).milli_value() == parse_quantity(original).milli_value() * 3 // 2)
    wait(amplified, "sandbox-node-1's heartbeat to come back amplified x1.5")
    node_1 = core.read_node("sandbox-node-1")
    assert node_1.metadata.labels[overcommit.POOL_LABEL] == SAMPLE
    assert node_1.metadata.annotations[PREFIX + "original_allocatable_cpu"] == "31500m"          # the sandbox kubelet's
    assert core.read_node("sandbox-node-2").status.allocatable["cpu"] == "31500m"                 # not in the pool

    def tided():
        pool = custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, SAMPLE)
        return "reserveNodes" in pool.get("status", {})
    wait(tided, "the tide controller to record the pool's nodes in its status")
    pool = custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, SAMPLE)
    assert pool["status"]["reserveNodes"].get("offlineNodes") == ["sandbox-node-2"], pool["status"]
    assert pool["status"]["tideNodes"]["nodes"] == ["sandbox-node-3"], pool["status"]
    assert pool["metadata"]["finalizers"] == [tide.FINALIZER]
    labels = core.read_node("sandbox-node-3").metadata.labels
    assert (labels[tide.LABEL_NODE_POOL], labels[tide.LABEL_TIDE], labels[tide.LABEL_NODE_TYPE]) == (SAMPLE, "true", "online")
    assert tide.LABEL_NODE_POOL not in core.read_node("sandbox-node-1").metadata.labels


def test_check_diff_on_a_fresh_sandbox_previews_rbac_and_credentials_and_changes_nothing(sandbox_state):
    """`site.yml --check --diff` before anything is installed: it runs through (a ServiceAccount the rbac task would
    create is reported, not an error), shows the RBAC objects and the credentials it would issue, and creates nothing
    in the cluster or on the hosts."""
    up = sandbox(sandbox_state, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    environ = dict(os.environ, ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO),
                   ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", os.path.join(REPO, "inventories", "sandbox", "hosts.yml"),
               os.path.join(REPO, "playbooks", "site.yml"), "--check", "--diff", "-e", "katalyst_sandbox_dir=%s" % sandbox_state,
               "-e", "katalyst_node_serial=100%"]
    preview = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=900, check=False)
    output = preview.stdout + preview.stderr
    assert preview.returncode == 0, output[-5000:]
    for daemon in ("katalyst-agent", "katalyst-controller", "katalyst-webhook", "katalyst-scheduler-extender"):
        assert '"api:ServiceAccount/katalyst-system/%s"' % daemon in output, daemon
        # (the webhook makes no API call: no role)
        assert ('"api:ClusterRole/katalyst-colocation:%s"' % daemon in output) == (daemon != "katalyst-webhook"), daemon
    assert "ServiceAccount katalyst-system/katalyst-controller does not exist yet" in output
    assert output.count("TASK [katalyst.colocation.agent : Issue the agent's credential") == 1 and "bound to its node" in output
    api = config.new_client_from_config(config_file=str(sandbox_state / "kubeconfig"))
    assert "katalyst-system" not in [item.metadata.name for item in client.CoreV1Api(api).list_namespace().items]
    assert client.RbacAuthorizationV1Api(api).list_cluster_role(label_selector="app.kubernetes.io/managed-by=katalyst.colocation").items == []
    assert not (sandbox_state / "control").exists()
    assert not list((sandbox_state / "nodes").glob("*/sysroot/etc/katalyst"))
