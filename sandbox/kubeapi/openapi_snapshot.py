"""Take the built-in kinds' OpenAPI v3 schemas from a real kube-apiserver into ``openapi_builtin.json.gz``.

    python -m sandbox.kubeapi.openapi_snapshot --kubeconfig /tmp/cluster/admin.kubeconfig

The emulator serves ``/openapi/v2`` and ``/openapi/v3`` from this snapshot (plus the CRDs it holds), so
``kubectl apply`` validation, ``kubectl explain`` and strict field validation see the real release's types
instead of hand-written approximations. Only the kinds the emulator serves are kept, with every schema they
reference; re-run after bumping the pinned Kubernetes release (sandbox/kube/).
"""

import argparse
import gzip
import json
import os
import re
import sys

from sandbox.kubeapi.resources import builtin_types

SNAPSHOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi_builtin.json.gz")
# what every group-version document carries besides its kinds: bodies of PATCH and DELETE, and errors
COMMON_SCHEMAS = ("io.k8s.apimachinery.pkg.apis.meta.v1.Patch", "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
                  "io.k8s.apimachinery.pkg.apis.meta.v1.Status")
REF = re.compile(r'"#/components/schemas/([^"]+)"')


def gv_path(group, version):
    return "api/%s" % version if not group else "apis/%s/%s" % (group, version)


def schema_kinds(schema):
    return {(gvk.get("group", ""), gvk.get("version"), gvk.get("kind")) for gvk in schema.get("x-kubernetes-group-version-kind") or []}


def closure(schemas, roots):
    """``roots`` and every schema they reference, transitively."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(REF.findall(json.dumps(schemas[name])))
    return seen


def snapshot(fetch):
    """The snapshot dict; ``fetch(path)`` returns the decoded JSON document at ``path`` of a real server."""
    wanted = {}
    for rtype in builtin_types():
        wanted.setdefault((rtype.group, rtype.version), set()).update({rtype.kind, rtype.kind + "List"})
    result = {"schemas": {}, "groupVersions": {}}
    for (group, version), kinds in sorted(wanted.items()):
        schemas = fetch("/openapi/v3/" + gv_path(group, version))["components"]["schemas"]
        roots = [name for name, schema in schemas.items()
                 if any(g == group and v == version and k in kinds for g, v, k in schema_kinds(schema))]
        names = closure(schemas, roots + [name for name in COMMON_SCHEMAS if name in schemas])
        result["groupVersions"][gv_path(group, version)] = sorted(names)
        result["schemas"].update({name: schemas[name] for name in names})
    version = fetch("/version")
    result["source"] = "kube-apiserver %s" % version.get("gitVersion")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sandbox.kubeapi.openapi_snapshot", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--kubeconfig", required=True, help="admin kubeconfig of a real cluster (sandbox/kube/cluster.py up)")
    parser.add_argument("--out", default=SNAPSHOT)
    args = parser.parse_args(argv)
    import kubernetes  # pylint: disable=import-outside-toplevel
    client = kubernetes.config.new_client_from_config(args.kubeconfig)

    def fetch(path):
        response = client.call_api("GET", client.configuration.host + path, header_params={"Accept": "application/json"})
        response.read()
        return json.loads(response.data)

    data = snapshot(fetch)
    with gzip.open(args.out, "wt") as handle:
        json.dump(data, handle, sort_keys=True, separators=(",", ":"))
    print("%s: %d schemas from %s" % (args.out, len(data["schemas"]), data["source"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
