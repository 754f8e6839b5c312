"""The scheduler_extender role: runs katalyst-scheduler-extender (sandbox service stand-in) on the emulator, writes
the KubeSchedulerConfiguration, configures the sandbox scheduler with it, and the sandbox scheduler's extender
client (kube-scheduler's JSON and verbs) places a pod through it; idempotent; the systemd unit verifies."""

import threading

import yaml
from kubernetes import client

from sandbox.scheduler import ExtenderError, SandboxScheduler, load_extenders
from tests.integration.backends import install_crds
from tests.integration.ansible_runner import REPO, run_playbook
from tests.integration.role_testing import assert_hardened_unit, free_port, needs_systemd_analyze, role_play, stop_sandbox_service
from tests.integration import waiting
from tests.integration.test_extender_numa import CNR_ARGS, GPU, gpu_body, gpu_cnr_status
from tests.integration.test_scheduler_extender import make_cluster, make_node, pod_body

PLAY = role_play("scheduler_extender")
SERVICE_TASK = "katalyst.colocation.scheduler_extender : Run katalyst-scheduler-extender on the sandbox"


def wait_until(predicate, timeout=30.0, what="condition"):
    """Until ``predicate()``; an extender that does not answer yet is "not yet"."""
    waiting.wait_until(predicate, timeout=timeout, what=what, interval=0.2, ignore=(ExtenderError,))


def stop_service(tmp_path):
    stop_sandbox_service(tmp_path / "sandbox", "katalyst-scheduler-extender-localhost")


def test_role_runs_the_extender_that_the_sandbox_scheduler_calls(kubeapi, kube_client, tmp_path):
    # c-new: no CNR yet (the extender knows nothing about it: with error_policy fail_node only that node fails)
    core = make_cluster(kube_client, "c-new")

    port = free_port()
    (tmp_path / "sandbox").mkdir()
    extra = {"scheduler_extender_service_manager": "sandbox", "scheduler_extender_python_mode": "current",
             "scheduler_extender_port": port, "scheduler_extender_install_dir": str(tmp_path / "opt"),
             "scheduler_extender_config_dir": str(tmp_path / "etc"), "scheduler_extender_kubeconfig_src": kubeapi.kubeconfig,
             "katalyst_sandbox_dir": str(tmp_path / "sandbox")}
    env = {"PYTHONPATH": REPO}
    stop = threading.Event()
    scheduler = None
    try:
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], extra, env=env)
        assert rc == 0, out[-3000:]
        assert tasks[SERVICE_TASK]["changed"] is True
        assert oct((tmp_path / "etc" / "credentials" / "scheduler-extender.kubeconfig").stat().st_mode & 0o777) == "0o600"
        snippet = yaml.safe_load((tmp_path / "etc" / "kube-scheduler-extender.yaml").read_text())
        assert snippet["apiVersion"] == "kubescheduler.config.k8s.io/v1" and snippet["kind"] == "KubeSchedulerConfiguration"
        assert snippet["extenders"] == [{"urlPrefix": "http://127.0.0.1:%d" % port, "filterVerb": "filter", "prioritizeVerb": "prioritize",
                                         "weight": 1, "enableHTTPS": False, "nodeCacheCapable": True, "ignorable": True,
                                         "httpTimeout": "5s", "managedResources": []}]
        sandbox_config = yaml.safe_load((tmp_path / "sandbox" / "kube-scheduler-config.yaml").read_text())
        assert sandbox_config == snippet
        config = yaml.safe_load((tmp_path / "etc" / "scheduler-extender.yaml").read_text())
        assert config["plugins"] == ["NodeOvercommitment", "NUMA"] and config["error_policy"] == "fail_node"

        # kube-scheduler's view: the sandbox scheduler configured from the written file
        scheduler = SandboxScheduler(core, load_extenders(sandbox_config))
        nodes = [core.api_client.sanitize_for_serialization(core.read_node(n)) for n in ("a-static", "b-plain", "c-new")]
        probe = core.api_client.sanitize_for_serialization(core.create_namespaced_pod("default", pod_body("probe", "20")))
        # (16 - 8 held) * 2 = 16 cpus for pods that are not cpuset-bound on a-static: 20 does not fit there
        wait_until(lambda: [n["metadata"]["name"] for n in scheduler.extenders[0].filter(probe, nodes)[0]] == ["b-plain"],
                   what="the extender's caches")
        _passing, failed = scheduler.extenders[0].filter(probe, nodes)
        assert failed["a-static"] == "node overcommitment insufficient cpu" and "c-new" in failed
        core.delete_namespaced_pod("probe", "default")
        scheduler.nodes.start(stop)
        scheduler.pods.start(stop)
        core.create_namespaced_pod("default", pod_body("web", "20"))
        wait_until(lambda: scheduler.nodes.synced.is_set() and scheduler.pods.get("default/web") is not None, what="scheduler cache")
        assert scheduler.schedule_once() >= 1
        # without the extender the scheduler would pick a-static (first by name)
        assert core.read_namespaced_pod("web", "default").spec.node_name == "b-plain"

        rc, tasks, out = run_playbook(PLAY, tmp_path, [], extra, env=env)
        assert rc == 0, out[-3000:]
        changed = [name for name, result in tasks.items() if result.get("changed")]
        assert changed == [], changed
        rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check"], dict(extra, scheduler_extender_weight=5), env=env)
        assert rc == 0, out[-3000:]
        assert "weight: 1" in (tmp_path / "etc" / "kube-scheduler-extender.yaml").read_text()     # check mode writes nothing
    finally:
        stop.set()
        if scheduler is not None:
            scheduler.nodes.stop()
            scheduler.pods.stop()
        stop_service(tmp_path)


