"""katalyst.colocation.service_account_kubeconfig through ansible-playbook, on both backends: a bound ServiceAccount
token (TokenRequest) in a 0600 token file under 0700 directories, a kubeconfig that works with the kubernetes client,
idempotence, refresh near expiry, check mode, and no token in the playbook's output (-v --diff).

The emulator has no authenticator or authorizer (it accepts any token and allows every call): a refused call (403)
and a revoked token (401) are proven on the real control plane only; the emulator issues tokens with the real claims.
"""

import json
import os
import stat

import pytest
from kubernetes import client, config as kube_config
from kubernetes.client.exceptions import ApiException

from ansible_collections.katalyst.colocation.plugins.module_utils import credentials
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import service
from tests.integration.ansible_runner import run_playbook
from tests.integration.waiting import wait_until

NAMESPACE = "katalyst-system"
ACCOUNT = "katalyst-agent"
PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: credential
      katalyst.colocation.service_account_kubeconfig:
        kubeconfig: "{{ kc }}"
        service_account: "{{ account | default('%s') }}"
        namespace: %s
        dest: "{{ dest }}"
        kubeconfig_token_file: "{{ named_token_file | default(omit) }}"
        expiration_seconds: "{{ expiration_seconds | default(omit) }}"
        refresh_before_seconds: "{{ refresh_before_seconds | default(omit) }}"
""" % (ACCOUNT, NAMESPACE)


@pytest.fixture
def account(kube_client):
    """The ServiceAccount, allowed to read ConfigMaps in its namespace and nothing else (a Role and RoleBinding)."""
    core = client.CoreV1Api(kube_client)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    created = core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": ACCOUNT}})
    rbac_api = client.RbacAuthorizationV1Api(kube_client)
    rbac_api.create_namespaced_role(NAMESPACE, {"metadata": {"name": "read-configmaps"},
                                                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]})
    rbac_api.create_namespaced_role_binding(NAMESPACE, {"metadata": {"name": "read-configmaps"},
                                                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
                                                        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}]})
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "settings"}, "data": {"a": "1"}})
    return created


def converge(kubeapi, tmp_path, dest, args=("-v", "--diff"), **extra):
    """Run the module once: (its task result, the playbook's whole output)."""
    rc, tasks, out = run_playbook(PLAY, tmp_path, list(args), dict(extra, kc=kubeapi.kubeconfig, dest=str(dest)))
    assert rc == 0, out
    return tasks["credential"], out


def read(path):
    with open(path) as handle:
        return handle.read()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def forbidden(call, *args):
    with pytest.raises(ApiException) as raised:
        call(*args)
    assert raised.value.status == 403, raised.value.body


def test_private_files_a_working_kubeconfig_and_no_token_in_the_output(kubeapi, account, tmp_path):
    dest = tmp_path / "etc" / "credentials" / "agent.kubeconfig"
    result, out = converge(kubeapi, tmp_path, dest)
    token_file = str(dest) + ".token"
    token = read(token_file)
    assert result["changed"] is True and result["refreshed"] is True, result
    assert result["token_file"] == token_file and result["user"] == "system:serviceaccount:%s:%s" % (NAMESPACE, ACCOUNT)
    assert mode(dest) == mode(token_file) == 0o600
    assert mode(dest.parent) == mode(dest.parent.parent) == 0o700
    # a bound token of this ServiceAccount (the live object's uid), with the expiry the result and the diff report
    claims = credentials.jwt_claims(token)
    assert credentials.token_identity(claims) == (NAMESPACE, ACCOUNT, account.metadata.uid)
    assert result["expiration_timestamp"] == credentials.timestamp(claims["exp"])
    assert result["diff"]["before"] == {} and result["diff"]["after"]["expires"] == result["expiration_timestamp"]
    assert result["diff"]["after"]["user"] == result["user"]
    assert token.strip() not in out and token.strip()[-40:] not in out

    # the kubeconfig works with the real client: an allowed call succeeds, anything else is refused (real backend)
    with kube_config.new_client_from_config(config_file=str(dest)) as api_client:
        core = client.CoreV1Api(api_client)
        # (a real cluster also publishes kube-root-ca.crt in every namespace)
        assert "settings" in [item.metadata.name for item in core.list_namespaced_config_map(NAMESPACE).items]
        if kubeapi.backend == "real":
            forbidden(core.list_namespaced_secret, NAMESPACE)
            forbidden(core.list_namespaced_config_map, "default")
            forbidden(core.delete_namespaced_config_map, "settings", NAMESPACE)
            review = client.AuthenticationV1Api(api_client).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                                        "kind": "SelfSubjectReview"})
            assert review.status.user_info.username == result["user"]

    # a second run keeps the token and writes nothing
    stamps = (os.stat(dest).st_mtime_ns, os.stat(token_file).st_mtime_ns)
    again, out = converge(kubeapi, tmp_path, dest)
    assert again["changed"] is False and again["refreshed"] is False and again["reason"] is None, again
    assert again["expiration_timestamp"] == result["expiration_timestamp"]
    assert (os.stat(dest).st_mtime_ns, os.stat(token_file).st_mtime_ns) == stamps and read(token_file) == token
    assert token.strip() not in out


