"""Every AWX job template of awx/job_templates.yml, launched with ansible-runner the way AWX launches its jobs (survey
answers as extra vars, the template's inventory inventories/sandbox, --check/--diff from the job type and diff mode,
the built-in Kubernetes credential as K8S_AUTH_*: no kubeconfig file), against one sandbox brought up for the module.
No AWX server runs here: playbooks/awx_configure.yml itself is checked in tests/unit/test_awx_configure.py.

To keep the file within its CI budget (~2-3 min on a quiet machine, most of it the site run) the site template runs
once on all hosts; the preview template and the node roll-out then run on a converged sandbox with a limit (the
control host; two nodes), as AWX's "prompt on launch" limit lets an operator do."""

import hashlib
import time

import pytest
from kubernetes import client, config

from ansible_collections.katalyst.colocation.plugins.module_utils import overcommit, tide
from tests.integration import awx_launch
from tests.integration.role_testing import free_port
from tests.integration.test_site_demo import sandbox
from tests.integration.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("awx-templates")]
NODES = ("sandbox-node-1", "sandbox-node-2", "sandbox-node-3")
OVERCOMMIT_GROUP, OVERCOMMIT_PLURAL = overcommit.NOC_API_VERSION.split("/", maxsplit=1)[0], "nodeovercommitconfigs"


class AwxSite:
    """The sandbox and how AWX would launch the templates on it."""

    def __init__(self, state, jobs_dir):
        self.state, self.jobs_dir, self.launched = state, jobs_dir, 0
        self.templates = awx_launch.load_templates()
        port = (state / "apiserver.port").read_text().strip()
        self.credential = {"host": "http://127.0.0.1:%s" % port, "bearer_token": "sandbox", "verify_ssl": False}
        # where the sandbox lives and the daemons' ports (the demo's fixed ones may be taken by another sandbox)
        self.inventory_vars = {"katalyst_sandbox_dir": str(state), "webhook_port": free_port(), "scheduler_extender_port": free_port()}
        self.api = config.new_client_from_config(config_file=str(state / "kubeconfig"))
        self.timings = {}

    def launch(self, name, answers=None, limit=None):
        self.launched += 1
        private_data_dir = self.jobs_dir / ("job-%d" % self.launched)
        private_data_dir.mkdir()
        started = time.monotonic()
        runner = awx_launch.launch(self.templates, name, private_data_dir, self.credential, answers=answers, limit=limit,
                                   inventory_vars=self.inventory_vars)
        self.timings["%d %s" % (self.launched, name)] = time.monotonic() - started
        return runner


@pytest.fixture(scope="module")
def awx_site(tmp_path_factory):
    state = tmp_path_factory.mktemp("awx") / "sandbox"
    try:
        up = sandbox(state, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        site = AwxSite(state, tmp_path_factory.mktemp("awx-jobs"))
        yield site
        print("awx job timings: " + ", ".join("%s %.1f s" % item for item in site.timings.items()))
    finally:
        sandbox(state, "down", timeout=120)


def succeeded(runner):
    assert (runner.status, runner.rc) == ("successful", 0), runner.stdout.read()[-5000:]
    assert not runner.stats["failures"] and not runner.stats["dark"], runner.stats
    return runner.stats


def changed_tasks(runner):
    return sorted({event["event_data"]["task"] for event in runner.events
                   if event["event"] == "runner_on_ok" and event["event_data"].get("res", {}).get("changed")})


def files_digest(root):
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()}


