# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The Plan: what every engine function returns and every module or daemon applies.

An engine decides (pure function: dicts in, Plan out); a driver applies the Plan with an *applier*,
a callable that performs one Change. Check mode is ``apply(dry_run=True)``; ``--diff`` is
``plan.diff()``. If a change fails, the changes already made are undone in reverse order (when
the applier can undo them), so nothing is left half-applied.
"""

from __future__ import annotations

import copy


class Change:
    """One intended change of one target.

    ``kind`` says which applier handles it (``file``, ``sysctl``, ``api``, ``bpf_map``, ...),
    ``target`` names the thing (a path, a sysctl key, ``Node/n1``), ``action`` is ``set``,
    ``create``, ``delete`` or ``patch``; ``before``/``after`` are the values (``None`` for absent).
    """

    __slots__ = ("kind", "target", "action", "before", "after", "reason", "data")

    def __init__(self, kind, target, action, before=None, after=None, reason="", data=None):
        self.kind = kind
        self.target = target
        self.action = action
        self.before = before
        self.after = after
        self.reason = reason
        self.data = data if data is not None else {}

    def inverse(self):
        action = {"create": "delete", "delete": "create"}.get(self.action, self.action)
        return Change(self.kind, self.target, action, self.after, self.before, "rollback: " + self.reason, self.data)

    def as_dict(self):
        out = {"kind": self.kind, "target": self.target, "action": self.action,
               "before": self.before, "after": self.after}
        if self.reason:
            out["reason"] = self.reason
        return out

    def __eq__(self, other):
        return isinstance(other, Change) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return "Change(%s %s %s: %r -> %r)" % (self.kind, self.action, self.target, self.before, self.after)


class PlanError(Exception):
    """Applying a plan failed; ``applied`` lists what was done, ``rolled_back`` what was undone."""

    def __init__(self, message, failed=None, applied=None, rolled_back=None):
        super().__init__(message)
        self.failed = failed
        self.applied = applied or []
        self.rolled_back = rolled_back or []


class Plan:
    """An ordered list of Changes plus the warnings the engine wants the user to see."""

    def __init__(self, changes=None, warnings=None):
        self.changes = list(changes or [])
        self.warnings = list(warnings or [])

    def add(self, kind, target, action, before=None, after=None, reason="", data=None):
        change = Change(kind, target, action, before, after, reason, data)
        self.changes.append(change)
        return change

    def set_if_different(self, kind, target, before, after, reason="", data=None):
        """Add a ``set`` change only when ``before != after`` (write only what differs)."""
        if before == after:
            return None
        return self.add(kind, target, "set", before, after, reason, data)

    def extend(self, other):
        self.changes.extend(other.changes)
        self.warnings.extend(other.warnings)
        return self

    def warn(self, message):
        self.warnings.append(message)

    @property
    def changed(self):
        return bool(self.changes)

    def __iter__(self):
        return iter(self.changes)

    def __len__(self):
        return len(self.changes)

    def __bool__(self):
        return bool(self.changes)

    def diff(self, header=""):
        """An Ansible ``diff`` dict: targets keyed before/after (absent targets omitted)."""
        before, after = {}, {}
        for change in self.changes:
            key = "%s:%s" % (change.kind, change.target)
            if change.before is not None:
                before[key] = copy.deepcopy(change.before)
            if change.after is not None:
                after[key] = copy.deepcopy(change.after)
        out = {"before": before, "after": after}
        if header:
            out["before_header"] = header
            out["after_header"] = header
        return out

    def as_list(self):
        return [change.as_dict() for change in self.changes]

    def module_result(self, diff, **extra):
        """What an Ansible module returns for this plan: ``changed``, ``changes`` and ``extra``, with the ``diff`` when asked."""
        result = dict(extra, changed=self.changed, changes=self.as_list())
        if diff:
            result["diff"] = self.diff()
        return result

    def apply(self, applier, dry_run=False, rollback=True):
        """Apply every change with ``applier(change)``; returns the list of applied changes.

        On failure, already-applied changes are undone in reverse order with ``applier(inverse)``
        (best effort) and a PlanError is raised naming the failing change.
        """
        if dry_run:
            return list(self.changes)
        applied = []
        for change in self.changes:
            try:
                applier(change)
            except Exception as exc:  # pylint: disable=broad-except
                undone = []
                if rollback:
                    for done in reversed(applied):
                        try:
                            applier(done.inverse())
                            undone.append(done)
                        except Exception:  # pylint: disable=broad-except
                            pass
                raise PlanError("%s %s %s failed: %s" % (change.kind, change.action, change.target, exc),
                                failed=change, applied=applied, rolled_back=undone)
            applied.append(change)
        return applied
