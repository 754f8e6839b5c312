# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""What the modules that converge one node's kernel files (qos_cgroups, sysctls) share: the state and sysroot options,
and the run from the plan to the module's result or failure."""

from __future__ import annotations

import copy

from .reconcile import PlanError
from .sysfs import SysFS, SysFSError

NODE_ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "sysroot": {"type": "path", "default": "/"},
}


def node_argument_spec(**options):
    """state and sysroot, then the module's own ``options``."""
    return dict(copy.deepcopy(NODE_ARGUMENT_SPEC), **options)


def converge_node(module, converge, changes_on_failure=False):
    """End ``module`` with what ``converge(fs)`` returns, ``(plan, extra result)``, fs being the module's sysroot.

    A bad value or an unreadable kernel file fails the module with its message; a failed write fails it saying how
    many changes were undone (with ``changes_on_failure``, listing those made). Otherwise the plan's warnings are
    shown and the result is ``plan.module_result`` with ``extra``.
    """
    fs = SysFS(module.params["sysroot"])
    try:
        plan, extra = converge(fs)
    except (SysFSError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    except PlanError as exc:
        failure = {"changes": [change.as_dict() for change in exc.applied]} if changes_on_failure else {}
        module.fail_json(msg="%s; %d change(s) already made were undone" % (exc, len(exc.rolled_back)), **failure)
    for warning in plan.warnings:
        module.warn(warning)
    module.exit_json(**plan.module_result(module._diff, **extra))
