"""The Prometheus rules of deploy/prometheus/katalyst-rules.yml: valid and unit-tested by the real promtool, every alert with a
case that fires it and one that does not, and every metric and label they read exported by the daemons' code."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from scripts.metrics_reference import exported_series  # one scan of the code for the rules, the dashboards and docs/metrics.md

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "deploy", "prometheus", "katalyst-rules.yml")
TESTS = os.path.join(ROOT, "tests", "prometheus", "katalyst-rules.test.yml")
OPERATIONS = os.path.join(ROOT, "docs", "operations.md")

# what Prometheus itself adds to every scraped target, and what the scrape adds to every series
SCRAPE_SERIES = {"up": set()}
SCRAPE_LABELS = {"job", "instance"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "inf", "nan"}
IDENTIFIER = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def load(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def rules():
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts():
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def recorded():
    return {rule["record"] for rule in rules() if "record" in rule}


def selectors(expr):
    """(metric name, label names matched) of each series selector in a PromQL expression."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                        # string literals
    found = []
    for match in re.finditer(r"(%s)?\s*\{([^}]*)\}" % IDENTIFIER, text):
        labels = set(re.findall(r"(%s)\s*(?:=~|!~|!=|=)" % IDENTIFIER, match.group(2)))
        found.append((match.group(1), labels))
    text = re.sub(r"\{[^}]*\}", " ", text)                                  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # grouping labels
    text = re.sub(r"\[[^\]]*\]", " ", text)                                 # ranges
    for match in re.finditer(r"(?<![\w:.])(%s)(?![\w:])(?!\s*\()" % IDENTIFIER, text):
        name = match.group(1)
        if name.lower() not in KEYWORDS and not re.match(r"^\d", name):
            found.append((name, set()))
    return [(name, labels) for name, labels in found if name]


def test_selectors_parse_names_and_labels():
    expr = 'sum by (job, loop) (rate(a_total{outcome="x{y}", daemon=~"k.+"}[5m])) / on (job) b > 0.5 unless c:rec{loop!="z"}'
    got = sorted((name, sorted(labels)) for name, labels in selectors(expr))
    assert got == [("a_total", []), ("a_total", ["daemon", "outcome"]), ("b", []), ("c:rec", []), ("c:rec", ["loop"])]


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`, listed in .ci/apt-packages.txt)")
    check = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: %d rules found" % len(rules()) in check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", TESTS], capture_output=True, text=True, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout + unit.stderr


def test_every_alert_has_a_firing_and_a_silent_case():
    cases = {name: {"fires": 0, "silent": 0} for name in alerts()}
    for group in load(TESTS)["tests"]:
        assert group.get("input_series"), "a test group without input series proves nothing"
        for case in group.get("alert_rule_test") or []:
            assert case["alertname"] in cases, "a test of an alert the rule file does not have: %s" % case["alertname"]
            cases[case["alertname"]]["fires" if case.get("exp_alerts") else "silent"] += 1
    missing = ["%s has no %s case" % (name, kind) for name, count in sorted(cases.items()) for kind in ("fires", "silent") if not count[kind]]
    assert not missing, missing


def test_every_rule_is_labelled_and_annotated():
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name


def test_every_runbook_is_a_section_of_the_operations_guide():
    with open(OPERATIONS, encoding="utf-8") as handle:
        anchors = {re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                   for line in handle if line.startswith("## ")}
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook"]
        assert url.split("#")[0].endswith("/docs/operations.md"), (name, url)
        assert url.split("#")[1] in anchors, (name, url)


def test_rules_read_only_series_and_labels_the_daemons_export():
    series = exported_series()
    assert "katalyst_loop_runs_total" in series and "katalyst_oom_priority_inversions_total" in series    # the scan works
    known = dict(series, **SCRAPE_SERIES)
    records = recorded()
    unknown = []
    for rule in rules():
        for name, labels in selectors(str(rule["expr"])):
            if name in records:
                continue
            if name not in known:
                unknown.append("%s: series %s" % (rule.get("alert") or rule.get("record"), name))
            elif labels - known[name] - SCRAPE_LABELS:
                unknown.append("%s: %s has no label %s" % (rule.get("alert") or rule.get("record"), name, sorted(labels - known[name] - SCRAPE_LABELS)))
    assert not unknown, unknown


def test_unit_test_input_is_series_the_daemons_export():
    known = dict(exported_series(), **SCRAPE_SERIES)
    unknown = []
    for group in load(TESTS)["tests"]:
        for item in group["input_series"]:
            name, labels = selectors(item["series"])[0]
            if name not in known:
                unknown.append(item["series"])
            elif labels - known[name] - SCRAPE_LABELS:
                unknown.append("%s: no label %s" % (item["series"], sorted(labels - known[name] - SCRAPE_LABELS)))
    assert not unknown, unknown
