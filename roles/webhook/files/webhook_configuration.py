"""Print the objects that register katalyst-webhook as a JSON list, built by the daemon's own code: the
MutatingWebhookConfiguration and, when it points at a Service, that selectorless Service and its EndpointSlices.

Usage: webhook_configuration.py MODULE_UTILS_DIR URL TIMEOUT_SECONDS [NAMESPACE SERVICE PORT TARGET_PORT ADDRESS...] < CA_BUNDLE_PEM
MODULE_UTILS_DIR is the collection's plugins/module_utils (…/ansible_collections/katalyst/colocation/plugins/module_utils).
An empty URL registers the Service NAMESPACE/SERVICE (port PORT) routed to TARGET_PORT on every ADDRESS.
"""
import json
import os
import sys


def main(module_utils, url, timeout_seconds, *service_args):
    top = os.path.abspath(os.path.join(module_utils, *[os.pardir] * 5))     # the directory holding ansible_collections/
    sys.path.insert(0, top)
    from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import webhook  # pylint: disable=import-outside-toplevel
    objects = []
    service = None
    if not url:
        namespace, name, port, target_port = service_args[:4]
        addresses = list(service_args[4:])
        if not addresses:
            sys.stderr.write("webhook_configuration.py: no address to route the service to\n")
            return 2
        service = {"namespace": namespace, "name": name, "port": int(port)}
        objects = webhook.webhook_service(namespace, name, int(port), int(target_port), addresses)
    objects.append(webhook.webhook_configuration(url, sys.stdin.read(), timeout_seconds=int(timeout_seconds), service=service))
    print(json.dumps(objects, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
