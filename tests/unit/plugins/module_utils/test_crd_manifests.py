"""Our CRDs are field-compatible with Katalyst's, and the spec's example objects validate under both."""

import glob
import os
import subprocess
import sys

import pytest
import yaml

from ansible_collections.katalyst.colocation.plugins.module_utils import crd_manifests
from sandbox.kubeapi.schema import validate_and_default

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
KATALYST_CRDS = os.path.join(REPO, "..", "shared", "reference", "katalyst-crds")


def katalyst_crds():
    found = {}
    for path in sorted(glob.glob(os.path.join(KATALYST_CRDS, "*.yaml"))):
        with open(path) as handle:
            crd = yaml.safe_load(handle)
        found[crd["metadata"]["name"]] = crd
    if not found:
        pytest.skip("Katalyst's CRDs are not next to this checkout (../shared/reference/katalyst-crds)")
    return found


def schema_paths(schema, prefix=""):
    """{path: type} for every property in a structural schema."""
    paths = {}
    kind = "int-or-string" if schema.get("x-kubernetes-int-or-string") else schema.get("type", "any")
    paths[prefix or "<root>"] = kind
    for name, sub in (schema.get("properties") or {}).items():
        paths.update(schema_paths(sub, "%s.%s" % (prefix, name) if prefix else name))
    if isinstance(schema.get("items"), dict):
        paths.update(schema_paths(schema["items"], prefix + "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        paths.update(schema_paths(schema["additionalProperties"], prefix + "{}"))
    return paths


def ours(name):
    return crd_manifests.ALL[name]


def test_same_names_scope_versions_and_subresources():
    for name, theirs in katalyst_crds().items():
        mine = ours(name)
        assert mine["spec"]["group"] == theirs["spec"]["group"]
        assert mine["spec"]["scope"] == theirs["spec"]["scope"]
        assert mine["spec"]["names"] == theirs["spec"]["names"]
        for their_version in theirs["spec"]["versions"]:
            my_version = next(v for v in mine["spec"]["versions"] if v["name"] == their_version["name"])
            assert my_version.get("subresources") == their_version.get("subresources")
            assert my_version.get("additionalPrinterColumns") == their_version.get("additionalPrinterColumns")


def test_every_katalyst_field_exists_with_the_same_type():
    for name, theirs in katalyst_crds().items():
        their_paths = schema_paths(theirs["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        my_paths = schema_paths(ours(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        missing = {path: kind for path, kind in their_paths.items() if my_paths.get(path) != kind}
        assert not missing, "%s: fields missing or typed differently: %s" % (name, missing)


EXAMPLES = [
    ("tidenodepools.tide.katalyst.kubewharf.io",
     {"apiVersion": "tide.katalyst.kubewharf.io/v1alpha1", "kind": "TideNodePool", "metadata": {"name": "pool-a"},
      "spec": {"nodeConfigs": {"nodeSelector": {"pool": "a"}, "reserve": {"online": "10%", "offline": "25%"}}}}),
    ("tidenodepools.tide.katalyst.kubewharf.io",
     {"apiVersion": "tide.katalyst.kubewharf.io/v1alpha1", "kind": "TideNodePool", "metadata": {"name": "pool-b"},
      "spec": {"nodeConfigs": {"reserve": {"online": 2, "offline": "30%"},
                               "onlineLabel": {"key": "tide.katalyst.kubewharf.io/node-type", "value": "online"},
                               "tideLabel": {"key": "tide.katalyst.kubewharf.io/tide", "value": "true"}},
               "evictStrategy": {"type": "watermark", "watermark": {
                   "evictOnlinePodTaint": {"key": "tide.katalyst.kubewharf.io/online-not-used", "value": "true", "effect": "NoExecute"}}}},
      "status": {"reserveNodes": {"onlineNodes": ["n2", "n1"]}, "tideNodes": {"nodes": ["n3"]}}}),
    ("nodeovercommitconfigs.overcommit.katalyst.kubewharf.io",
     {"apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig", "metadata": {"name": "pool1"},
      "spec": {"nodeOvercommitSelectorVal": "pool1", "resourceOvercommitRatio": {"cpu": "2", "memory": "1.2"}},
      "status": {"matchedNodeList": ["node1", "node2"]}}),
    ("customnoderesources.node.katalyst.kubewharf.io",
     {"apiVersion": "node.katalyst.kubewharf.io/v1alpha1", "kind": "CustomNodeResource", "metadata": {"name": "node1"},
      "status": {"topologyPolicy": "None",
                 "resources": {"allocatable": {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "48k",
                                               "resource.katalyst.kubewharf.io/reclaimed_memory": "60696174Ki"},
                               "capacity": {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "48k",
                                            "resource.katalyst.kubewharf.io/reclaimed_memory": "60696174Ki"}},
                 "topologyZone": [{"type": "Socket", "name": "0", "children": [
                     {"type": "Numa", "name": "0", "resources": {"allocatable": {"resource.katalyst.kubewharf.io/reclaimed_millicpu": "24k"}},
                      "allocations": [{"consumer": "default/web/uid-1", "requests": {"cpu": "4", "memory": "8Gi"}}]}]}]}}),
]


@pytest.mark.parametrize("name, example", EXAMPLES, ids=[e[1]["metadata"]["name"] for e in EXAMPLES])
def test_examples_validate_under_ours_and_katalysts(name, example):
    _obj, errors = validate_and_default(ours(name), "v1alpha1", example)
    assert errors == []
    _obj, errors = validate_and_default(katalyst_crds()[name], "v1alpha1", example)
    assert errors == []


def test_our_additions_validate():
    example = {"apiVersion": "overcommit.katalyst.kubewharf.io/v1alpha1", "kind": "NodeOvercommitConfig", "metadata": {"name": "p"},
               "spec": {"resourceOvercommitRatio": {"cpu": "1.5"}, "force": True},
               "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True", "reason": "Applied", "message": "",
                                                                   "lastTransitionTime": "2026-11-24T00:00:00Z"}]}}
    _obj, errors = validate_and_default(ours("nodeovercommitconfigs.overcommit.katalyst.kubewharf.io"), "v1alpha1", example)
    assert errors == []
    bad = dict(example, status={"conditions": [{"type": "Ready", "status": "Maybe"}]})
    _obj, errors = validate_and_default(ours("nodeovercommitconfigs.overcommit.katalyst.kubewharf.io"), "v1alpha1", bad)
    assert any("status.conditions" in e for e in errors)


def test_selecting_crds_by_name():
    assert [c["spec"]["names"]["kind"] for c in crd_manifests.crds(["tidenodepools", "NodeOvercommitConfig"])] == \
        ["TideNodePool", "NodeOvercommitConfig"]
    with pytest.raises(ValueError, match="unknown CRD"):
        crd_manifests.crds(["nope"])


def test_deploy_yaml_in_sync():
    result = subprocess.run([sys.executable, os.path.join(REPO, "deploy", "generate.py"), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
