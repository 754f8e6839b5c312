"""The metrics reference, generated from the code: every prometheus_client metric constructed under plugins/module_utils
(name, type, labels, help, daemon), read from the source with `ast` so the table cannot drift from what /metrics shows.
A metric is a prometheus_client.<Type>("name", "help", [labels]) call, or a row of a NAME_METRICS table (see agent.METRICS).

    python scripts/metrics_reference.py            # writes docs/metrics.md
    python scripts/metrics_reference.py --check    # exit 1 if docs/metrics.md is stale
"""

import argparse
import ast
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = os.path.join(ROOT, "plugins", "module_utils")
DOC = os.path.join(ROOT, "docs", "metrics.md")
# the suffixes prometheus_client exposes for each metric type (a Counter's name loses a trailing "_total" first)
SUFFIXES = {"Counter": ("_total", "_created"), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count", "_created"),
            "Summary": ("", "_sum", "_count", "_created"), "Info": ("_info",), "Enum": ("",)}
ALL_DAEMONS = "all daemons"
# which daemon serves the metrics a module declares; a new module with metrics must be added here (scan() refuses otherwise)
DAEMON_OF_MODULE = {
    "service.py": ALL_DAEMONS, "token_renewal.py": ALL_DAEMONS,
    "agent.py": "katalyst-agent", "agent_eviction.py": "katalyst-agent", "agent_tunables.py": "katalyst-agent",
    "controller.py": "katalyst-controller", "tide_controller.py": "katalyst-controller",
    "overcommit_controller.py": "katalyst-controller", "cnr_controller.py": "katalyst-controller",
    "webhook.py": "katalyst-webhook", "extender.py": "katalyst-scheduler-extender",
}
# service.http_metrics() is called by the two HTTP servers only
DAEMON_OF_METRIC = {"katalyst_http_requests_total": "katalyst-webhook, katalyst-scheduler-extender",
                    "katalyst_http_request_duration_seconds": "katalyst-webhook, katalyst-scheduler-extender"}


def _constant(node):
    return node.value if isinstance(node, ast.Constant) else None


def _text(node):
    """A literal string, implicit concatenation included ("a " "b" is one Constant in the ast)."""
    return _constant(node) if isinstance(_constant(node), str) else None


def _argument(node, position, keyword):
    if len(node.args) > position:
        return node.args[position]
    return next((kw.value for kw in node.keywords if kw.arg == keyword), None)


def _declarations(tree, filename):
    """(type, name node, documentation node, labelnames node, line) of each metric in one module: a prometheus_client.<Type>(...) call, or a
    row (key, "<Type>", name, help, labels) of a table assigned to a NAME_METRICS constant that a loop registers."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SUFFIXES
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "prometheus_client"):
            yield node.func.attr, _argument(node, 0, "name"), _argument(node, 1, "documentation"), _argument(node, 2, "labelnames"), node.lineno
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
              and node.targets[0].id.endswith("METRICS") and isinstance(node.value, (ast.List, ast.Tuple))):
            for row in node.value.elts:
                if not (isinstance(row, ast.Tuple) and len(row.elts) == 5 and _text(row.elts[1]) in SUFFIXES):
                    raise ValueError("%s:%d: a %s row is not (key, type, name, help, labels)" % (filename, row.lineno, node.targets[0].id))
                yield _text(row.elts[1]), row.elts[2], row.elts[3], row.elts[4], row.lineno


def scan():
    """One dict per metric (name as declared, type, labels, help, daemon, file), sorted by name."""
    metrics = []
    for path in sorted(glob.glob(os.path.join(CODE, "**", "*.py"), recursive=True)):
        filename = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for kind, name_node, documentation, labelnames, lineno in _declarations(tree, filename):
            name = _text(name_node)
            if name is None:
                raise ValueError("%s:%d: a metric whose name is not a literal" % (filename, lineno))
            if name not in DAEMON_OF_METRIC and os.path.basename(path) not in DAEMON_OF_MODULE:
                raise ValueError("%s declares metrics but DAEMON_OF_MODULE does not say which daemon serves them" % filename)
            labels = [_constant(item) for item in labelnames.elts] if isinstance(labelnames, (ast.List, ast.Tuple)) else []
            metrics.append({"name": name, "type": kind, "labels": labels, "help": _text(documentation) or "",
                            "daemon": DAEMON_OF_METRIC.get(name) or DAEMON_OF_MODULE[os.path.basename(path)], "file": filename})
    return sorted(metrics, key=lambda metric: metric["name"])


def series_names(metric):
    """The series names /metrics shows for one declared metric."""
    name = metric["name"]
    if metric["type"] == "Counter" and name.endswith("_total"):
        name = name[:-len("_total")]
    return [name + suffix for suffix in SUFFIXES[metric["type"]]]


def exported_series():
    """{series name: label names} of every metric, as /metrics shows them (a histogram's _bucket has "le" too)."""
    series = {}
    for metric in scan():
        for name in series_names(metric):
            series[name] = set(metric["labels"]) | ({"le"} if name.endswith("_bucket") and metric["type"] == "Histogram" else set())
    return series


def render():
    lines = ["# Metrics reference", "",
             "<!-- generated by scripts/metrics_reference.py from the prometheus_client metrics under plugins/module_utils; do not edit -->", "",
             "Every daemon serves these on `GET /metrics` (Prometheus text format). Counters show as `<name>_total` (and `_created`),",
             "histograms as `_bucket`/`_sum`/`_count`. The dashboards (`deploy/grafana/`) and rules (`deploy/prometheus/katalyst-rules.yml`)",
             "read only these series; see [operations.md](operations.md#dashboards).", "",
             "| metric | type | labels | daemon | help | defined in |", "|---|---|---|---|---|---|"]
    for metric in scan():
        shown = series_names(metric)[0] if metric["type"] == "Counter" else metric["name"]
        labels = ", ".join("`%s`" % label for label in metric["labels"]) or "-"
        row = (shown, metric["type"].lower(), labels, metric["daemon"], metric["help"].replace("|", "\\|"), metric["file"])
        lines.append("| `%s` | %s | %s | %s | %s | `%s` |" % row)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if %s is not what the code generates" % os.path.relpath(DOC, ROOT))
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        with open(DOC, encoding="utf-8") as handle:
            if handle.read() != text:
                print("%s is stale: run scripts/metrics_reference.py" % os.path.relpath(DOC, ROOT), file=sys.stderr)
                return 1
        return 0
    with open(DOC, "w", encoding="utf-8") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
