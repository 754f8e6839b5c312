# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Our CustomResourceDefinitions, written by us and compatible with Katalyst's.

Same groups, versions, kinds, names, scope, fields and subresources as katalyst-api's CRDs, so
objects move between the two unchanged. Additions: ``status.conditions`` (metav1.Condition) and
``status.observedGeneration`` on TideNodePool and NodeOvercommitConfig, and
``NodeOvercommitConfig.spec.force`` (override the guard that refuses unsafe ratio decreases).
"""

from __future__ import annotations

import copy

QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|"
                    r"(\.[0-9]+))))?$")
QOS_LEVELS = ["reclaimed_cores", "shared_cores", "dedicated_cores", "system_cores"]


def _obj(properties=None, required=None, description=None, **extra):
    schema = {"type": "object"}
    if properties is not None:
        schema["properties"] = properties
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    schema.update(extra)
    return schema


def _str(description=None, **extra):
    schema = {"type": "string"}
    if description:
        schema["description"] = description
    schema.update(extra)
    return schema


def _array(items, **extra):
    return dict({"type": "array", "items": items}, **extra)


def _quantity():
    return {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY_PATTERN, "x-kubernetes-int-or-string": True}


def _resource_list():
    return _obj(additionalProperties=_quantity())


def _int_or_string(description=None):
    schema = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
    if description:
        schema["description"] = description
    return schema


def _conditions():
    """metav1.Condition, so `kubectl wait --for=condition=Ready` and kubernetes.core's waits work."""
    condition = _obj({
        "type": _str("Condition type, e.g. Ready or Conflict.", maxLength=316),
        "status": _str("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        "lastTransitionTime": _str(format="date-time"),
        "reason": _str(maxLength=1024),
        "message": _str(maxLength=32768),
    }, required=["type", "status", "lastTransitionTime", "reason", "message"])
    return _array(condition, **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


def _label_option():
    return _obj({"key": _str(), "value": _str()}, required=["key", "value"])


def _taint_option():
    return _obj({"key": _str(), "value": _str(), "effect": _str("NoSchedule, PreferNoSchedule or NoExecute.")},
                required=["key", "value"])


def _crd(group, kind, plural, singular, short_names, schema, printer_columns=None, scope="Cluster"):
    version = {"name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
               "schema": {"openAPIV3Schema": schema}}
    if printer_columns:
        version["additionalPrinterColumns"] = printer_columns
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "%s.%s" % (plural, group),
                         "labels": {"app.kubernetes.io/managed-by": "katalyst.colocation", "app.kubernetes.io/part-of": "katalyst"}},
            "spec": {"group": group, "scope": scope,
                     "names": {"kind": kind, "listKind": kind + "List", "plural": plural, "singular": singular,
                               "shortNames": list(short_names)},
                     "versions": [version]}}


def _root(spec, status, description, spec_required=None):
    return _obj({"apiVersion": _str(), "kind": _str(), "metadata": {"type": "object"}, "spec": spec, "status": status},
                required=spec_required, description=description)


TIDE_NODE_POOL = _crd(
    "tide.katalyst.kubewharf.io", "TideNodePool", "tidenodepools", "tidenodepool", ["tnp"],
    _root(
        _obj({
            "evictStrategy": _obj({
                "type": _str("Eviction strategy; only \"watermark\" exists."),
                "watermark": _obj({"evictOnlinePodTaint": _taint_option(), "evictOfflinePodTaint": _taint_option()}),
            }, required=["type"]),
            "nodeConfigs": _obj({
                "nodeSelector": _obj(additionalProperties=_str(), description="Nodes of the pool; empty selects every node."),
                "onlineLabel": _label_option(),
                "offlineLabel": _label_option(),
                "tideLabel": _label_option(),
                "reserve": _obj({"online": _int_or_string("Nodes kept online: a count or a percentage (rounded up)."),
                                 "offline": _int_or_string("Nodes kept offline: a count or a percentage (rounded down).")}),
            }),
            "cooldownSeconds": {"type": "integer", "minimum": 0,
                                "description": "katalyst.colocation: minimum time between two flips of the same node."},
        }, required=["nodeConfigs"]),
        _obj({
            "reserveNodes": _obj({"onlineNodes": _array(_str()), "offlineNodes": _array(_str())}),
            "tideNodes": _obj({"nodes": _array(_str())}),
            "observedGeneration": {"type": "integer", "format": "int64"},
            "conditions": _conditions(),
        }),
        "TideNodePool flips whole nodes between an online and an offline pool.",
        spec_required=None))

