"""The daemons' RBAC (plugins/module_utils/rbac.py) is complete and minimal, measured on what the daemons really call.

The daemons' own integration tests (SCENARIOS, unchanged) run once more on the API emulator, with its request log on
($KATALYST_KUBEAPI_REQUEST_LOG: one line per request with the User-Agent and the authorizer's attributes). Every daemon's
client names the daemon in its User-Agent (daemons/service.py kube_api_client), also when a test runs it in-process on
the test's client, so the log tells which daemon made which call; the tests' own calls, the sandbox kubelets' and the
sandbox scheduler's carry the kubernetes client's default User-Agent and are not counted. Then, per daemon:
- complete: every resource call is allowed by its rules (rendered with the scenarios' settings: the controller's Lease
  in `default`), and every other call is discovery, which every authenticated identity may make (system:discovery);
- minimal: every verb of every rule was called at least once.
The real control plane proves the same rules with each daemon's ServiceAccount token (test_rbac_real.py).
"""

import fnmatch
import os
import subprocess
import sys

import pytest

from ansible_collections.katalyst.colocation.plugins.module_utils import rbac
from ansible_collections.katalyst.colocation.plugins.module_utils.daemons.service import user_agent
from sandbox.kubeapi import requestlog
from tests.integration.ansible_runner import REPO
from tests.integration.backends import REQUEST_LOG_VARIABLE

# The integration tests that run each daemon through its usual work (test_token_renewal.py: each renews its own token).
SCENARIOS = {
    rbac.AGENT: ("test_agent_daemon.py", "test_agent_numa.py", "test_agent_overcommit.py", "test_extender_numa.py", "test_token_renewal.py",
                 "test_agent_eviction.py"),
    rbac.CONTROLLER: ("test_tide_controller.py", "test_cnr_controller.py", "test_overcommit_controller.py", "test_token_renewal.py"),
    rbac.WEBHOOK: ("test_webhook.py",),
    rbac.EXTENDER: ("test_scheduler_extender.py", "test_extender_numa.py", "test_token_renewal.py"),
}
# The settings those scenarios run the daemons with (test_tide_controller.py: the Lease in `default`).
SCENARIO_LEASE_NAMESPACE = "default"
# The non-resource URLs of the default system:discovery ClusterRole, bound to every authenticated identity.
DISCOVERY_URLS = ("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("rbac-calls")]


@pytest.fixture(scope="module")
def recorded(request, tmp_path_factory):
    """Every request the scenarios made, from the emulator's request log."""
    if request.config.getoption("--backend") == "real":
        pytest.skip("the request log is the emulator's (the real control plane's side: test_rbac_real.py)")
    log = tmp_path_factory.mktemp("rbac-calls") / "requests.jsonl"
    modules = sorted({name for names in SCENARIOS.values() for name in names})
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "KATALYST_TEST_BACKEND"))}
    env[REQUEST_LOG_VARIABLE] = str(log)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--backend", "emulator"]
    result = subprocess.run(command + [os.path.join("tests", "integration", name) for name in modules], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, "the scenarios failed:\n%s\n%s" % (result.stdout[-6000:], result.stderr[-3000:])
    return requestlog.read(log)


def calls_of(entries, component):
    return [entry for entry in entries if entry["user_agent"] == user_agent(component)]


def as_request(entry):
    """A resource request as rbac.allowing_rule takes it (the resource with its subresource, no name for create)."""
    resource = entry["resource"] + ("/" + entry["subresource"] if entry["subresource"] else "")
    return {"verb": entry["verb"], "group": entry["group"], "resource": resource, "namespace": entry["namespace"] or None,
            "name": entry["name"] or None}


def describe(call):
    return "%s %s %s%s%s" % (call["verb"], call["group"] or "core", call["resource"],
                             " in " + call["namespace"] if call["namespace"] else "", " named " + call["name"] if call["name"] else "")


def distinct_calls(resource_calls):
    """(verb, group, resource) of the resource calls, each once."""
    return sorted({(call["verb"], call["group"], call["resource"]) for call in map(as_request, resource_calls)})


@pytest.mark.parametrize("component", rbac.COMPONENTS)
def test_every_call_is_allowed_and_every_rule_is_used(recorded, component):
    calls = calls_of(recorded, component)
    resource_calls = [entry for entry in calls if "path" not in entry]
    others = sorted({"%s %s" % (entry["verb"], entry["path"]) for entry in calls if "path" in entry})
    refused = [path for path in others if not (path.startswith("get ") and any(fnmatch.fnmatch(path[4:], url) for url in DISCOVERY_URLS))]
    assert not refused, "%s calls non-resource URLs outside discovery: %s" % (component, refused)
    used, denied = set(), set()
    for entry in resource_calls:
        call = as_request(entry)
        rule = rbac.allowing_rule(component, call, lease_namespace=SCENARIO_LEASE_NAMESPACE)
        if rule is None:
            denied.add(describe(call))
        else:
            used.add((rule, call["verb"]))
    assert not denied, "%s made calls its rules do not allow: %s" % (component, sorted(denied))
    unused = ["%s %s %s (%s)" % (verb, rule.group or "core", ",".join(rule.resources), rule.why)
              for rule in rbac.RULES[component] for verb in rule.verbs if (rule, verb) not in used]
    assert not unused, "%s never called these (remove them, or add the scenario that needs them): %s" % (component, unused)
    if not rbac.RULES[component]:
        assert not calls, "%s has no rules but called %s" % (component, sorted({describe(as_request(e)) for e in resource_calls}))
    distinct = distinct_calls(resource_calls)
    print("%s: %d requests, %d distinct resource calls: %s" % (component, len(calls), len(distinct), distinct))


def test_the_log_tells_the_daemons_apart(recorded):
    """Non-vacuous: the scenarios ran and the daemons (all but the webhook, which has no client) made their calls."""
    agents = {entry["user_agent"] for entry in recorded}
    for component in (rbac.AGENT, rbac.CONTROLLER, rbac.EXTENDER):
        assert user_agent(component) in agents, sorted(agents)
    assert len(agents - {user_agent(component) for component in rbac.COMPONENTS}) >= 1     # the tests' own client
