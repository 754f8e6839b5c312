#!/usr/bin/python
# Copyright: katalyst.colocation contributors
# Apache License 2.0 (see LICENSE); modules are also offered under the
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: service_account_kubeconfig
short_description: Write a kubeconfig with a bound, expiring ServiceAccount token (TokenRequest API) for a daemon
version_added: 0.2.0
description:
  - Requests a bound token of a ServiceAccount through the TokenRequest API (C(serviceaccounts/token)) and writes it to
    O(token_file) (mode C(0600)), and a kubeconfig whose user reads that file (C(tokenFile)) to O(dest) (mode C(0600)).
    Missing directories are created with mode C(0700).
  - The kubeconfig names the API server of this module's own connection (or O(server)) and embeds its CA certificate
    (or O(server_ca_cert)), so it can be copied to another host as it is.
  - Idempotent. The token in O(token_file) is kept, and nothing is written, while it is a token of the same
    ServiceAccount (same namespace, name and uid; a ServiceAccount deleted and created again gets a new token), for
    the same server and O(audiences), and is valid for more than O(refresh_before_seconds). Its expiry is read from the
    token's C(exp) claim (the JWT is parsed, not verified). Run it from a timer (or every play) to refresh the token
    before it expires.
  - A daemon built on this collection's client (C(katalyst-agent), C(katalyst-controller),
    C(katalyst-scheduler-extender)) re-reads the token file when it changes, so a refreshed token is used from its next
    request on, without a restart. C(kubectl) and client-go programs re-read a C(tokenFile) too.
  - Why a TokenRequest token and not a client certificate issued through a CertificateSigningRequest. The token is bound
    to the ServiceAccount and an audience, expires on its own, is revoked by deleting the ServiceAccount, needs no private
    key on the host and no signer or approver, and works on any cluster. A CSR client certificate needs a signer that
    issues client certificates for identities other than nodes and an approver (nothing approves
    C(kubernetes.io/kube-apiserver-client) requests by default), a private key to generate and keep on the host, and it
    cannot be revoked before it expires.
  - The token is never returned, logged or shown; C(--diff) shows server, user, namespace, ServiceAccount and expiry.
