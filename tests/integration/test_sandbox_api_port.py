"""The sandbox's API emulator keeps its port across restarts of the same state directory (so the kubeconfigs the demo
installs stay valid), and takes a free port, and says so, only when the recorded one is taken."""

import contextlib
import os
import socket

import pytest

from sandbox import cli
from sandbox.kubeapi.server import KubeAPIServer
from tests.integration.ansible_runner import REPO


@contextlib.contextmanager
def listening_socket(port=0):
    """A socket listening on 127.0.0.1:port (a free port with 0): what makes a port taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # a restarted server's TIME_WAIT may remain
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def state(tmp_path, monkeypatch):
    # the emulator process imports the engine as the collection, as under `make` (pytest.ini's pythonpath is not inherited)
    monkeypatch.setenv("PYTHONPATH", "%s/.build/collections%s%s" % (REPO, os.pathsep, REPO))
    try:
        yield str(tmp_path)
    finally:
        cli.stop_process(os.path.join(str(tmp_path), "apiserver.pid"), "API emulator")


def served_port(state):
    return cli.kubeconfig_port(os.path.join(state, "kubeconfig"))


def test_a_restarted_emulator_serves_on_its_recorded_port(state):
    port, said = cli.start_api_emulator(state)
    assert said == "a new one"
    assert cli.recorded_api_port(state) == port == served_port(state)
    with open(os.path.join(state, "kubeconfig")) as handle:
        kubeconfig = handle.read()
    cli.stop_process(os.path.join(state, "apiserver.pid"), "API emulator")

    assert cli.start_api_emulator(state) == (port, "the recorded one")
    with open(os.path.join(state, "kubeconfig")) as handle:
        assert handle.read() == kubeconfig
    assert cli.kube_client(os.path.join(state, "kubeconfig")).list_namespace() is not None


def test_a_taken_recorded_port_gives_a_new_one_and_says_so(state):
    with listening_socket() as taken:
        with open(os.path.join(state, cli.API_PORT_FILE), "w") as handle:
            handle.write("%d\n" % taken)
        port, said = cli.start_api_emulator(state)
        assert port != taken
        assert said.startswith("a new one: the recorded port %d is taken" % taken), said
    assert cli.recorded_api_port(state) == port == served_port(state)
    assert cli.kube_client(os.path.join(state, "kubeconfig")).list_namespace() is not None
    with open(os.path.join(state, "apiserver.log")) as handle:
        assert "(port %d is taken)" % taken in handle.read()


def test_the_server_binds_the_port_asked_for_and_falls_back_only_when_told():
    with listening_socket() as taken:
        with pytest.raises(OSError):
            KubeAPIServer(port=taken)
        server = KubeAPIServer(port=taken, fallback_to_any_port=True)
        try:
            assert server.port_taken and server.port != taken
        finally:
            server.httpd.server_close()
    with listening_socket() as free:
        pass
    server = KubeAPIServer(port=free, fallback_to_any_port=True)
    try:
        assert not server.port_taken and server.port == free
    finally:
        server.httpd.server_close()