def test_site_preview_and_node_rollout_templates(awx_site):
    # site, with the survey's defaults: the whole cluster converges through the credential's K8S_AUTH_* alone
    stats = succeeded(awx_site.launch("katalyst | site"))
    assert set(stats["processed"]) == {"sandbox-control", *NODES}
    assert all(stats["changed"].get(host, 0) > 0 for host in stats["processed"]), stats["changed"]
    core = client.CoreV1Api(awx_site.api)
    assert "katalyst-system" in [item.metadata.name for item in core.list_namespace().items]
    controller_config = awx_site.state / "control" / "sandbox-control" / "etc" / "katalyst" / "controller.yaml"
    assert "cnr" in controller_config.read_text()

    # preview (a check job with diff) answering a different reconciler set: it shows the controller's configuration
    # would change, and changes nothing on the control host
    before = files_digest(awx_site.state / "control")
    preview = awx_site.launch("katalyst | preview", answers={"katalyst_controller_reconcilers": ["overcommit"]}, limit="katalyst_control")
    stats = succeeded(preview)
    assert set(stats["processed"]) == {"sandbox-control"}
    assert changed_tasks(preview) == ["Write the controller configuration"], changed_tasks(preview)
    diffs = [event["event_data"]["res"]["diff"] for event in preview.events if event["event"] == "runner_on_ok"
             and event["event_data"]["task"] == "Write the controller configuration"]
    assert diffs and "cnr" in str(diffs[0]), diffs
    assert files_digest(awx_site.state / "control") == before

    # node roll-out, one node a batch on the two nodes the launch is limited to: node 1 finishes before node 2 starts,
    # and nothing changes on a converged node
    rollout = awx_site.launch("katalyst | node roll-out", limit="sandbox-node-1,sandbox-node-2")
    stats = succeeded(rollout)
    assert set(stats["processed"]) == {"sandbox-node-1", "sandbox-node-2"}
    assert sum(stats["changed"].values()) == 0, changed_tasks(rollout)
    hosts_in_order = [event["event_data"]["host"] for event in rollout.events if event["event"].startswith("runner_on_")]
    assert [host for index, host in enumerate(hosts_in_order) if index == 0 or hosts_in_order[index - 1] != host] == ["sandbox-node-1", "sandbox-node-2"]


def test_pool_templates(awx_site):
    custom = client.CustomObjectsApi(awx_site.api)
    core = client.CoreV1Api(awx_site.api)

    # a bad survey answer is refused before anything is written
    refused = awx_site.launch("katalyst | tide pool", answers={"tide_pool_name": "Not_A_Name", "tide_pool_node_selector": "pool=web"})
    assert refused.status == "failed" and "tide_pool_name must be a DNS subdomain name" in refused.stdout.read()

    tide_answers = {"tide_pool_name": "awx-tide", "tide_pool_node_selector": "node.kubernetes.io/instance-type=sandbox",
                    "tide_pool_reserve_online": "1", "tide_pool_reserve_offline": "1"}
    stats = succeeded(awx_site.launch("katalyst | tide pool", answers=tide_answers))
    assert stats["changed"] == {"sandbox-control": 1}
    pool = custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, "awx-tide")
    assert pool["spec"]["nodeConfigs"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "sandbox"}, pool["spec"]
    assert not succeeded(awx_site.launch("katalyst | tide pool", answers=tide_answers))["changed"]

    overcommit_answers = {"overcommit_pool_name": "awx-overcommit", "overcommit_pool_cpu_ratio": "1.5", "overcommit_pool_memory_ratio": "1.2",
                          "overcommit_pool_nodes": "sandbox-node-1\n"}
    stats = succeeded(awx_site.launch("katalyst | overcommit pool", answers=overcommit_answers))
    assert stats["changed"] == {"sandbox-control": 2}
    assert core.read_node("sandbox-node-1").metadata.labels[overcommit.POOL_LABEL] == "awx-overcommit"
    config_object = custom.get_cluster_custom_object(OVERCOMMIT_GROUP, "v1alpha1", OVERCOMMIT_PLURAL, "awx-overcommit")
    assert config_object["spec"]["resourceOvercommitRatio"] == {"cpu": "1.5", "memory": "1.2"}, config_object["spec"]
    assert not succeeded(awx_site.launch("katalyst | overcommit pool", answers=overcommit_answers))["changed"]

    # the running controller (site template) acts on both pools
    wait_until(lambda: "reserveNodes" in custom.get_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL, "awx-tide").get("status", {}),
               timeout=180, what="the tide controller to record the pool's nodes")
    wait_until(lambda: (core.read_node("sandbox-node-1").metadata.annotations or {}).get(overcommit.RATIO_KEY["cpu"]) == "1.5",
               timeout=180, what="the overcommit controller to annotate sandbox-node-1")

    # and removes them again
    succeeded(awx_site.launch("katalyst | tide pool", answers=dict(tide_answers, tide_pool_state="absent")))
    wait_until(lambda: not [item for item in custom.list_cluster_custom_object(tide.GROUP, "v1alpha1", tide.PLURAL)["items"]
                            if item["metadata"]["name"] == "awx-tide"], timeout=180, what="the TideNodePool to be gone")