options:
  service_account:
    description:
      - Name of the ServiceAccount (it must exist; M(katalyst.colocation.rbac) creates those of the katalyst daemons).
    type: str
    required: true
  namespace:
    description:
      - Namespace of the ServiceAccount.
    type: str
    default: katalyst-system
  dest:
    description:
      - Path of the kubeconfig to write.
    type: path
    required: true
  token_file:
    description:
      - Path of the token file the kubeconfig reads (C(tokenFile), written as an absolute path). Defaults to O(dest) with
        C(.token) appended.
    type: path
  kubeconfig_token_file:
    description:
      - The path the kubeconfig names as C(tokenFile), when the daemon reads the token at another path than
        O(token_file). A systemd service that gets the token with C(LoadCredential=) reads it under
        C(/run/credentials/<unit>/), and a credential issued here for another host (a node's agent) names the path it
        is copied to there. Defaults to O(token_file).
    type: path
  audiences:
    description:
      - Audiences of the token. Omitted means the API server's default audience (what the API server itself accepts).
    type: list
    elements: str
  expiration_seconds:
    description:
      - Requested lifetime of the token in seconds (C(spec.expirationSeconds)), at least V(600). The API server may issue
        a shorter one (C(--service-account-max-token-expiration)).
    type: int
    default: 86400
  refresh_before_seconds:
    description:
      - Request a new token when the current one expires within this many seconds. Omitted means when less than a third
        of the token's lifetime is left.
    type: int
  bound_node:
    description:
      - Bind the token to this Node (TokenRequest C(boundObjectRef) of kind C(Node), with the Node's uid). The API server
        then authenticates it with the node's name in the user's extra C(authentication.kubernetes.io/node-name), which
        the agent's node isolation policy (M(katalyst.colocation.rbac) O(katalyst.colocation.rbac#module:node_isolation))
        requires, and the token stops working when the Node object is deleted. Needs Kubernetes 1.32 or later (feature
        C(ServiceAccountTokenNodeBinding)).
      - Give each node's agent its own token, bound to its node. A token bound to another node (or a Node deleted and
        created again), or to none, is replaced; without O(bound_node), a node-bound token is replaced by an unbound one.
      - The Node must exist.
    type: str
  server:
    description:
      - API server URL to write into the kubeconfig, when the daemon reaches the API server at another address than this
        module's connection does. Defaults to the connection's server.
    type: str
  server_ca_cert:
    description:
      - CA certificate (PEM file) of the API server to embed in the kubeconfig. Defaults to the connection's CA.
    type: path
extends_documentation_fragment:
  - katalyst.colocation.auth
  - katalyst.colocation.attributes
attributes:
  check_mode:
    description: Reports whether it would request a token and write the files, and writes nothing (no token is requested).
  diff_mode:
    description: Shows the credential before and after (server, user, namespace, ServiceAccount, expiry), never the token.
  platform:
    support: full
    description: Runs against the Kubernetes API; writes files on the host it runs on.
    platforms: kubernetes, posix
notes:
  - The module's own credentials must be allowed to C(get) the ServiceAccount and C(create) its C(serviceaccounts/token)
    subresource, and C(get) the Node of O(bound_node) (the cluster admin is).
  - Existing directories are not changed; the module warns when the directory of a file it writes can be read by other
    users than its owner.
author:
  - katalyst.colocation developers (@katalyst-colocation)
"""

EXAMPLES = r"""
- name: The agent's own credential, refreshed when less than a third of its 24 hours is left
  katalyst.colocation.service_account_kubeconfig:
    kubeconfig: /etc/kubernetes/admin.conf
    service_account: katalyst-agent
    dest: /etc/katalyst/credentials/agent.kubeconfig

- name: The agent's credential on node worker-1, bound to its Node (what the node isolation policy requires)
  katalyst.colocation.service_account_kubeconfig:
    service_account: katalyst-agent
    bound_node: worker-1
    dest: /etc/katalyst/credentials/agent.kubeconfig

- name: A one-hour token for another audience, written where a timer refreshes it
  katalyst.colocation.service_account_kubeconfig:
    service_account: katalyst-controller
    namespace: katalyst-system
    dest: /etc/katalyst/credentials/controller.kubeconfig
    token_file: /etc/katalyst/credentials/controller.token
    audiences: [https://kubernetes.default.svc.cluster.local]
    expiration_seconds: 3600
    refresh_before_seconds: 1200
    server: https://api.example.com:6443
"""

RETURN = r"""
path:
  description: The kubeconfig written (or kept).
  returned: always
  type: str
  sample: /etc/katalyst/credentials/agent.kubeconfig
token_file:
  description: The token file the kubeconfig reads.
  returned: always
  type: str
  sample: /etc/katalyst/credentials/agent.kubeconfig.token
service_account:
  description: The ServiceAccount the token is for.
  returned: always
  type: str
  sample: katalyst-agent
namespace:
  description: Its namespace.
  returned: always
  type: str
  sample: katalyst-system
bound_node:
  description: The Node the token is bound to; null when it is bound to none.
  returned: always
  type: str
  sample: worker-1
user:
  description: The user name the API server sees.
  returned: always
  type: str
  sample: system:serviceaccount:katalyst-system:katalyst-agent
server:
  description: The API server URL in the kubeconfig.
  returned: always
  type: str
  sample: https://127.0.0.1:6443
expiration_timestamp:
  description:
    - When the token expires (RFC 3339, UTC). In check mode, when a new token would be requested, the requested expiry
      (the API server may shorten it).
  returned: always
  type: str
  sample: "2026-11-25T10:00:00Z"
refreshed:
  description: Whether a new token was (in check mode, would be) requested.
  returned: always
  type: bool
reason:
  description: Why a new token was (or would be) requested; null when the current token was kept.
  returned: always
  type: str
  sample: expires in 150s (refresh when 200s or less are left)
"""

import os
import stat
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.katalyst.colocation.plugins.module_utils import credentials, privatefiles, rbac
from ansible_collections.katalyst.colocation.plugins.module_utils.auth_spec import auth_argument_spec, auth_params
from ansible_collections.katalyst.colocation.plugins.module_utils.kube import ApiException, KubeClient, KubeError, require_kubernetes

try:
    import yaml
except ImportError:  # pragma: no cover - a dependency of the kubernetes package
    yaml = None


def read_text(path):
    """The file's text and permission bits, or (None, None) when it does not exist."""
    try:
        with open(path) as handle:
            return handle.read(), stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
    except FileNotFoundError:
        return None, None


def connection_target(module, kube):
    """(server URL, CA certificate bytes or None, skip TLS verification) for the kubeconfig."""
    configuration = kube.api_client.configuration
    server = (module.params["server"] or configuration.host or "").rstrip("/")
    if not server:
        module.fail_json(msg="no API server URL: set server, or give the module a connection (kubeconfig, host)")
    ca_path = module.params["server_ca_cert"] or (configuration.ssl_ca_cert if not module.params["server"] else None)
    ca_data = None
    if server.startswith("https://") and ca_path:
        try:
            with open(ca_path, "rb") as handle:
                ca_data = handle.read()
        except OSError as exc:
            module.fail_json(msg="cannot read the CA certificate %s: %s" % (ca_path, exc))
    insecure = server.startswith("https://") and not ca_data and not configuration.verify_ssl
    return server, ca_data, insecure


def current_credential(dest, token_path):
    """What ``dest`` and ``token_path`` hold: (kubeconfig text, its mode, server, token or None). The token is read
    from ``token_path``, not from the kubeconfig's ``tokenFile``, which may name the path a copy is read at."""
    text, mode = read_text(dest)
    try:
        kubeconfig = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        kubeconfig = None
    cluster = credentials.kubeconfig_user(kubeconfig)[0]
    token = read_text(token_path)[0]
    return text, mode, (cluster.get("server") or "").rstrip("/") or None, (token or "").strip() or None


def describe_token(server, token, path):
    """The --diff view of a token: who, where, until when; never the token."""
    if not token:
        return {}
    claims = credentials.jwt_claims(token) or {}
    namespace, name, _uid = credentials.token_identity(claims)
    return dict(credentials.describe(server, namespace, name, claims.get("exp")), path=path, node=(credentials.token_node(claims) or [None])[0])


def request_token(module, kube, name, namespace, node=None):
    """A new token of the ServiceAccount (TokenRequest API), bound to ``node`` ((name, uid) of a Node) when given:
    (token, expiry as a Unix time)."""
    from kubernetes import client  # pylint: disable=import-outside-toplevel
    body = credentials.token_request(module.params["expiration_seconds"], module.params["audiences"], node)
    try:
        answer = client.CoreV1Api(kube.api_client).create_namespaced_service_account_token(name, namespace, body)
    except ApiException as exc:
        module.fail_json(msg="TokenRequest for ServiceAccount %s/%s: %s (HTTP %s)" % (namespace, name, exc.reason, exc.status))
    token = answer.status.token
    module.no_log_values.add(token)
    expiry = (credentials.jwt_claims(token) or {}).get("exp")
    if expiry is None:
        expiry = answer.status.expiration_timestamp.timestamp()
    return token, int(expiry)


def main():
    argument_spec = auth_argument_spec()
    argument_spec.update(
        service_account={"type": "str", "required": True},
        namespace={"type": "str", "default": rbac.DEFAULT_NAMESPACE},
        dest={"type": "path", "required": True},
        token_file={"type": "path", "no_log": False},
        kubeconfig_token_file={"type": "path", "no_log": False},
        audiences={"type": "list", "elements": "str"},
        expiration_seconds={"type": "int", "default": 86400},
        refresh_before_seconds={"type": "int"},
        bound_node={"type": "str"},
        server={"type": "str"},
        server_ca_cert={"type": "path"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_kubernetes(module)
    if yaml is None:
        module.fail_json(msg="the yaml Python package (PyYAML) is required on the host running this module")
    params = module.params
    name, namespace = params["service_account"], params["namespace"]
    if params["expiration_seconds"] < credentials.MIN_EXPIRATION_SECONDS:
        module.fail_json(msg="expiration_seconds must be at least 600 (the API server refuses shorter tokens)")
    dest = os.path.abspath(params["dest"])
    token_path = os.path.abspath(params["token_file"] or dest + ".token")
    if token_path == dest:
        module.fail_json(msg="token_file must not be dest")
    named_token_path = params["kubeconfig_token_file"] or token_path
    if not os.path.isabs(named_token_path):
        module.fail_json(msg="kubeconfig_token_file must be an absolute path (the kubeconfig may be read from a copy elsewhere)")
    try:
        kube = KubeClient(auth_params(params))
        server, ca_data, insecure = connection_target(module, kube)
        account = kube.get("v1", "ServiceAccount", name, namespace)
        node_object = kube.get("v1", "Node", params["bound_node"]) if params["bound_node"] else None
    except KubeError as exc:
        module.fail_json(msg=str(exc))
    if account is None and not module.check_mode:
        module.fail_json(msg="ServiceAccount %s/%s does not exist (katalyst.colocation.rbac creates the daemons' ones)" % (namespace, name))
    if account is None:
        # a check run of a whole playbook: the rbac task before this one would have created it
        module.warn("ServiceAccount %s/%s does not exist yet: a token would be requested once it does" % (namespace, name))
    node = None
    if params["bound_node"]:
        if node_object is None:
            module.fail_json(msg="Node %s does not exist (bound_node)" % params["bound_node"])
        node = (params["bound_node"], node_object["metadata"].get("uid"))

    text, mode, current_server, token = current_credential(dest, token_path)
    if token:
        module.no_log_values.add(token)
    now = time.time()
    reason = credentials.decide_refresh(token, now, server, current_server, namespace, name, params["audiences"],
                                        ((account or {}).get("metadata") or {}).get("uid"), params["refresh_before_seconds"], node)
    before = describe_token(current_server, token, token_path)
    if reason is None:
        expiry = int(credentials.jwt_claims(token)["exp"])
    elif module.check_mode:
        token, expiry = None, int(now) + params["expiration_seconds"]
    else:
        token, expiry = request_token(module, kube, name, namespace, node)
    wanted_text = credentials.dump_kubeconfig(credentials.render_kubeconfig(server, named_token_path, namespace, name, ca_data, insecure))
    token_text, token_mode = read_text(token_path)
    writes = []
    if reason is not None or token_text is None or token_text.strip() != token or token_mode != privatefiles.PRIVATE_FILE:
        writes.append((token_path, token))
    if text != wanted_text or mode != privatefiles.PRIVATE_FILE:
        writes.append((dest, wanted_text))
    if writes and not module.check_mode:
        try:
            for path, content in writes:
                privatefiles.write_private(path, content)
        except OSError as exc:
            module.fail_json(msg="cannot write %s: %s" % (exc.filename or dest, exc.strerror or exc))
    for directory in sorted({os.path.dirname(dest), os.path.dirname(token_path)}):
        if os.path.isdir(directory) and stat.S_IMODE(os.stat(directory).st_mode) & 0o077:
            module.warn("%s can be read by other users than its owner: keep credentials in a 0700 directory" % directory)

    described = dict(credentials.describe(server, namespace, name, expiry), path=token_path, node=params["bound_node"])
    result = {"changed": bool(writes), "path": dest, "token_file": token_path, "service_account": name, "namespace": namespace,
              "user": described["user"], "server": server, "bound_node": params["bound_node"], "expiration_timestamp": described["expires"],
              "refreshed": reason is not None, "reason": reason}
    if module._diff:
        result["diff"] = {"before": before, "after": described if writes else before,
                          "before_header": dest, "after_header": dest}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
