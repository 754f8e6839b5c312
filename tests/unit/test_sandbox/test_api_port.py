"""Where `python -m sandbox up` finds the port the API emulator of a state directory served on last time."""

import json

from sandbox.cli import API_PORT_FILE, kubeconfig_port, recorded_api_port
from sandbox.kubeapi.server import write_kubeconfig


def test_the_port_file_is_the_record(tmp_path):
    (tmp_path / API_PORT_FILE).write_text("41234\n")
    write_kubeconfig(str(tmp_path / "kubeconfig"), "http://127.0.0.1:40000")
    assert recorded_api_port(str(tmp_path)) == 41234


def test_a_state_directory_from_before_the_port_file_keeps_its_kubeconfig_port(tmp_path):
    write_kubeconfig(str(tmp_path / "kubeconfig"), "http://127.0.0.1:40000")
    assert recorded_api_port(str(tmp_path)) == 40000


def test_no_record_or_a_bad_one_means_a_new_port(tmp_path):
    assert recorded_api_port(str(tmp_path)) is None
    (tmp_path / API_PORT_FILE).write_text("port\n")
    assert recorded_api_port(str(tmp_path)) is None
    (tmp_path / API_PORT_FILE).write_text("70000\n")
    assert recorded_api_port(str(tmp_path)) is None


def test_kubeconfig_port_reads_the_first_clusters_server(tmp_path):
    path = tmp_path / "kubeconfig"
    assert kubeconfig_port(str(path)) is None
    path.write_text(json.dumps({"clusters": [{"name": "a", "cluster": {"server": "https://127.0.0.1:6443"}}]}))
    assert kubeconfig_port(str(path)) == 6443
    path.write_text(json.dumps({"clusters": [{"name": "a", "cluster": {"server": "http://127.0.0.1"}}]}))
    assert kubeconfig_port(str(path)) is None
    path.write_text("clusters: [")
    assert kubeconfig_port(str(path)) is None