def test_role_passes_the_numa_aligned_resources_to_the_extender(kubeapi, kube_client, tmp_path):
    install_crds(kube_client, ["customnoderesources"])
    core, custom = client.CoreV1Api(kube_client), client.CustomObjectsApi(kube_client)
    for name, gpus in (("gpu", {1: 2}), ("cpu-only", {})):
        make_node(core, name, "32", {})
        custom.create_cluster_custom_object(*CNR_ARGS, {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource",
                                                        "metadata": {"name": name}})
        custom.patch_cluster_custom_object_status(*CNR_ARGS, name, {"status": gpu_cnr_status(gpus)})
    port = free_port()
    (tmp_path / "sandbox").mkdir()
    extra = {"scheduler_extender_service_manager": "sandbox", "scheduler_extender_python_mode": "current",
             "scheduler_extender_port": port, "scheduler_extender_install_dir": str(tmp_path / "opt"),
             "scheduler_extender_config_dir": str(tmp_path / "etc"), "scheduler_extender_kubeconfig_src": kubeapi.kubeconfig,
             "katalyst_sandbox_dir": str(tmp_path / "sandbox"), "scheduler_extender_plugins": ["NUMA"],
             "scheduler_extender_numa_aligned_resources": ["cpu", "memory", GPU]}
    try:
        rc, _tasks, out = run_playbook(PLAY, tmp_path, [], extra, env={"PYTHONPATH": REPO})
        assert rc == 0, out[-3000:]
        config = yaml.safe_load((tmp_path / "etc" / "scheduler-extender.yaml").read_text())
        assert config["numa_aligned_resources"] == ["cpu", "memory", GPU]
        # the running daemon uses it: a GPU pod is refused by the node whose NUMA zones report no GPU (with Katalyst's
        # default, cpu and memory, that node would pass: test_extender_numa.py)
        extender = load_extenders(yaml.safe_load((tmp_path / "sandbox" / "kube-scheduler-config.yaml").read_text()))[0]
        nodes = [core.api_client.sanitize_for_serialization(core.read_node(n)) for n in ("gpu", "cpu-only")]
        pod = core.api_client.sanitize_for_serialization(core.create_namespaced_pod("default", gpu_body("g", 1)))
        wait_until(lambda: [n["metadata"]["name"] for n in extender.filter(pod, nodes)[0]] == ["gpu"], what="the extender's caches")
        assert extender.filter(pod, nodes)[1] == {"cpu-only": "cannot align container main: no NUMA zone of the node reports nvidia.com/gpu"}
        # a name that is not a resource name is refused before anything changes
        rc, _tasks, out = run_playbook(PLAY, tmp_path, [], dict(extra, scheduler_extender_numa_aligned_resources=["cpu", "gpu card"]),
                                       env={"PYTHONPATH": REPO})
        assert rc != 0 and "scheduler_extender_numa_aligned_resources holds Kubernetes resource names" in out and "gpu card" in out
        assert yaml.safe_load((tmp_path / "etc" / "scheduler-extender.yaml").read_text())["numa_aligned_resources"] == ["cpu", "memory", GPU]
    finally:
        stop_service(tmp_path)


@needs_systemd_analyze
def test_unit_verifies_and_is_hardened(tmp_path):
    assert_hardened_unit("scheduler_extender", tmp_path, "katalyst-scheduler-extender.service", [
        "LoadCredential=kubeconfig:/etc/katalyst/credentials/scheduler-extender.kubeconfig",
        "LoadCredential=token:/etc/katalyst/credentials/scheduler-extender.token",
        "StateDirectory=katalyst-scheduler-extender", "StateDirectoryMode=0700", "LoadCredential=tls.key:/etc/katalyst/pki/webhook.key",
    ], scheduler_extender_tls_cert_path="/etc/katalyst/pki/webhook.crt", scheduler_extender_tls_key_path="/etc/katalyst/pki/webhook.key")
