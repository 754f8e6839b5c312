# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE)
"""The authentication options every module that talks to the Kubernetes API takes (kubernetes.core's names)."""

from __future__ import annotations

import copy

AUTH_ARG_SPEC = {
    "kubeconfig": {"type": "raw"},
    "context": {"type": "str"},
    "host": {"type": "str"},
    "api_key": {"type": "str", "no_log": True},
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "validate_certs": {"type": "bool", "aliases": ["verify_ssl"]},
    "ca_cert": {"type": "path", "aliases": ["ssl_ca_cert"]},
    "client_cert": {"type": "path", "aliases": ["cert_file"]},
    "client_key": {"type": "path", "aliases": ["key_file"], "no_log": False},
    "proxy": {"type": "str"},
    "no_proxy": {"type": "str"},
    "proxy_headers": {"type": "dict"},
    "impersonate_user": {"type": "str"},
    "impersonate_groups": {"type": "list", "elements": "str"},
}


def auth_argument_spec():
    return copy.deepcopy(AUTH_ARG_SPEC)


def auth_params(params):
    return {name: params.get(name) for name in AUTH_ARG_SPEC}
