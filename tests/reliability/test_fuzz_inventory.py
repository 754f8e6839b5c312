"""Fuzzed inventory and role variables: each role refuses a bad value before it changes anything.

Cases come from each role's own meta/argument_specs.yml: every option with a type or choices, each with the values
that type or those choices rule out (exhaustive, so no seed is needed); one ansible-playbook run per role takes them
all, one inventory host per case (local connection, check mode, so a value that slipped through could not touch this
machine either). A case survives when its host stops at Ansible's argument validation, or at the role's own check
task for values each type allows, with a message naming the variable, and no other task of the role ran for it.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from .conftest import record, sized

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = ("agent", "node", "oom_hook", "scheduler_extender", "tide", "webhook")
VALIDATION_TASK = "Validating arguments against arg spec"
FIGURE = "fuzzed bad input: inventory and role variables"

# Values Ansible's argument validation cannot turn into the option's type (it converts "5" to 5 and "a,b" to a list,
# so those are not bad input for it). A plain str or path option takes almost anything (a list becomes its text), so
# only options with a type or choices to break are fuzzed.
BAD_BY_TYPE = {"int": ["abc", "1.5", ["1"], {"a": 1}, "", "5 cores"],
               "bool": ["maybe", "2", [True], {"a": 1}, "", 7],
               "list": [{"a": 1}, {"packages": ["x"]}],     # a number or a bool becomes a one-item list
               "dict": ["just text", ["a", "b"], 3, True],
               "float": ["fast", ["1.0"], {"a": 1}, "1.0.0"]}
NOT_A_CHOICE = ["SYSTEMD", "none ", "", "maybe-later", ["a"]]


def role_options(role):
    with open(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["argument_specs"]["main"]["options"]


def bad_values(spec):
    """The values the option's spec rules out (none when its type accepts anything)."""
    if spec.get("choices"):
        allowed = {str(choice) for choice in spec["choices"]}
        return [value for value in NOT_A_CHOICE if str(value) not in allowed]
    return BAD_BY_TYPE.get(spec.get("type", "str"), [])


def role_cases(role):
    """(variables, the variable the refusal must name, the task that must refuse): every fuzzable option with each of its
    bad values (CI: the first one), then the combinations the role's own check task refuses."""
    cases = [({name: value}, name, VALIDATION_TASK)
             for name, spec in sorted(role_options(role).items()) for value in bad_values(spec)[:sized(None, 1)]]
    return cases + [(variables, named, CHECK_TASKS[role]) for variables, named in CHECKED_COMBINATIONS.get(role, [])]


# Values each type allows but the role cannot work with; its first task (an assert) refuses them.
CHECK_TASKS = {"agent": "Check the node name", "tide": "Check the kubeconfig settings", "webhook": "Check the webhook settings",
               "scheduler_extender": "Check the extender settings"}
CHECKED_COMBINATIONS = {
    "agent": [({"agent_node_name": ""}, "agent_node_name"), ({"agent_credential": "kubeconfig_src"}, "agent_kubeconfig_src")],
    "tide": [({"tide_kubeconfig_path": ""}, "tide_kubeconfig_path"), ({"tide_credential": "kubeconfig_src"}, "tide_kubeconfig_src")],
    "webhook": [({"webhook_url": "http://plain.example:8443"}, "webhook_url"), ({"webhook_timeout_seconds": 0}, "webhook_timeout_seconds"),
                ({"webhook_timeout_seconds": 31}, "webhook_timeout_seconds"), ({"webhook_tls_cert": "/etc/cert.pem"}, "webhook_tls_key")],
    "scheduler_extender": [({"scheduler_extender_plugins": []}, "plugin"),
                           ({"scheduler_extender_tls_cert_path": "/etc/cert.pem"}, "key"),
                           ({"scheduler_extender_numa_aligned_resources": ["not a name!"]}, "not a name!"),
                           ({"scheduler_extender_credential": "kubeconfig_src"}, "scheduler_extender_kubeconfig_src")],
}


def run_role(role, cases, tmp_path):
    """Run the role in check mode on one local host per case; per host, the names of the tasks it reached and the messages."""
    hosts = {"case%03d" % index: dict(variables, ansible_connection="local", ansible_python_interpreter=sys.executable)
             for index, (variables, _named, _task) in enumerate(cases)}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "roles": ["katalyst.colocation.%s" % role]}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO),
               ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_LOCALHOST_WARNING="false")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory), "--check",
                             "--forks", "10", str(playbook)], capture_output=True, text=True, env=env, cwd=REPO, timeout=900, check=False)
    report, _end = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{"):])
    reached = {host: [] for host in hosts}
    for play in report["plays"]:
        for task in play["tasks"]:
            for host, outcome in task["hosts"].items():
                if not outcome.get("skipped"):
                    reached[host].append((task["task"]["name"], outcome))
    return hosts, reached, result


@pytest.mark.parametrize("role", ROLES)
def test_roles_refuse_bad_variables_before_any_change(role, tmp_path):
    cases = role_cases(role)
    hosts, reached, result = run_role(role, cases, tmp_path)
    failures = []
    for host, (variables, named, refusing_task) in zip(hosts, cases):
        tasks = reached[host]
        last_name, last = tasks[-1] if tasks else ("(none)", {})
        # it stops at the refusing task, which names the variable; everything before it only validated or checked
        refused = refusing_task in last_name and last.get("failed") and re.search(r"(?<![\w])%s(?![\w])" % re.escape(named), last.get("msg", ""))
        survived = bool(refused and len(tasks) == (1 if refusing_task == VALIDATION_TASK else 2))
        record(FIGURE, "refused by %s naming the variable" % ("validation" if refusing_task == VALIDATION_TASK else "the role's check")
               if survived else "NOT refused", expected=survived)
        if not survived:
            failures.append("%r: reached %s (%s)" % (variables, [task for task, _outcome in tasks], last.get("msg", "")[:200]))
    assert not failures, "\n".join(failures[:20])
    assert result.returncode != 0 and len(cases) >= 5