NODE_OVERCOMMIT_CONFIG = _crd(
    "overcommit.katalyst.kubewharf.io", "NodeOvercommitConfig", "nodeovercommitconfigs", "nodeovercommitconfig", ["noc"],
    _root(
        _obj({
            "nodeOvercommitSelectorVal": _str("Matches nodes labelled katalyst.kubewharf.io/overcommit_node_pool=<value>."),
            "resourceOvercommitRatio": _obj(additionalProperties=_str(), description="Ratio per resource (cpu, memory), e.g. \"1.5\"."),
            "force": {"type": "boolean", "description": "katalyst.colocation: apply a ratio decrease even where it would put "
                                                        "allocatable below the requests already placed on a node."},
        }),
        _obj({
            "matchedNodeList": _array(_str()),
            "observedGeneration": {"type": "integer", "format": "int64"},
            "conditions": _conditions(),
        }),
        "NodeOvercommitConfig amplifies the allocatable resources of the nodes it matches."),
    printer_columns=[{"jsonPath": ".spec.resourceOvercommitRatio", "name": "OVERCOMMITRATIO", "type": "string"},
                     {"jsonPath": ".spec.nodeOvercommitSelectorVal", "name": "SELECTOR", "type": "string"}])


def _resources():
    attributes = _array(_obj({"name": _str(), "value": _str()}, required=["name", "value"]))
    return _obj({
        "allocatable": _resource_list(),
        "capacity": _resource_list(),
        "resourcePackages": _array(_obj({"packageName": _str(), "allocatable": _resource_list(), "attributes": attributes},
                                        required=["packageName"]),
                                   **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["packageName"]}),
        "resourcePools": _array(_obj({"poolName": _str(), "minAllocatable": _resource_list(), "maxAllocatable": _resource_list(),
                                      "attributes": attributes}, required=["poolName"]),
                                **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["poolName"]}),
    })


def _usage():
    return _obj({
        "genericUsage": _resource_list(),
        "numaUsage": _array(_obj({"numaId": {"type": "integer"}, "usage": _resource_list()}, required=["numaId", "usage"])),
    })


_ATTRIBUTES = _array(_obj({"name": _str(), "value": _str()}, required=["name", "value"]))
_TOPOLOGY_ZONE = _obj({
    "type": _str("Socket, Numa, L3CacheGroup, GPU, NIC, Storage, ..."),
    "name": _str("Socket and Numa zones use the decimal id, e.g. \"0\"."),
    "resources": _resources(),
    "attributes": _ATTRIBUTES,
    "allocations": _array(_obj({"consumer": _str("<namespace>/<name>/<uid>"), "requests": _resource_list()}, required=["consumer"])),
    "children": {"x-kubernetes-preserve-unknown-fields": True},
    "siblings": _array(_obj({"type": _str(), "name": _str(), "attributes": _ATTRIBUTES}, required=["name", "type"])),
}, required=["name", "type"])

CUSTOM_NODE_RESOURCE = _crd(
    "node.katalyst.kubewharf.io", "CustomNodeResource", "customnoderesources", "customnoderesource", ["kcnr"],
    _root(
        _obj({
            "nodeResourceProperties": _array(_obj({"propertyName": _str(), "propertyValues": _array(_str()),
                                                   "propertyQuantity": _quantity()}, required=["propertyName"])),
            "taints": _array(_obj({"key": _str(), "value": _str(), "effect": _str(), "timeAdded": _str(format="date-time"),
                                   "qosLevel": _str(enum=QOS_LEVELS)}, required=["effect", "key", "qosLevel"])),
        }),
        _obj({
            "resources": _resources(),
            "topologyZone": _array(_TOPOLOGY_ZONE),
            "topologyPolicy": _str("Kubelet topology policy; anything but the listed policies means none.", default="none"),
            "conditions": _array(_obj({"type": _str(), "status": _str(), "lastHeartbeatTime": _str(format="date-time"),
                                       "reason": _str(), "message": _str()}, required=["status", "type"])),
            "nodeMetricStatus": _obj({
                "updateTime": _str(format="date-time"),
                "nodeMetric": _usage(),
                "groupMetric": _array(_obj({"QoSLevel": _str(enum=QOS_LEVELS), "genericUsage": _resource_list(),
                                            "numaUsage": _usage()["properties"]["numaUsage"], "podList": _array(_str())},
                                           required=["QoSLevel"])),
            }, required=["updateTime"]),
        }, required=["topologyPolicy"]),
        "CustomNodeResource holds a node's reclaimed resources, per node and per NUMA node."))

ALL = {crd["metadata"]["name"]: crd for crd in (TIDE_NODE_POOL, NODE_OVERCOMMIT_CONFIG, CUSTOM_NODE_RESOURCE)}


def crds(names=None):
    """Deep copies of our CRDs (all, or those named: full name, plural or kind, case-insensitive)."""
    if not names:
        return [copy.deepcopy(crd) for _name, crd in sorted(ALL.items())]
    chosen = []
    for wanted in names:
        key = wanted.lower()
        matches = [crd for name, crd in sorted(ALL.items())
                   if key in (name, crd["spec"]["names"]["plural"], crd["spec"]["names"]["kind"].lower())]
        if not matches:
            raise ValueError("unknown CRD %r (known: %s)" % (wanted, ", ".join(sorted(ALL))))
        chosen.extend(copy.deepcopy(m) for m in matches if m not in chosen)
    return chosen
