"""Print the MutatingWebhookConfiguration of katalyst-webhook as JSON, built by the daemon's own code.

Usage: webhook_configuration.py MODULE_UTILS_DIR URL TIMEOUT_SECONDS < CA_BUNDLE_PEM
MODULE_UTILS_DIR is the collection's plugins/module_utils (…/ansible_collections/katalyst/colocation/plugins/module_utils).
"""
import json
import os
import sys


def main(module_utils, url, timeout_seconds):
    top = os.path.abspath(os.path.join(module_utils, *[os.pardir] * 5))     # the directory holding ansible_collections/
    sys.path.insert(0, top)
    from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.webhook import webhook_configuration  # pylint: disable=import-outside-toplevel
    print(json.dumps(webhook_configuration(url, sys.stdin.read(), timeout_seconds=int(timeout_seconds)), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
