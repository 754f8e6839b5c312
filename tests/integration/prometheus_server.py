"""A real Prometheus server (the Debian `prometheus` binary) for tests: a config written from scrape targets, a tmp data
dir, a free loopback port; ready when /-/ready answers; queried through its HTTP API."""

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request

import yaml

from tests.integration.role_testing import free_port
from tests.integration.waiting import wait_until


def scrape_config(job, address, ca_file=None):
    """One scrape job of a daemon's /metrics: https with the daemon's CA when ca_file is given."""
    config = {"job_name": job, "static_configs": [{"targets": [address]}]}
    if ca_file:
        config.update(scheme="https", tls_config={"ca_file": ca_file})
    return config


class PrometheusServer:
    def __init__(self, directory, rule_files, scrape_configs, interval="1s"):
        self.binary = shutil.which("prometheus")
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.config_file = os.path.join(self.directory, "prometheus.yml")
        with open(self.config_file, "w", encoding="utf-8") as handle:
            yaml.safe_dump({"global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
                            "rule_files": list(rule_files), "scrape_configs": list(scrape_configs)}, handle)
        self.port = None
        self.process = None
        self.log = None

    def start(self, timeout=60):
        self.port = free_port()
        self.log = open(os.path.join(self.directory, "prometheus.log"), "w+", encoding="utf-8")   # pylint: disable=consider-using-with
        self.process = subprocess.Popen([self.binary, "--config.file=" + self.config_file, "--storage.tsdb.path=" + os.path.join(self.directory, "data"),
                                         "--web.listen-address=127.0.0.1:%d" % self.port], stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=timeout, what="prometheus to be ready; log: " + self.log.name)
        return self

    def _ready(self):
        assert self.process.poll() is None, "prometheus exited: " + self.log_text()
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_text(self):
        self.log.seek(0)
        return self.log.read()[-3000:]

    def api(self, path, **params):
        """GET /api/v1/<path>: the parsed answer, also for a 4xx (a query that does not parse answers 400 with an error)."""
        url = "http://127.0.0.1:%d/api/v1/%s?%s" % (self.port, path, urllib.parse.urlencode(params))
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    def query(self, expr):
        return self.api("query", query=expr)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        if self.log is not None:
            self.log.close()
