import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import kube


def test_explicit_params_win_over_environment():
    env = {"K8S_AUTH_HOST": "https://env:6443", "K8S_AUTH_API_KEY": "envtoken", "K8S_AUTH_VERIFY_SSL": "no",
           "K8S_AUTH_IMPERSONATE_GROUPS": "a, b", "K8S_AUTH_PROXY_HEADERS": '{"x": "y"}'}
    auth = kube.resolve_auth({"host": "https://param:6443", "api_key": None}, env)
    assert auth["host"] == "https://param:6443"
    assert auth["api_key"] == "envtoken"
    assert auth["validate_certs"] is False
    assert auth["impersonate_groups"] == ["a", "b"]
    assert auth["proxy_headers"] == {"x": "y"}


def test_awx_credential_variables_are_the_kubernetes_core_names():
    # AWX's OpenShift/Kubernetes credential injects exactly these.
    for variable in ("K8S_AUTH_HOST", "K8S_AUTH_API_KEY", "K8S_AUTH_VERIFY_SSL", "K8S_AUTH_SSL_CA_CERT"):
        assert variable in kube.AUTH_ENV.values()


def test_host_and_token_build_a_client():
    api_client = kube.build_api_client({"host": "https://10.0.0.1:6443", "api_key": "t", "validate_certs": False})
    assert api_client.configuration.host == "https://10.0.0.1:6443"
    assert api_client.configuration.api_key == {"authorization": "Bearer t"}
    assert api_client.configuration.verify_ssl is False


def test_missing_kubeconfig_is_a_clear_error(tmp_path):
    with pytest.raises(kube.KubeError, match="does not exist"):
        kube.build_api_client({"kubeconfig": str(tmp_path / "nope")})
