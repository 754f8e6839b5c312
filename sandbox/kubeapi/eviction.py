"""POST pods/<name>/eviction (policy/v1 Eviction) with PodDisruptionBudgets, as kube-apiserver's eviction REST handler
does it (pkg/registry/core/pod/storage/eviction.go), for the emulator.

A real cluster's disruption controller keeps ``status.disruptionsAllowed`` of each PDB; the emulator has no controller,
so it computes the same figure when asked: the matching pods that are healthy (Running and Ready, not being deleted)
minus the healthy pods the budget needs (``minAvailable``, or the matching pods minus ``maxUnavailable``; percentages
round up as the controller rounds them). Differences kept small on purpose: the expected count is the matching pods
(the controller asks their owner's scale), and a PDB's own ``status`` is never written.
"""

import math

from ansible_collections.katalyst.colocation.plugins.module_utils.selectors import label_selector_from_dict

TOO_MANY_REQUESTS_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."


def pod_is_healthy(pod):
    """Counted as available by the disruption controller: Running, Ready, not being deleted."""
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready and not pod["metadata"].get("deletionTimestamp")


def skips_budget(pod):
    """Pods a budget does not protect: finished, not started yet, or already being deleted."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Pending") or bool(pod["metadata"].get("deletionTimestamp"))


def _scaled(value, expected):
    """An int, or "N%" of ``expected`` rounded up."""
    if isinstance(value, str) and value.endswith("%"):
        return int(math.ceil(float(value[:-1]) * expected / 100.0))
    return int(value)


def budget_figures(budget, pods):
    """(healthy, desired healthy, expected) of ``budget`` over ``pods`` (the namespace's pods)."""
    selector = label_selector_from_dict((budget.get("spec") or {}).get("selector"))
    matching = [p for p in pods if selector.matches(p["metadata"].get("labels") or {}) and (p.get("status") or {}).get("phase")
                not in ("Succeeded", "Failed")]
    expected = len(matching)
    healthy = sum(1 for p in matching if pod_is_healthy(p))
    spec = budget.get("spec") or {}
    if spec.get("maxUnavailable") is not None:
        desired = max(0, expected - _scaled(spec["maxUnavailable"], expected))
    else:
        desired = _scaled(spec.get("minAvailable", 0), expected)
    return healthy, desired, expected


def matching_budgets(budgets, pod):
    labels = pod["metadata"].get("labels") or {}
    found = []
    for budget in budgets:
        selector = (budget.get("spec") or {}).get("selector")
        if selector is not None and label_selector_from_dict(selector).matches(labels):
            found.append(budget)
    return found


def check_eviction(pod, budgets, pods, error):
    """Raise ``error(code, reason, message, details)`` when the eviction must be refused; return otherwise."""
    if skips_budget(pod):
        return
    found = matching_budgets(budgets, pod)
    if len(found) > 1:
        raise error(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.")
    if not found:
        return
    budget = found[0]
    healthy, desired, _expected = budget_figures(budget, pods)
    # an unhealthy pod does not lower the healthy count: it may go while the budget is met (IfHealthyBudget)
    allowed = healthy - desired if pod_is_healthy(pod) else (1 if healthy >= desired else 0)
    if allowed <= 0:
        raise error(429, "TooManyRequests", TOO_MANY_REQUESTS_MESSAGE, {"causes": [{
            "reason": "DisruptionBudget",
            "message": "The disruption budget %s needs %d healthy pods and has %d currently" % (budget["metadata"]["name"], desired, healthy)}]})
