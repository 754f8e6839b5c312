"""The tide role: installs katalyst-controller with the tide reconciler and runs it (sandbox service
stand-in) against the emulator; idempotent; the systemd unit verifies and is hardened."""

from kubernetes import client

from ansible_collections.katalyst.colocation.plugins.module_utils import tide
from tests.integration.backends import install_crds
from tests.integration.ansible_runner import REPO, run_playbook
from tests.integration.role_testing import assert_hardened_unit, needs_systemd_analyze, role_play, stop_sandbox_service
from tests.integration.waiting import wait_until

PLAY = role_play("tide")

SERVICE_TASK = "katalyst.colocation.tide : Run katalyst-controller on the sandbox"


def role_vars(tmp_path, kubeconfig):
    return {"tide_service_manager": "sandbox", "tide_python_mode": "current", "tide_metrics_port": 0,
            "tide_install_dir": str(tmp_path / "opt"), "tide_config_dir": str(tmp_path / "etc"),
            "tide_kubeconfig_src": kubeconfig, "katalyst_sandbox_dir": str(tmp_path / "sandbox"),
            "tide_period_seconds": 1, "tide_lease_namespace": "default"}


def stop_service(tmp_path):
    stop_sandbox_service(tmp_path / "sandbox", "katalyst-controller-localhost")


def test_role_runs_the_controller_which_converges_a_pool_and_is_idempotent(kubeapi, kube_client, tmp_path):
    install_crds(kube_client)
    core = client.CoreV1Api(kube_client)
    for index in range(4):
        core.create_node({"metadata": {"name": "n%d" % index, "labels": {"pool": "p"}},
                          "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}})
    client.CustomObjectsApi(kube_client).create_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, {
        "apiVersion": tide.API_VERSION, "kind": tide.KIND, "metadata": {"name": "p"},
        "spec": {"nodeConfigs": {"nodeSelector": {"pool": "p"}, "reserve": {"online": "30%", "offline": "30%"}}}})
    env = {"PYTHONPATH": REPO}                                          # `python -m sandbox` from the repository
    (tmp_path / "sandbox").mkdir()
    extra = role_vars(tmp_path, kubeapi.kubeconfig)
    try:
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], extra, env=env)
        assert rc == 0, out[-3000:]
        assert tasks[SERVICE_TASK]["changed"] is True
        config = (tmp_path / "etc" / "controller.yaml").read_text()
        assert "controllers: [\"tide\"]" in config and "period_seconds" in config
        assert oct((tmp_path / "etc" / "credentials" / "controller.kubeconfig").stat().st_mode & 0o777) == "0o600"

        def converged():
            pool = client.CustomObjectsApi(kube_client).get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, "p")
            return ((pool.get("status") or {}).get("reserveNodes") == {"onlineNodes": ["n1", "n0"], "offlineNodes": ["n2"]}
                    and pool["metadata"].get("finalizers") == [tide.FINALIZER])
        wait_until(converged, what="the controller to converge the pool")
        labels = core.read_node("n3").metadata.labels
        assert labels[tide.LABEL_TIDE] == "true" and labels[tide.LABEL_NODE_POOL] == "p"

        rc, tasks, out = run_playbook(PLAY, tmp_path, [], extra, env=env)
        assert rc == 0, out[-3000:]
        changed = [name for name, result in tasks.items() if result.get("changed")]
        assert changed == [], changed                                      # idempotent: nothing rewritten, no restart
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(extra, tide_log_level="debug"), env=env)
        assert rc == 0 and tasks[SERVICE_TASK]["changed"] is True, out[-3000:]   # config change restarts
    finally:
        stop_service(tmp_path)


@needs_systemd_analyze
def test_unit_verifies_and_is_hardened(tmp_path):
    assert_hardened_unit("tide", tmp_path, "katalyst-controller.service", [
        "DynamicUser=yes", "LoadCredential=kubeconfig:/etc/katalyst/credentials/controller.kubeconfig",
        # its own ServiceAccount token (the default credential), and a private place for the token it renews itself
        "LoadCredential=token:/etc/katalyst/credentials/controller.token", "StateDirectory=katalyst-controller", "StateDirectoryMode=0700",
        "ExecStart=/usr/bin/python3 -m katalyst_colocation.daemons.controller --config /etc/katalyst/controller.yaml"])
