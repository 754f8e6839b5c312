"""docs/metrics.md is generated from the code by scripts/metrics_reference.py: it must be up to date and list every metric."""

import os
import re
import subprocess
import sys

from scripts import metrics_reference

TYPES = "Counter|Gauge|Histogram|Summary|Info|Enum"


def test_metrics_reference_is_up_to_date():
    check = subprocess.run([sys.executable, os.path.join(metrics_reference.ROOT, "scripts", "metrics_reference.py"), "--check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_scan_finds_every_metric_the_code_declares():
    """The ast scan against a plain grep: a metric declared some other way would be missing from the doc and the checks."""
    declared = set()
    for directory, _dirs, files in os.walk(metrics_reference.CODE):
        for filename in files:
            if filename.endswith(".py"):
                with open(os.path.join(directory, filename), encoding="utf-8") as handle:
                    # a call, or a table row ("key", "Type", "name", ...)
                    declared |= set(re.findall(r'(?:prometheus_client\.(?:%s)\(|\(\s*"\w+",\s*"(?:%s)",)\s*"(\w+)"' % (TYPES, TYPES), handle.read()))
    metrics = metrics_reference.scan()
    assert declared and {metric["name"] for metric in metrics} == declared
    for metric in metrics:
        assert metric["help"] and metric["daemon"], metric
    with open(metrics_reference.DOC, encoding="utf-8") as handle:
        doc = handle.read()
    for metric in metrics:
        assert "`%s`" % (metrics_reference.series_names(metric)[0] if metric["type"] == "Counter" else metric["name"]) in doc, metric["name"]
