"""Server-side ``Table`` output (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``), what ``kubectl get`` prints.

The cells follow kube-apiserver's printers (pkg/printers/internalversion) for the kinds users list here,
custom resources use their CRD's ``additionalPrinterColumns`` (JSONPath) as the apiextensions server does,
and every other kind gets NAME and AGE. The server always sends every column; ``-o wide`` only shows the
``priority: 1`` ones. ``includeObject`` decides what each row carries (default: the object's metadata).
"""

import datetime
import json
import re

NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}
AGE_DOC = "CreationTimestamp is a timestamp representing the server time when this object was created."


def column(name, description="", kind="string", priority=0):
    return {"name": name, "type": kind, "format": "", "description": description, "priority": priority}


def wants_table(accept):
    """True when the client asks for a meta.k8s.io/v1 (or v1beta1) Table before plain JSON."""
    for media in (accept or "").split(","):
        params = dict(p.strip().partition("=")[::2] for p in media.split(";")[1:])
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return True
        if media.split(";")[0].strip() in ("application/json", "*/*"):
            return False
    return False


# -- time -------------------------------------------------------------------------------------
def parse_time(stamp):
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return None


def human_duration(seconds):
    """apimachinery's duration.HumanDuration: 5s, 3m20s, 4h5m, 2d3h, 1y20d."""
    seconds = int(seconds)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return "%ds" % seconds
    minutes, hours = seconds // 60, seconds // 3600
    if minutes < 10:
        return "%dm%ds" % (minutes, seconds % 60) if seconds % 60 else "%dm" % minutes
    if minutes < 180:
        return "%dm" % minutes
    if hours < 8:
        return "%dh%dm" % (hours, minutes % 60) if minutes % 60 else "%dh" % hours
    if hours < 48:
        return "%dh" % hours
    if hours < 24 * 8:
        return "%dd%dh" % (hours // 24, hours % 24) if hours % 24 else "%dd" % (hours // 24)
    if hours < 24 * 365 * 2:
        return "%dd" % (hours // 24)
    if hours < 24 * 365 * 8:
        days = hours // 24 % 365
        return "%dy%dd" % (hours // 24 // 365, days) if days else "%dy" % (hours // 24 // 365)
    return "%dy" % (hours // 24 // 365)


def age(stamp, now):
    """translateTimestampSince: ``<unknown>`` without a timestamp."""
    when = parse_time(stamp)
    return human_duration((now - when).total_seconds()) if when else "<unknown>"


# -- built-in printers ------------------------------------------------------------------------
def _node_columns():
    return [NAME_COLUMN, column("Status", "The status of the node"), column("Roles", "The roles of the node"), column("Age", AGE_DOC),
            column("Version", "Kubelet Version reported by the node."), column("Internal-IP", "List of addresses reachable to the node.", priority=1),
            column("External-IP", "List of addresses reachable to the node.", priority=1), column("OS-Image", "OS Image reported by the node.", priority=1),
            column("Kernel-Version", "Kernel Version reported by the node.", priority=1),
            column("Container-Runtime", "ContainerRuntime Version reported by the node.", priority=1)]


def node_roles(labels):
    roles = set()
    for key, value in (labels or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key.split("/", 1)[1]:
            roles.add(key.split("/", 1)[1])
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or "<none>"


def node_status(node):
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    states = ["Unknown"] if ready is None else ["Ready" if ready.get("status") == "True" else "NotReady"]
    if (node.get("spec") or {}).get("unschedulable"):
        states.append("SchedulingDisabled")
    return ",".join(states)


def _node_cells(node, now):
    status = node.get("status") or {}
    info = status.get("nodeInfo") or {}
    addresses = status.get("addresses") or []

    def address(kind):
        return next((a.get("address") for a in addresses if a.get("type") == kind), None) or "<none>"
    return [node["metadata"]["name"], node_status(node), node_roles(node["metadata"].get("labels")), age(node["metadata"].get("creationTimestamp"), now),
            info.get("kubeletVersion", ""), address("InternalIP"), address("ExternalIP"), info.get("osImage") or "<unknown>",
            kernel_version(info), info.get("containerRuntimeVersion") or "<unknown>"]


def kernel_version(info):
    """The KERNEL-VERSION cell: with the architecture in parentheses when the node reports one."""
    kernel = info.get("kernelVersion") or "<unknown>"
    return "%s (%s)" % (kernel, info["architecture"]) if info.get("architecture") else kernel


def _pod_columns():
    return [NAME_COLUMN, column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "The aggregate status of the containers in this pod."),
            column("Restarts", "The number of times the containers in this pod have been restarted."), column("Age", AGE_DOC),
            column("IP", "podIP address allocated to the pod.", priority=1),
            column("Node", "NodeName indicates in which node this pod is scheduled.", priority=1),
            column("Nominated Node", "nominatedNodeName is set only when this pod preempts other pods on the node.", priority=1),
            column("Readiness Gates", "If specified, all readiness gates will be evaluated for pod readiness.", priority=1)]


def pod_reason(pod, statuses):
    """The STATUS column: the phase, or what the containers wait on / ended with (init containers not modelled)."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or ""
    if any(c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated" for c in status.get("conditions") or []):
        reason = "SchedulingGated"
    has_running, error_reason = False, ""
    for container in reversed(statuses):
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated:
            reason = terminated.get("reason") or ("Signal:%d" % terminated["signal"] if terminated.get("signal")
                                                  else "ExitCode:%d" % terminated.get("exitCode", 0))
            if terminated.get("exitCode"):
                error_reason = reason
        elif container.get("ready") and state.get("running") is not None:
            has_running = True
    if reason == "Completed":
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        reason = "Running" if has_running and ready else error_reason or ("NotReady" if has_running else reason)
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else reason if status.get("phase") in ("Succeeded", "Failed") else "Terminating"
    return reason


def _pod_cells(pod, now):
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready") and (c.get("state") or {}).get("running") is not None)
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    finished = [((c.get("lastState") or {}).get("terminated") or {}).get("finishedAt") for c in statuses]
    last_restart = max((f for f in finished if f), default=None)
    restarts_text = "%d (%s ago)" % (restarts, age(last_restart, now)) if restarts and last_restart else str(restarts)
    pod_ips = status.get("podIPs") or []
    gates = spec.get("readinessGates") or []
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    gates_text = "%d/%d" % (sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True"), len(gates)) if gates else "<none>"
    return [pod["metadata"]["name"], "%d/%d" % (ready, len(spec.get("containers") or [])), pod_reason(pod, statuses), restarts_text,
            age(pod["metadata"].get("creationTimestamp"), now), (pod_ips[0].get("ip") if pod_ips else "") or "<none>",
            spec.get("nodeName") or "<none>", status.get("nominatedNodeName") or "<none>", gates_text]


def _pod_conditions(pod):
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return [{"type": "Completed", "status": "True", "reason": phase, "message": "The pod has completed %s." % (
            "successfully" if phase == "Succeeded" else "with an error")}]
    return None


def _created(obj, now):
    return age(obj["metadata"].get("creationTimestamp"), now)


def _with_age(*extra_columns):
    """Columns: NAME, the given ones, AGE (the layout of most built-in printers)."""
    return lambda: [NAME_COLUMN] + list(extra_columns) + [column("Age", AGE_DOC)]


def _cells_with_age(*values):
    """Cells: the name, ``values(obj)`` of each extra column, the age."""
    return lambda obj, now: [obj["metadata"]["name"]] + [value(obj) for value in values] + [_created(obj, now)]


def _count(field):
    return lambda obj: len(obj.get(field) or {})


BUILTIN_PRINTERS = {
    ("", "Node"): (_node_columns, _node_cells),
    ("", "Pod"): (_pod_columns, _pod_cells),
    ("", "Namespace"): (_with_age(column("Status", "The status of the namespace")),
                        _cells_with_age(lambda ns: (ns.get("status") or {}).get("phase", ""))),
    ("", "ConfigMap"): (_with_age(column("Data", "Data contains the configuration data.", "integer")),
                        _cells_with_age(lambda cm: len(cm.get("data") or {}) + len(cm.get("binaryData") or {}))),
    ("", "Secret"): (_with_age(column("Type"), column("Data", kind="integer")),
                     _cells_with_age(lambda secret: secret.get("type") or "Opaque", _count("data"))),
    ("coordination.k8s.io", "Lease"): (_with_age(column("Holder", "holderIdentity of the holder of the lease.")),
                                       _cells_with_age(lambda lease: (lease.get("spec") or {}).get("holderIdentity") or "<none>")),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): (_with_age(column("Webhooks", kind="integer")), _cells_with_age(_count("webhooks"))),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): (_with_age(column("Webhooks", kind="integer")), _cells_with_age(_count("webhooks"))),
    ("apiextensions.k8s.io", "CustomResourceDefinition"): (
        lambda: [NAME_COLUMN, column("Created At", kind="date")],
        lambda crd, now: [crd["metadata"]["name"], crd["metadata"].get("creationTimestamp")]),
}
DEFAULT_PRINTER = (_with_age(), _cells_with_age())


# -- custom resources -------------------------------------------------------------------------
def printer_columns(crd, version):
    """The CRD version's additionalPrinterColumns, or the apiextensions default (an Age column of type date)."""
    for item in (crd or {}).get("spec", {}).get("versions") or []:
        if item.get("name") == version and item.get("additionalPrinterColumns"):
            return item["additionalPrinterColumns"]
    return [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": AGE_DOC}]


def _custom_printer(columns):
    headers = [NAME_COLUMN] + [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                                "description": c.get("description") or "Custom resource definition column (in JSONPath format): %s" % c["jsonPath"],
                                "priority": c.get("priority", 0)} for c in columns]

    def cells(obj, now):
        return [obj["metadata"]["name"]] + [custom_cell(c.get("type", "string"), jsonpath_first(obj, c["jsonPath"]), now) for c in columns]
    return (lambda: headers), cells


def custom_cell(kind, found, now):
    """cellForJSONValue: a string column prints what JSONPath prints; the others keep the JSON value; a date becomes an age."""
    if not found:
        return None
    value = found[0]
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if kind == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "date" and isinstance(value, str):
        return age(value, now) if parse_time(value) else "<invalid>"
    return None


TOKEN = re.compile(r"\.([A-Za-z0-9_\-/]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_\-.]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]|\['([^']+)'\]")


def jsonpath_first(obj, path):
    """[value] at a kubectl-style JSONPath (``.a.b``, ``[0]``, ``[*]``, ``[?(@.k=="v")]``), [] when absent."""
    current = [obj]
    for match in TOKEN.finditer(path.strip().strip("{}")):
        name, index, filter_key, filter_value, quoted = match.groups()
        found = []
        for value in current:
            if (name or quoted) and isinstance(value, dict) and (name or quoted) in value:
                found.append(value[name or quoted])
            elif index == "*" and isinstance(value, list):
                found.extend(value)
            elif index and index != "*" and isinstance(value, list) and int(index) < len(value):
                found.append(value[int(index)])
            elif filter_key and isinstance(value, list):
                found.extend(item for item in value if _field_equals(item, filter_key, filter_value))
        current = found
    return current


def _field_equals(item, key, wanted):
    found = jsonpath_first(item, "." + key) if isinstance(item, dict) else []
    return bool(found) and str(found[0]) == wanted


# -- the table --------------------------------------------------------------------------------
def printer_for(rtype, crd):
    if rtype.crd:
        return _custom_printer(printer_columns(crd, rtype.version))
    return BUILTIN_PRINTERS.get((rtype.group, rtype.kind), DEFAULT_PRINTER)


def row_object(obj, include):
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def to_table(rtype, crd, body, include="Metadata", now=None):
    """A ``meta.k8s.io/v1 Table`` of ``body`` (one object or a list of ``rtype``)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    headers, cells = printer_for(rtype, crd)
    items = body["items"] if "items" in body else [body]
    rows = []
    for obj in items:
        row = {"cells": cells(obj, now), "object": row_object(obj, include)}
        conditions = _pod_conditions(obj) if (rtype.group, rtype.kind) == ("", "Pod") else None
        if conditions:
            row["conditions"] = conditions
        rows.append(row)
    meta = {key: value for key, value in (body.get("metadata") or {}).items() if key in ("resourceVersion", "continue", "remainingItemCount")}
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": headers(), "rows": rows}