def test_check_mode_writes_nothing(kubeapi, account, tmp_path):
    dest = tmp_path / "credentials" / "agent.kubeconfig"
    result, out = converge(kubeapi, tmp_path, dest, args=("--check", "-v", "--diff"))
    assert result["changed"] is True and result["refreshed"] is True, result
    assert not dest.parent.exists(), "check mode created %s" % dest.parent
    assert "token" not in json.dumps(result["diff"]["after"]).replace("token_file", "").replace(".token", ""), result["diff"]


def test_refusals_name_the_problem_and_write_nothing(kubeapi, account, tmp_path):
    dest = tmp_path / "credentials" / "agent.kubeconfig"
    for extra, message in (({"account": "nobody"}, "ServiceAccount katalyst-system/nobody does not exist"),
                           ({"expiration_seconds": 599}, "at least 600")):
        rc, tasks, out = run_playbook(PLAY, tmp_path, [], dict(extra, kc=kubeapi.kubeconfig, dest=str(dest)))
        assert rc != 0 and message in tasks["credential"]["msg"], out
        assert not dest.parent.exists()


def test_the_kubeconfig_names_where_the_daemon_reads_the_token(kubeapi, account, tmp_path):
    """kubeconfig_token_file: the token is written to token_file, the kubeconfig names the path the daemon reads it at
    (systemd's LoadCredential= copy, or a node the files are copied to); idempotence still looks at token_file."""
    dest = tmp_path / "credentials" / "controller.kubeconfig"
    named = "/run/credentials/katalyst-controller.service/token"
    result, _out = converge(kubeapi, tmp_path, dest, named_token_file=named)
    kubeconfig = json.loads(read(dest))
    assert credentials.kubeconfig_user(kubeconfig)[1] == {"tokenFile": named}
    assert credentials.token_identity(credentials.jwt_claims(read(str(dest) + ".token")))[:2] == (NAMESPACE, ACCOUNT)
    again, _out = converge(kubeapi, tmp_path, dest, named_token_file=named)
    assert result["changed"] is True and again["changed"] is False, again
    rc, tasks, out = run_playbook(PLAY, tmp_path, [], {"kc": kubeapi.kubeconfig, "dest": str(dest), "named_token_file": "relative/token"})
    assert rc != 0 and "kubeconfig_token_file must be an absolute path" in tasks["credential"]["msg"], out


def test_check_mode_before_the_account_exists(kubeapi, account, tmp_path):
    """A --check run of a whole playbook: the rbac task before would create the ServiceAccount, so the credential is
    reported as to be issued (with a warning), not refused."""
    dest = tmp_path / "credentials" / "agent.kubeconfig"
    rc, tasks, out = run_playbook(PLAY, tmp_path, ["--check"], {"kc": kubeapi.kubeconfig, "dest": str(dest), "account": "katalyst-later"})
    assert rc == 0 and tasks["credential"]["changed"] is True and tasks["credential"]["refreshed"] is True, out
    assert "does not exist yet" in " ".join(tasks["credential"].get("warnings", [])), tasks["credential"]
    assert not dest.parent.exists()


