"""The real kubectl (the pinned release's, built by `make kube-build`) against the API emulator: what a user types.

kubectl needs more from a server than our Python clients do: OpenAPI v3 (and v2 as protobuf) to validate and to
compute patches, server-side field validation, Table output for `get`, server-side apply. Each expectation here is
what the real kube-apiserver of the same release answers (compared by hand with `sandbox.kube.cluster up`); the
commands do not depend on the backend.
"""

import json
import os
import re

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.crd_manifests import crds
from tests.integration.realcluster import KUBECTL, kubectl as run_kubectl

pytestmark = [
    pytest.mark.skipif(not os.access(KUBECTL, os.X_OK), reason="kubectl of the pinned release is not built (%s): run `make kube-build`" % KUBECTL),
    pytest.mark.emulator_only("what kubectl needs from the emulator; the real control plane serves it by construction"),
]

POOL = """
apiVersion: tide.katalyst.kubewharf.io/v1alpha1
kind: TideNodePool
metadata: {name: pool-a}
spec: {nodeConfigs: {reserve: {online: 2}}}
"""
OVERCOMMIT = """
apiVersion: overcommit.katalyst.kubewharf.io/v1alpha1
kind: NodeOvercommitConfig
metadata: {name: pool-a}
spec: {resourceOvercommitRatio: {cpu: "1.5"}, nodeOvercommitSelectorVal: pool-a}
"""
NODE = """
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {node-role.kubernetes.io/worker: "", katalyst.kubewharf.io/tide: "true"}}
spec: {taints: [{key: tide, value: "true", effect: NoSchedule}]}
"""
NODE_STATUS = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok",
                                          "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                          "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}],
                          "nodeInfo": {"kubeletVersion": "v1.37.2", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0",
                                       "containerRuntimeVersion": "containerd://2.1.0", "machineID": "m", "systemUUID": "s", "bootID": "b",
                                       "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}}
POD = """
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec: {nodeName: n1, containers: [{name: app, image: busybox}]}
"""
POD_STATUS = {"status": {"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}],
                         "conditions": [{"type": "Ready", "status": "True"}],
                         "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0, "image": "busybox", "imageID": "",
                                                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}
CONFIG = """
apiVersion: v1
kind: ConfigMap
metadata: {name: ssa, namespace: default, labels: {app: katalyst}}
data: {ratio: "1.5", mode: online}
"""
CONFIG_OTHER = """
apiVersion: v1
kind: ConfigMap
metadata: {name: ssa, namespace: default}
data: {ratio: "2"}
"""


@pytest.fixture
def kubectl(kubeapi, tmp_path):
    """kubectl(*args, check=True, input_text=None) against the test's cluster, with a cache of its own."""
    cache = str(tmp_path / "kubectl-cache")

    def run(*args, check=True, input_text=None):
        return run_kubectl(kubeapi.kubeconfig, "--cache-dir", cache, *args, check=check, input_text=input_text)
    return run


@pytest.fixture
def with_crds(kubectl, tmp_path):
    """Our CRDs applied the way users do it: one `kind: List` file, validated by kubectl (OpenAPI v2 protobuf)."""
    manifest = tmp_path / "crds.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": crds()}))
    applied = kubectl("apply", "-f", str(manifest))
    assert applied.stdout.count("created") == len(crds()), applied.stdout
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=120s")
    return kubectl


