"""The agent's eviction loop under real rootfs pressure (daemons/agent_eviction.py, issue 16).

A 32 MiB ext4 image is loop-mounted as the node's /var/lib/kubelet (inside a sysroot); `dd` fills the pods'
directories on it. With the free-space threshold at 20% and the reclaimed-pod priority at 1 MiB, the agent (in-process,
against both backends) evicts the reclaimed pod through the Eviction API first, with an Event on the pod and on the
node naming the threshold and the readings; the test, standing in for the kubelet, removes an evicted pod's directory,
and the pressure is gone. Filled again by the web pod, the web pod is the next candidate, but its PodDisruptionBudget
refuses: an `EvictionBlocked` Event, the refusal counted, the pod kept. system_cores and do-not-evict pods are never
evicted; in dry-run mode nothing is evicted and an `EvictionDryRun` Event says what would have been (and the node is not
touched). While the threshold is met the node has the `SystemRootfs` condition True and the
`node.katalyst.kubewharf.io/SystemRootfs:NoSchedule` taint (its other taints kept); the transition period after the
pressure is gone, the condition is False and the taint gone; the node is not written while nothing changes.
"""

import json
import os
import shutil
import subprocess

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import service
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent import DEFAULTS as AGENT_DEFAULTS, Agent
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.agent_eviction import rootfs_thresholds
from tests.integration.ansible_runner import REPO, run_playbook
from tests.integration.waiting import wait_until

NODE = "evict-node"
QOS = "katalyst.kubewharf.io/qos_level"
PODS = {  # name: (annotations, labels)
    "batch": ({QOS: "reclaimed_cores"}, {"app": "batch"}),
    "web": ({}, {"app": "web"}),
    "system": ({QOS: "system_cores"}, {"app": "system"}),
    "keep": ({"katalyst.kubewharf.io/do-not-evict": "true"}, {"app": "keep"}),
}
MIB = 1 << 20

pytestmark = pytest.mark.slow


def loop_mount_problem():
    """None when this process can loop-mount an ext4 image, else why not."""
    if os.geteuid() != 0:
        return "not root: no loop mounts"
    if not shutil.which("mkfs.ext4") or not os.path.exists("/dev/loop-control"):
        return "no mkfs.ext4 or no loop devices"
    return None


@pytest.fixture
def kubelet_fs(tmp_path):
    """``<sysroot>/var/lib/kubelet`` on a freshly made 32 MiB ext4 image, loop-mounted; returns the sysroot."""
    problem = loop_mount_problem()
    if problem:
        pytest.skip(problem)
    image, sysroot = tmp_path / "rootfs.img", tmp_path / "root"
    mountpoint = sysroot / "var" / "lib" / "kubelet"
    mountpoint.mkdir(parents=True)
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield sysroot
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(sysroot, uid, name, mib):
    """A real process writes ``mib`` MiB into the pod's emptyDir on the kubelet filesystem."""
    directory = sysroot / "var" / "lib" / "kubelet" / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / "scratch"
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dd", "if=/dev/zero", "of=%s" % (directory / name), "bs=1M", "count=%d" % mib, "conv=fsync", "status=none"], check=True)


def start_agent(kubeapi, sysroot, tmp_path, **settings):
    config = dict({"node_name": NODE, "kubeconfig": kubeapi.kubeconfig, "sysroot": str(sysroot), "qos_cgroups_enabled": False,
                   "oom_priority_enabled": False, "reclaimed_resources_enabled": False, "numa_binding_enabled": False,
                   "realtime_overcommit_enabled": False, "eviction_enabled": True, "eviction_period_seconds": 0.3,
                   "eviction_rootfs_minimum_free": "20%", "eviction_rootfs_reclaimed_pod_used_priority": "1Mi",
                   "eviction_max_per_period": 5, "eviction_rate_period_seconds": 60, "eviction_pod_cooldown_seconds": 1}, **settings)
    (tmp_path / "agent.yaml").write_text(json.dumps(config))
    agent = Agent(str(tmp_path / "agent.yaml")).build()
    for informer in (agent.pods, agent.node):
        informer.start(agent.daemon.stop_event)
    agent.daemon.start()
    return agent


