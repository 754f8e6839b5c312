# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""Kubernetes label and field selectors.

Used by the API emulator (``labelSelector`` / ``fieldSelector`` on list and watch), the tide engine
(``labels.SelectorFromSet``), placement (``metav1.LabelSelector``) and admission (objectSelector).
"""

from __future__ import annotations

import re

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nkey>{key})|(?P<key>{key})\s*(?:(?P<op>==|=|!=)\s*(?P<value>{value})"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)|(?P<exists>)))\s*$".format(key=_KEY, value=_VALUE))


class Requirement:
    __slots__ = ("key", "operator", "values")

    def __init__(self, key, operator, values=()):
        self.key = key
        self.operator = operator
        self.values = tuple(values)

    def matches(self, labels):
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and value in self.values
        if self.operator == "NotIn":
            return not present or value not in self.values
        if self.operator in ("Gt", "Lt"):
            try:
                number, bound = int(value), int(self.values[0])
            except (TypeError, ValueError, IndexError):
                return False
            return number > bound if self.operator == "Gt" else number < bound
        raise ValueError("unknown selector operator %r" % self.operator)

    def __str__(self):
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return "!" + self.key
        if self.operator == "In" and len(self.values) == 1:
            return "%s=%s" % (self.key, self.values[0])
        if self.operator == "NotIn" and len(self.values) == 1:
            return "%s!=%s" % (self.key, self.values[0])
        return "%s %s (%s)" % (self.key, self.operator.lower(), ",".join(sorted(self.values)))


class LabelSelector:
    """A conjunction of requirements; ``nothing=True`` is the selector that matches no object."""

    def __init__(self, requirements=(), nothing=False):
        self.requirements = tuple(requirements)
        self.nothing = nothing

    def matches(self, labels):
        if self.nothing:
            return False
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)

    def empty(self):
        return not self.nothing and not self.requirements

    def __str__(self):
        return ",".join(str(r) for r in self.requirements)


def _split_top_level(text):
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_label_selector(text):
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h``; ValueError naming the bad part."""
    if text is None or not text.strip():
        return LabelSelector()
    requirements = []
    for part in _split_top_level(text):
        match = _REQUIREMENT.match(part)
        if not match:
            raise ValueError("unable to parse requirement %r in label selector %r" % (part.strip(), text))
        if match.group("not"):
            requirements.append(Requirement(match.group("nkey"), "DoesNotExist"))
        elif match.group("op"):
            operator = "NotIn" if match.group("op") == "!=" else "In"
            requirements.append(Requirement(match.group("key"), operator, [match.group("value")]))
        elif match.group("setop"):
            values = [v.strip() for v in match.group("values").split(",") if v.strip()]
            if not values:
                raise ValueError("%r: a set needs at least one value in label selector %r" % (part.strip(), text))
            for value in values:
                if not re.match("^%s$" % _VALUE, value):
                    raise ValueError("invalid value %r in label selector %r" % (value, text))
            requirements.append(Requirement(match.group("key"), "In" if match.group("setop") == "in" else "NotIn", values))
        else:
            requirements.append(Requirement(match.group("key"), "Exists"))
    return LabelSelector(requirements)


def selector_from_set(mapping):
    """``labels.SelectorFromSet``: every pair must match; None or {} selects everything."""
    return LabelSelector([Requirement(key, "In", [value]) for key, value in sorted((mapping or {}).items())])


_EXPRESSION_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def label_selector_from_dict(selector):
    """``metav1.LabelSelectorAsSelector``: None matches nothing, {} matches everything.

    ``matchLabels`` pairs and ``matchExpressions`` are AND-ed. ValueError on a malformed selector.
    """
    if selector is None:
        return LabelSelector(nothing=True)
    if not isinstance(selector, dict):
        raise ValueError("a label selector must be an object, got %r" % (selector,))
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise ValueError("unknown label selector field(s): %s" % ", ".join(sorted(unknown)))
    requirements = []
    match_labels = selector.get("matchLabels") or {}
    if not isinstance(match_labels, dict):
        raise ValueError("matchLabels must be a map of strings, got %r" % (match_labels,))
    for key, value in sorted(match_labels.items()):
        if not isinstance(value, str):
            raise ValueError("matchLabels[%r] must be a string, got %r" % (key, value))
        requirements.append(Requirement(key, "In", [value]))
    for index, expression in enumerate(selector.get("matchExpressions") or []):
        if not isinstance(expression, dict):
            raise ValueError("matchExpressions[%d] must be an object" % index)
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if not key or operator not in _EXPRESSION_OPERATORS:
            raise ValueError("matchExpressions[%d]: key and an operator of %s are required, got %r"
                             % (index, "/".join(_EXPRESSION_OPERATORS), expression))
        if operator in ("In", "NotIn") and not values:
            raise ValueError("matchExpressions[%d]: operator %s needs values" % (index, operator))
        if operator in ("Exists", "DoesNotExist") and values:
            raise ValueError("matchExpressions[%d]: operator %s takes no values" % (index, operator))
        requirements.append(Requirement(key, operator, values))
    return LabelSelector(requirements)


def node_selector_requirement(expression):
    """A NodeSelectorRequirement (operators In/NotIn/Exists/DoesNotExist/Gt/Lt)."""
    operator = expression.get("operator")
    if operator not in _EXPRESSION_OPERATORS + ("Gt", "Lt"):
        raise ValueError("unknown node selector operator %r" % operator)
    return Requirement(expression.get("key", ""), operator, expression.get("values") or [])


# -- field selectors ---------------------------------------------------------------------------
_FIELD_TERM = re.compile(r"^\s*(?P<path>[A-Za-z0-9_.]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^,]*?)\s*$")


def field_value(obj, path):
    """The string value at a dotted path; a missing field is ``""`` (as the API server compares)."""
    current = obj
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return ""
        current = current[part]
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


class FieldSelector:
    def __init__(self, terms=()):
        self.terms = tuple(terms)

    def matches(self, obj):
        for path, operator, value in self.terms:
            equal = field_value(obj, path) == value
            if equal != (operator != "!="):
                return False
        return True

    def fields(self):
        return [term[0] for term in self.terms]

    def __str__(self):
        return ",".join("%s%s%s" % (p, "!=" if o == "!=" else "=", v) for p, o, v in self.terms)


def parse_field_selector(text):
    """Parse ``spec.nodeName=n1,status.phase!=Failed``; ValueError naming the bad term."""
    if text is None or not text.strip():
        return FieldSelector()
    terms = []
    for part in text.split(","):
        match = _FIELD_TERM.match(part)
        if not match:
            raise ValueError("invalid field selector term %r in %r" % (part, text))
        terms.append((match.group("path"), match.group("op"), match.group("value")))
    return FieldSelector(terms)
