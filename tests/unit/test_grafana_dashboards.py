"""The Grafana dashboards of deploy/grafana: the committed JSON (and the panel list in docs/operations.md) is what
deploy/grafana/generate.py writes, and every query reads only series and labels the daemons' code exports or the
recording rules define."""

import glob
import json
import os

from deploy.grafana import generate
from scripts.metrics_reference import exported_series
from tests.unit.test_prometheus_rules import SCRAPE_LABELS, SCRAPE_SERIES, recorded, rules, selectors


def test_committed_dashboards_are_the_generators_output():
    assert generate.main(["--check"]) == 0, "run: python deploy/grafana/generate.py"
    committed = {os.path.basename(path)[:-len(".json")] for path in glob.glob(os.path.join(generate.HERE, "*.json"))}
    assert committed == set(generate.DASHBOARDS), "a JSON file the generator does not write (or one missing)"


def test_dashboards_are_grafana_json():
    for uid in generate.DASHBOARDS:
        with open(generate.path_of(uid), encoding="utf-8") as handle:
            dashboard = json.load(handle)
        assert dashboard["uid"] == uid and dashboard["title"].startswith("Katalyst / ")
        panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
        assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"]), "panel ids must be unique"
        assert len({panel["title"] for panel in panels}) == len(panels), uid
        for panel in panels:
            assert panel["targets"] and all(target["expr"] and target["datasource"] == "${datasource}" for target in panel["targets"]), panel["title"]
        assert {variable["name"] for variable in dashboard["templating"]["list"]} == {"datasource", "instance"}


def test_every_panel_reads_series_and_labels_the_daemons_export():
    known = dict(exported_series(), **SCRAPE_SERIES)
    records = recorded()
    unknown = []
    for uid, title, expr in generate.queries():
        for name, labels in selectors(expr):
            if name in records:
                continue
            if name not in known:
                unknown.append("%s / %s: series %s" % (uid, title, name))
            elif labels - known[name] - SCRAPE_LABELS:
                unknown.append("%s / %s: %s has no label %s" % (uid, title, name, sorted(labels - known[name] - SCRAPE_LABELS)))
    assert not unknown, unknown


def test_every_exported_metric_is_on_a_dashboard():
    """A metric no panel shows is one nobody watches: every metric the code declares is read by a panel (itself or through a recording rule)."""
    record_exprs = {rule["record"]: str(rule["expr"]) for rule in rules() if "record" in rule}
    read = set()
    for _uid, _title, expr in generate.queries():
        for name, _labels in selectors(expr):
            read |= {name} | {inner for inner, _inner_labels in selectors(record_exprs.get(name, ""))}
    families = {name[:-len("_bucket")] if name.endswith("_bucket") else name for name in read}
    missing = sorted(name for name in exported_series()
                     if not name.endswith(("_created", "_sum", "_count")) and (name[:-len("_bucket")] if name.endswith("_bucket") else name) not in families)
    assert not missing, missing
