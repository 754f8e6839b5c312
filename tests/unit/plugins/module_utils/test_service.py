import json
import logging
import threading
import urllib.error
import urllib.request

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils.daemons import service


def test_load_config_rejects_unknown_keys(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("node_name: n1\nperiod: 5\n")
    assert service.load_config(str(path), {"node_name": "", "period": 1, "port": 9316}) == {"node_name": "n1", "period": 5, "port": 9316}
    path.write_text("node_nmae: n1\n")
    with pytest.raises(ValueError, match="unknown setting.*node_nmae"):
        service.load_config(str(path), {"node_name": ""})


def test_json_log_lines_carry_extra_fields():
    record = logging.LogRecord("katalyst", logging.WARNING, __file__, 1, "wrote %s", ("x",), None)
    record.node = "n1"
    entry = json.loads(service.JSONFormatter().format(record))
    assert entry["msg"] == "wrote x" and entry["level"] == "warning" and entry["node"] == "n1"


def http_get(port, path):
    """GET ``path`` on 127.0.0.1:``port``: (HTTP status, body), an error status included."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_loops_health_metrics_and_stop():
    daemon = service.Daemon("test-daemon")
    ran = threading.Event()
    fail = {"on": False}

    def work():
        ran.set()
        if fail["on"]:
            raise RuntimeError("boom")

    loop = daemon.add_loop(service.Loop("work", 0.05, work, tolerance=2))
    port = daemon.serve_http("127.0.0.1", 0)
    threads = daemon.start()
    assert ran.wait(5)
    status, body = http_get(port, "/healthz")
    assert status == 200 and json.loads(body)["loops"]["work"]["healthy"]
    status, body = http_get(port, "/metrics")
    assert status == 200 and 'katalyst_loop_runs_total{daemon="test-daemon",loop="work",outcome="success"}' in body
    fail["on"] = True
    loop.last_success = daemon.clock() - 10  # the last success is now far outside tolerance x period
    loop.trigger()
    for _attempt in range(250):   # unhealthy at once (old success); the failing run's error follows
        status, body = http_get(port, "/healthz")
        if status == 503 and json.loads(body)["loops"]["work"]["last_error"]:
            break
        threading.Event().wait(0.02)
    assert status == 503 and json.loads(body)["loops"]["work"]["last_error"] == "boom"
    daemon.stop()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    daemon.http.shutdown()


def test_reload_failure_keeps_running():
    daemon = service.Daemon("reloader")
    calls = []

    def bad_reload():
        calls.append(1)
        raise ValueError("bad config")

    daemon.on_reload(bad_reload)
    daemon.reload()
    assert calls == [1]


def test_each_daemon_talks_with_a_client_of_its_own_that_names_it(tmp_path):
    from kubernetes import client  # pylint: disable=import-outside-toplevel
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:1"
    with client.ApiClient(configuration) as tests_client:
        own = service.kube_api_client("katalyst-controller", like=tests_client)
        assert own is not tests_client and own.configuration is configuration
        assert own.user_agent == "katalyst-controller (katalyst.colocation)" and tests_client.user_agent != own.user_agent
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                                      "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:2"}}],
                                      "users": [{"name": "u", "user": {"token": "t"}}],
                                      "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    from_file = service.kube_api_client("katalyst-agent", str(kubeconfig))
    assert from_file.configuration.host == "http://127.0.0.1:2" and from_file.user_agent == "katalyst-agent (katalyst.colocation)"