def stop_agent(agent):
    agent.daemon.stop()
    for informer in (agent.pods, agent.node):
        informer.stop()


@pytest.fixture
def node_pods(kube_client):
    """The node, its four pods Running and Ready, and a budget that keeps the one web pod; returns {name: uid}."""
    core = client.CoreV1Api(kube_client)
    core.create_node({"metadata": {"name": NODE}})
    uids = {}
    for name, (annotations, labels) in PODS.items():
        pod = core.create_namespaced_pod("default", {"metadata": {"name": name, "annotations": annotations, "labels": labels},
                                                     "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}})
        core.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}})
        uids[name] = pod.metadata.uid
    client.PolicyV1Api(kube_client).create_namespaced_pod_disruption_budget("default", {"metadata": {"name": "web"}, "spec": {
        "minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}})
    return uids


def events(core, reason, kind=None, name=None):
    return [e for e in core.list_namespaced_event("default").items
            if e.reason == reason and (kind is None or e.involved_object.kind == kind) and (name is None or e.involved_object.name == name)]


def evicted(core, name):
    """Gone, or being deleted (a real API server waits for the kubelet this node does not have)."""
    try:
        return core.read_namespaced_pod(name, "default").metadata.deletion_timestamp is not None
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise


def evictions(agent, result):
    return agent.daemon.registry.get_sample_value("katalyst_agent_evictions_total",
                                                  {"plugin": "rootfs-pressure-eviction-plugin", "result": result}) or 0


def test_rootfs_pressure_evicts_reclaimed_first_and_respects_budgets(kubeapi, kube_client, kubelet_fs, node_pods, tmp_path):
    core = client.CoreV1Api(kube_client)
    sysroot = kubelet_fs
    for name, mib in (("batch", 8), ("web", 9), ("system", 3), ("keep", 3)):
        fill(sysroot, node_pods[name], name, mib)
    agent = start_agent(kubeapi, sysroot, tmp_path)
    try:
        # the reclaimed pod goes first though the web pod uses more
        wait_until(lambda: evicted(core, "batch"), timeout=60, what="the reclaimed pod evicted")
        wait_until(lambda: events(core, "Evicted", "Pod", "batch") and events(core, "Evicted", "Node", NODE), what="Evicted Events")
        pod_events = events(core, "Evicted", "Pod", "batch")
        assert "available.rootfs.system<20%" in pod_events[0].message and "pod used=" in pod_events[0].message, pod_events[0].message
        assert evictions(agent, "evicted") == 1
        # the kubelet removes the evicted pod's directory: the pressure is gone
        shutil.rmtree(sysroot / "var" / "lib" / "kubelet" / "pods" / node_pods["batch"])
        wait_until(lambda: agent.daemon.registry.get_sample_value(
            "katalyst_agent_eviction_threshold_met", {"plugin": "rootfs-pressure-eviction-plugin", "threshold": "free"}) == 0,
            what="the threshold no longer met")

        # filled again by the web pod: it is the next candidate, and its budget refuses
        fill(sysroot, node_pods["web"], "more", 9)
        wait_until(lambda: events(core, "EvictionBlocked", "Pod", "web"), timeout=60, what="an EvictionBlocked Event on the web pod")
        assert evictions(agent, "refused_by_budget") >= 1
        assert not evicted(core, "web")
        for name in ("system", "keep"):
            assert not evicted(core, name), "%s was evicted" % name
        healthy, loops = agent.daemon.health()
        assert loops["eviction"]["failures"] >= 1 and "eviction" in (loops["eviction"]["last_error"] or ""), loops["eviction"]
    finally:
        stop_agent(agent)


def test_dry_run_only_reports(kubeapi, kube_client, kubelet_fs, node_pods, tmp_path):
    core = client.CoreV1Api(kube_client)
    fill(kubelet_fs, node_pods["batch"], "batch", 12)
    fill(kubelet_fs, node_pods["web"], "web", 9)
    agent = start_agent(kubeapi, kubelet_fs, tmp_path, eviction_dry_run=True)
    try:
        wait_until(lambda: events(core, "EvictionDryRun", "Pod", "batch"), timeout=60, what="an EvictionDryRun Event on the reclaimed pod")
        assert "would evict (dry run)" in events(core, "EvictionDryRun", "Pod", "batch")[0].message
        assert evictions(agent, "dry_run") >= 1 and evictions(agent, "evicted") == 0
        assert not any(evicted(core, name) for name in PODS)
        # a dry run does not touch the node: no condition, no taint
        assert rootfs_condition(core) is None and not taint_keys(core)
    finally:
        stop_agent(agent)


ROOTFS_TAINT = "node.katalyst.kubewharf.io/SystemRootfs"
OTHER_TAINT = {"key": "example.com/dedicated", "value": "batch", "effect": "NoSchedule"}


def rootfs_condition(core):
    status = core.read_node(NODE).status
    return next((c for c in (status.conditions if status else None) or [] if c.type == "SystemRootfs"), None)


def taint_keys(core):
    spec = core.read_node(NODE).spec
    return [t.key for t in (spec.taints if spec else None) or []]


def eviction_passes(agent):
    return sum(agent.daemon.registry.get_sample_value("katalyst_loop_runs_total", {"daemon": "katalyst-agent", "loop": "eviction",
                                                                                   "outcome": outcome}) or 0
               for outcome in ("success", "error"))


def assert_no_node_write_for_passes(core, agent, passes=5):
    """Several eviction passes while nothing changes leave the node's resourceVersion as it was."""
    version, start = core.read_node(NODE).metadata.resource_version, eviction_passes(agent)
    wait_until(lambda: eviction_passes(agent) >= start + passes, timeout=60, what="%d more eviction passes" % passes)
    assert core.read_node(NODE).metadata.resource_version == version, "the node was written while nothing changed"


def test_the_node_condition_and_taint_follow_the_pressure(kubeapi, kube_client, kubelet_fs, node_pods, tmp_path):
    core = client.CoreV1Api(kube_client)
    core.patch_node(NODE, {"spec": {"taints": [OTHER_TAINT]}})
    # only pods that are never evicted fill the disk, the others are under the pod minimum: the pressure stays, and no
    # pod goes, until the test removes the files
    for name, mib in (("system", 12), ("keep", 10)):
        fill(kubelet_fs, node_pods[name], name, mib)
    agent = start_agent(kubeapi, kubelet_fs, tmp_path, eviction_condition_transition_seconds=1, eviction_rootfs_pod_minimum_used="1Mi")
    try:
        wait_until(lambda: (rootfs_condition(core) or client.V1NodeCondition(type="", status="")).status == "True"
                   and ROOTFS_TAINT in taint_keys(core), timeout=60, what="the SystemRootfs condition and taint")
        condition = rootfs_condition(core)
        assert condition.reason == "RootfsPressure" and "available.rootfs.system<20%" in condition.message, condition
        assert condition.last_transition_time and condition.last_heartbeat_time, condition
        assert taint_keys(core) == [OTHER_TAINT["key"], ROOTFS_TAINT]
        assert [t.effect for t in core.read_node(NODE).spec.taints] == ["NoSchedule", "NoSchedule"]
        wait_until(lambda: events(core, "RootfsPressure", "Node", NODE), what="a RootfsPressure Event on the node")
        event = events(core, "RootfsPressure", "Node", NODE)[0]
        assert event.type == "Warning" and "available.rootfs.system<20%" in event.message, event
        assert_no_node_write_for_passes(core, agent)
        assert evictions(agent, "evicted") == 0

        # the pressure goes; after the transition period the condition turns False (kept) and the taint goes
        for name in ("system", "keep"):
            shutil.rmtree(kubelet_fs / "var" / "lib" / "kubelet" / "pods" / node_pods[name])
        wait_until(lambda: rootfs_condition(core).status == "False" and ROOTFS_TAINT not in taint_keys(core),
                   timeout=60, what="the SystemRootfs condition False and its taint gone")
        assert taint_keys(core) == [OTHER_TAINT["key"]] and core.read_node(NODE).spec.taints[0].value == "batch"
        assert rootfs_condition(core).reason == "NoRootfsPressure"
        wait_until(lambda: events(core, "NoRootfsPressure", "Node", NODE), what="a NoRootfsPressure Event on the node")
        assert events(core, "NoRootfsPressure", "Node", NODE)[0].type == "Normal"
        assert_no_node_write_for_passes(core, agent)
        healthy, loops = agent.daemon.health()
        assert loops["eviction"]["failures"] == 0, loops["eviction"]
    finally:
        stop_agent(agent)


def reload_agent(agent, tmp_path, **changes):
    """Rewrite the agent's configuration and reload it, as SIGHUP does."""
    config = json.loads((tmp_path / "agent.yaml").read_text())
    config.update(changes)
    (tmp_path / "agent.yaml").write_text(json.dumps(config))
    agent.reload()


def test_switching_eviction_to_dry_run_or_off_lifts_its_condition_and_taint(kubeapi, kube_client, kubelet_fs, node_pods, tmp_path):
    """A reload to dry-run mode, or with eviction switched off, clears the condition and taint a live pass set at once
    (not after the 5-minute transition period, and not never: nothing else would lift them)."""
    core = client.CoreV1Api(kube_client)
    for name, mib in (("system", 12), ("keep", 10)):       # never-evicted pods keep the pressure up
        fill(kubelet_fs, node_pods[name], name, mib)
    agent = start_agent(kubeapi, kubelet_fs, tmp_path, eviction_rootfs_pod_minimum_used="1Mi")

    def tainted():
        return ROOTFS_TAINT in taint_keys(core) and rootfs_condition(core).status == "True"

    def lifted():
        return ROOTFS_TAINT not in taint_keys(core) and rootfs_condition(core).status == "False"
    try:
        for switch in ({"eviction_dry_run": True}, {"eviction_enabled": False}):
            wait_until(tainted, timeout=60, what="the SystemRootfs condition and taint")
            reload_agent(agent, tmp_path, **switch)
            wait_until(lifted, timeout=60, what="the condition and taint lifted after %s" % switch)
            assert "switched off" in rootfs_condition(core).message or "dry-run" in rootfs_condition(core).message
            assert_no_node_write_for_passes(core, agent)
            reload_agent(agent, tmp_path, eviction_dry_run=False, eviction_enabled=True)
        wait_until(tainted, timeout=60, what="the SystemRootfs condition and taint back in a live run")
        assert evictions(agent, "evicted") == 0
    finally:
        stop_agent(agent)


def test_a_bad_threshold_stops_the_agent_naming_the_option(tmp_path):
    (tmp_path / "agent.yaml").write_text(json.dumps({"node_name": NODE, "eviction_enabled": True, "eviction_rootfs_minimum_free": "ten%"}))
    with pytest.raises(ValueError, match="eviction_rootfs_minimum_free"):
        Agent(str(tmp_path / "agent.yaml")).build()


def plan_playbook(preview, refused):
    """A play with two eviction_plan tasks on the test's node: ``preview`` (its options, `evict: true`) and ``refused``
    (options that must fail, ignored)."""
    task = """
    - name: %s
      katalyst.colocation.eviction_plan:
        kubeconfig: "{{ kc }}"
        node_name: evict-node
        sysroot: "{{ sysroot }}"
%s"""

    def options(values):
        return "".join("        %s: %s\n" % item for item in values.items())
    return ("- hosts: localhost\n  gather_facts: false\n  tasks:" + task % ("preview", options(dict(preview, evict="true")))
            + task % ("refused", options(refused)) + "      ignore_errors: true\n")


PREVIEW = plan_playbook({"minimum_free": "20%", "reclaimed_pod_used_priority": "1Mi"}, {"minimum_free": "twenty"})


def test_the_eviction_plan_module_previews_with_check_and_diff_then_evicts(kubeapi, kube_client, kubelet_fs, node_pods, tmp_path):
    core = client.CoreV1Api(kube_client)
    fill(kubelet_fs, node_pods["batch"], "batch", 8)
    fill(kubelet_fs, node_pods["web"], "web", 12)
    variables = {"kc": kubeapi.kubeconfig, "sysroot": str(kubelet_fs)}
    rc, tasks, out = run_playbook(PREVIEW, tmp_path, ["--check", "--diff"], variables)
    assert rc == 0, out
    preview = tasks["preview"]
    assert preview["changed"] and preview["threshold_met"] == {"free": True, "inodes": False}, preview
    assert [e["pod"] for e in preview["evictions"]] == ["default/batch"] and preview["evicted"] == []
    assert "available.rootfs.system<20%" in preview["evictions"][0]["threshold"]
    assert "default/batch" in preview["diff"]["before"] and "default/batch" not in preview["diff"]["after"], preview["diff"]
    assert not evicted(core, "batch")
    refused = tasks["refused"]
    assert refused["failed"] and refused["msg"].startswith("minimum_free: "), refused
    rc, tasks, out = run_playbook(PREVIEW, tmp_path, [], variables)
    assert rc == 0 and tasks["preview"]["evicted"] == ["default/batch"], out
    assert evicted(core, "batch") and not evicted(core, "web")


RENDER = """
- hosts: localhost
  gather_facts: false
  vars_files: ["{{ repo }}/roles/agent/defaults/main.yml", "{{ repo }}/roles/agent/vars/main.yml"]
  tasks:
    - name: render
      ansible.builtin.template:
        src: "{{ repo }}/roles/agent/templates/agent.yaml.j2"
        dest: "{{ dest }}"
        mode: "0600"
"""


def test_the_agent_role_renders_the_eviction_settings_the_agent_reads(tmp_path):
    dest = tmp_path / "agent.yaml"
    rc, _tasks, out = run_playbook(RENDER, tmp_path, [], {
        "repo": REPO, "dest": str(dest), "agent_credential": "kubeconfig", "agent_eviction_enabled": True, "agent_eviction_top_n": 3,
        "agent_eviction_system_memory_enabled": True,
        "agent_eviction_memory": {"system_free_memory_threshold_minimum": "1Gi", "numa_free_below_watermark_times_threshold": 20},
        "agent_eviction_rootfs": {"minimum_free": "10%", "reclaimed_pod_used_priority": "1Gi", "grace_period_seconds": 30,
                                  "pod_dirs": ["/data/pods/{uid}"]}})
    assert rc == 0, out
    config = service.load_config(str(dest), AGENT_DEFAULTS)
    assert config["eviction_enabled"] is True and config["eviction_top_n"] == 3 and config["eviction_rootfs_pod_dirs"] == ["/data/pods/{uid}"]
    thresholds = rootfs_thresholds(config)
    assert thresholds.minimum_free.percentage == pytest.approx(0.1) and thresholds.reclaimed_pod_used_priority.quantity == 1 << 30
    assert thresholds.grace_period == 30 and thresholds.pod_minimum_used is None
    # and the memory provision loop's settings (defaults)
    assert (config["memory_drop_cache_cooldown_seconds"], config["memory_advisor_min_critical_watermark"], config["memory_resource_plugin_reserved_gb"]) \
        == (300, "4Gi", 0)
    assert config["eviction_system_memory_enabled"] is True
    assert config["eviction_numa_memory_enabled"] is False and config["eviction_reclaimed_resources_enabled"] is False
    assert config["eviction_system_free_memory_threshold_minimum"] == "1Gi" and config["eviction_numa_free_below_watermark_times_threshold"] == 20
    assert config["eviction_numa_free_below_watermark_times_reclaimed_threshold"] == 6 and config["eviction_system_memory_kswapd_enabled"] is False


BAD_MEMORY_KEY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: katalyst.colocation.agent
      vars:
        agent_node_name: n1
        agent_credential: none
        agent_eviction_memory: {system_free_memory_threshold_minimum: 1Gi, top_n: 3}
"""


def test_an_unknown_memory_eviction_key_fails_the_role_before_anything_is_written(tmp_path):
    rc, _tasks, out = run_playbook(BAD_MEMORY_KEY, tmp_path, [], {})
    assert rc != 0 and "agent_eviction_memory takes the keys numa_free_below_watermark_times_threshold" in out, out
    assert "top_n" in out and "Bundle the engine" not in out, out