def test_a_token_close_to_expiry_is_refreshed(kubeapi, account, tmp_path):
    dest = tmp_path / "credentials" / "agent.kubeconfig"
    token_file = str(dest) + ".token"
    first, out_first = converge(kubeapi, tmp_path, dest, expiration_seconds=600)
    old = read(token_file)
    claims = credentials.jwt_claims(old)
    assert claims["exp"] - claims["iat"] <= 600, claims        # the minimum the API server accepts, or shorter
    # with the default threshold (a third of the lifetime) a fresh 10-minute token is kept
    kept, out_kept = converge(kubeapi, tmp_path, dest, expiration_seconds=600)
    assert kept["changed"] is False and read(token_file) == old, kept

    # a threshold beyond the token's lifetime: it is close to expiry now; --check says so and writes nothing
    stamps = (os.stat(dest).st_mtime_ns, os.stat(token_file).st_mtime_ns)
    checked, out_checked = converge(kubeapi, tmp_path, dest, args=("--check", "-v", "--diff"), expiration_seconds=600,
                                    refresh_before_seconds=700)
    assert checked["changed"] is True and checked["refreshed"] is True and "expires in" in checked["reason"], checked
    assert (os.stat(dest).st_mtime_ns, os.stat(token_file).st_mtime_ns) == stamps and read(token_file) == old
    assert checked["diff"]["before"]["expires"] == first["expiration_timestamp"]

    refreshed, out_refreshed = converge(kubeapi, tmp_path, dest, expiration_seconds=600, refresh_before_seconds=700)
    new = read(token_file)
    assert refreshed["changed"] is True and refreshed["refreshed"] is True, refreshed
    assert new != old and credentials.token_identity(credentials.jwt_claims(new))[:2] == (NAMESPACE, ACCOUNT)
    assert mode(token_file) == 0o600 and refreshed["diff"]["before"]["expires"] == first["expiration_timestamp"]
    for out in (out_first, out_kept, out_checked, out_refreshed):
        assert old.strip() not in out and new.strip() not in out
    with kube_config.new_client_from_config(config_file=str(dest)) as api_client:
        assert client.CoreV1Api(api_client).read_namespaced_config_map("settings", NAMESPACE).data == {"a": "1"}


def test_a_daemon_uses_the_refreshed_token_without_a_restart(kubeapi, account, kube_client, tmp_path):
    """The daemons' client (service.kube_api_client) follows the token file: the ServiceAccount is deleted and created
    again, which revokes its tokens (401); the module notices the new uid and writes a new token; the same client, never
    rebuilt, works again."""
    if kubeapi.backend != "real":
        pytest.skip("the emulator authenticates nobody: a revoked token is refused on the real control plane only "
                    "(tests/unit/plugins/module_utils/test_credentials.py proves the re-read over HTTP on any server)")
    dest = tmp_path / "credentials" / "agent.kubeconfig"
    converge(kubeapi, tmp_path, dest)
    daemon_client = service.kube_api_client(ACCOUNT, str(dest))
    core = client.CoreV1Api(daemon_client)
    assert core.read_namespaced_config_map("settings", NAMESPACE).data == {"a": "1"}

    admin = client.CoreV1Api(kube_client)
    admin.delete_namespaced_service_account(ACCOUNT, NAMESPACE)
    wait_until(lambda: admin.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": ACCOUNT}}), timeout=60,
               what="the ServiceAccount created again", ignore=(ApiException,))

    def revoked():
        try:
            core.read_namespaced_config_map("settings", NAMESPACE)
        except ApiException as exc:
            return exc.status == 401
        return False
    wait_until(revoked, timeout=120, what="the old token to be refused (401)")

    result, out = converge(kubeapi, tmp_path, dest)
    assert result["changed"] is True and "created again" in result["reason"], result
    assert core.read_namespaced_config_map("settings", NAMESPACE).data == {"a": "1"}
    assert read(str(dest) + ".token").strip() not in out
    daemon_client.close()


def test_the_token_request_contract(kubeapi, account, kube_client):
    """What the module relies on, the same on both backends: defaults, the 10-minute minimum, 404 for no ServiceAccount."""
    core = client.CoreV1Api(kube_client)
    answer = core.create_namespaced_service_account_token(ACCOUNT, NAMESPACE, {"spec": {}})
    claims = credentials.jwt_claims(answer.status.token)
    assert answer.spec.expiration_seconds == 3600 and claims["exp"] - claims["iat"] == 3600
    assert answer.spec.audiences == ["https://kubernetes.default.svc.cluster.local"] == claims["aud"]
    assert credentials.timestamp(claims["exp"]) == answer.status.expiration_timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert claims["sub"] == "system:serviceaccount:%s:%s" % (NAMESPACE, ACCOUNT)
    assert credentials.token_identity(claims) == (NAMESPACE, ACCOUNT, account.metadata.uid)
    answer = core.create_namespaced_service_account_token(ACCOUNT, NAMESPACE, {"spec": {"audiences": ["vault"], "expirationSeconds": 600}})
    assert credentials.jwt_claims(answer.status.token)["aud"] == ["vault"]
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_service_account_token(ACCOUNT, NAMESPACE, {"spec": {"expirationSeconds": 599}})
    assert raised.value.status == 422 and "less than 10 minutes" in raised.value.body
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_service_account_token("nobody", NAMESPACE, {"spec": {}})
    assert raised.value.status == 404
