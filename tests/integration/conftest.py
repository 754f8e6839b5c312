"""Shared fixtures: the sandbox API emulator over real HTTP, and the real kubernetes client."""

import pytest

kubernetes = pytest.importorskip("kubernetes")

from sandbox.kubeapi.server import KubeAPIServer, write_kubeconfig  # noqa: E402


@pytest.fixture
def kubeapi(tmp_path):
    """A started emulator (``.url``, ``.api``, ``.store``, ``.kubeconfig``); stopped after the test."""
    server = KubeAPIServer(bookmark_interval=0.3).start()
    server.kubeconfig = str(tmp_path / "kubeconfig")
    write_kubeconfig(server.kubeconfig, server.url)
    yield server
    server.stop()


@pytest.fixture
def kube_client(kubeapi):
    """A ``kubernetes.client.ApiClient`` pointed at the emulator."""
    configuration = kubernetes.client.Configuration()
    configuration.host = kubeapi.url
    api_client = kubernetes.client.ApiClient(configuration)
    yield api_client
    api_client.close()