def rows(output):
    """`kubectl get` output as a list of column lists (columns are separated by two or more spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


def test_apply_validates_against_the_servers_openapi(with_crds):
    kubectl = with_crds
    result = kubectl("apply", "-f", "-", input_text=POOL)
    assert result.stdout.strip() == "tidenodepool.tide.katalyst.kubewharf.io/pool-a created"
    assert "openapi" not in result.stderr
    assert kubectl("apply", "-f", "-", input_text=POOL).stdout.strip() == "tidenodepool.tide.katalyst.kubewharf.io/pool-a unchanged"


@pytest.mark.parametrize("manifest, message", [
    (POOL.replace("pool-a", "pool-b").replace("{online: 2}}", "{online: 2}}, bogus: 1"),
     'TideNodePool in version "v1alpha1" cannot be handled as a TideNodePool: strict decoding error: unknown field "spec.bogus"'),
    (NODE.replace("taints:", "unschedulable: \"yes\", taints:"),
     'Node in version "v1" cannot be handled as a Node: json: cannot unmarshal string into Go struct field NodeSpec.spec.unschedulable of type bool'),
    (CONFIG + "bogus: 1\n", 'ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "bogus"'),
], ids=["crd-unknown-field", "node-wrong-type", "configmap-unknown-field"])
def test_apply_rejects_a_bad_field_as_a_real_server_does(with_crds, manifest, message):
    result = with_crds("apply", "-f", "-", check=False, input_text=manifest)
    assert result.returncode == 1 and "Error from server (BadRequest)" in result.stderr and message in result.stderr, result.stderr
    assert with_crds("get", "nodes,configmaps,tidenodepools", "-o", "name").stdout.strip() == ""


def test_get_prints_the_servers_table_columns(kubectl):
    kubectl("apply", "-f", "-", input_text=NODE)
    kubectl("patch", "node", "n1", "--subresource=status", "--type=merge", "-p", json.dumps(NODE_STATUS))
    kubectl("apply", "-f", "-", input_text=POD)
    kubectl("patch", "pod", "p1", "--subresource=status", "--type=merge", "-p", json.dumps(POD_STATUS))
    nodes = rows(kubectl("get", "nodes", "-o", "wide").stdout)
    assert nodes[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert nodes[1][:3] == ["n1", "Ready", "worker"] and nodes[1][4:] == [
        "v1.37.2", "10.0.0.1", "<none>", "Debian GNU/Linux 12 (bookworm)", "6.1.0 (amd64)", "containerd://2.1.0"]
    assert rows(kubectl("get", "nodes").stdout)[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    pods = rows(kubectl("get", "pods", "-o", "wide").stdout)
    assert pods[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert pods[1][:4] == ["p1", "1/1", "Running", "0"] and pods[1][5:] == ["10.244.0.5", "n1", "<none>", "<none>"]
    namespaces = rows(kubectl("get", "namespaces").stdout)
    assert namespaces[0] == ["NAME", "STATUS", "AGE"] and ["default", "Active"] == namespaces[1][:2]


def _printer_headers(kind):
    """What `kubectl get` prints as headers for one of our kinds: NAME + its printer columns, or NAME AGE."""
    crd = next(c for c in crds() if c["spec"]["names"]["kind"] == kind)
    columns = [c for c in crd["spec"]["versions"][0].get("additionalPrinterColumns") or [] if not c.get("priority")]
    return ["NAME"] + ([c["name"].upper() for c in columns] if columns else ["AGE"])


@pytest.mark.parametrize("kind, manifest", [("TideNodePool", POOL), ("NodeOvercommitConfig", OVERCOMMIT)])
def test_get_of_our_kinds_prints_their_printer_columns(with_crds, kind, manifest):
    with_crds("apply", "-f", "-", input_text=manifest)
    table = rows(with_crds("get", kind.lower()).stdout)
    assert table[0] == _printer_headers(kind)
    assert table[1][0] == "pool-a"
    if kind == "NodeOvercommitConfig":
        assert table[1][1:] == ['{"cpu":"1.5"}', "pool-a"]


def test_explain_reads_our_crd_schema(with_crds):
    explained = with_crds("explain", "tidenodepool.spec").stdout
    assert "KIND:       TideNodePool" in explained and "nodeConfigs" in explained


def test_server_side_apply_twice_then_a_conflict(kubectl):
    first = kubectl("apply", "--server-side", "-f", "-", input_text=CONFIG)
    assert first.stdout.strip() == "configmap/ssa serverside-applied"
    version = kubectl("get", "configmap", "ssa", "-o", "jsonpath={.metadata.resourceVersion}").stdout
    second = kubectl("apply", "--server-side", "-f", "-", input_text=CONFIG)
    assert second.stdout.strip() == "configmap/ssa serverside-applied"
    assert kubectl("get", "configmap", "ssa", "-o", "jsonpath={.metadata.resourceVersion}").stdout == version, "a re-apply changed nothing"

    clash = kubectl("apply", "--server-side", "--field-manager=other", "-f", "-", check=False, input_text=CONFIG_OTHER)
    assert clash.returncode == 1 and 'Apply failed with 1 conflict: conflict with "kubectl": .data.ratio' in clash.stderr, clash.stderr

    kubectl("apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", "-", input_text=CONFIG_OTHER)
    stored = json.loads(kubectl("get", "configmap", "ssa", "-o", "json", "--show-managed-fields").stdout)
    assert stored["data"] == {"ratio": "2", "mode": "online"}
    owners = {entry["manager"]: entry["fieldsV1"] for entry in stored["metadata"]["managedFields"]}
    assert owners["other"] == {"f:data": {"f:ratio": {}}}
    assert owners["kubectl"] == {"f:data": {"f:mode": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}

    # the applier drops the fields it still owns: the server removes them, and keeps what "other" owns
    kubectl("apply", "--server-side", "-f", "-", input_text=CONFIG.split("\ndata:", maxsplit=1)[0])
    assert json.loads(kubectl("get", "configmap", "ssa", "-o", "json").stdout)["data"] == {"ratio": "2"}
