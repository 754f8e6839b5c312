"""playbooks/awx_configure.yml and awx/job_templates.yml without an AWX server: the playbooks pass
`ansible-playbook --syntax-check`; every awx.awx task's arguments, rendered for each item of its loop with the play's
own variables, are valid for the module's argument_spec (read from the awx.awx collection in .build/deps); every survey
is well-formed for AWX and asks only for variables its playbook uses."""

import os
import re
import socket
import subprocess
import sys
from importlib import import_module

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

from tests.integration import awx_launch
from tests.integration.ansible_runner import REPO

CONFIGURE = os.path.join(REPO, "playbooks", "awx_configure.yml")
SURVEY_TYPES = ("text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect")
VARIABLE_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# what the credential's inputs would be on an operator's command line
OPERATOR_VARS = {"awx_k8s_host": "https://api.example.com:6443", "awx_k8s_bearer_token": "token"}


# Ansible's collection loader, once set up, stays for the rest of the process: later imports of this collection in the
# same pytest worker then fail ("collection metadata was not loaded") and module warnings go elsewhere. The checks that
# need it run in a pytest process of their own (test_the_loader_checks_pass_in_a_process_of_their_own).
IN_LOADER_PROCESS = os.environ.get("KATALYST_AWX_LOADER_PROCESS") == "1"
LOADER_CHECKS = ("test_the_playbook_reads_the_data_file", "test_every_awx_task_is_valid_for_its_module",
                 "test_the_validation_refuses_a_wrong_argument")
needs_loader = pytest.mark.skipif(not IN_LOADER_PROCESS, reason="run by test_the_loader_checks_pass_in_a_process_of_their_own")
uses_loader = pytest.mark.usefixtures("collection_loader")


@pytest.fixture(scope="module")
def collection_loader():
    """Ansible's plugin and collection loader as ansible-playbook sets it up: lookups, and awx.awx from .build/deps."""
    init_plugin_loader([os.path.join(REPO, ".build", "collections"), os.path.join(REPO, ".build", "deps")])


@pytest.mark.skipif(IN_LOADER_PROCESS, reason="this is that process")
def test_the_loader_checks_pass_in_a_process_of_their_own():
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "KATALYST_TEST_BACKEND"))}
    env["KATALYST_AWX_LOADER_PROCESS"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--backend", "emulator"]
    command += ["%s::%s" % (os.path.relpath(__file__, REPO), name) for name in LOADER_CHECKS]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0 and "%d passed" % len(LOADER_CHECKS) in result.stdout, result.stdout[-6000:] + result.stderr[-3000:]


class ArgumentSpecCaught(Exception):
    def __init__(self, argument_spec):
        super().__init__("argument_spec")
        self.argument_spec = argument_spec


def awx_argument_spec(module_name, monkeypatch):
    """The full argument_spec of awx.awx.<module_name> (its own options and the controller connection's), as the
    module hands it to AnsibleModule: its main() runs until it builds the module, which is stopped right there."""
    monkeypatch.syspath_prepend(os.path.join(REPO, ".build", "deps"))     # ansible_collections.awx beside ours
    controller_api = import_module("ansible_collections.awx.awx.plugins.module_utils.controller_api")

    def catch(_self, argument_spec=None, **_kwargs):
        raise ArgumentSpecCaught(dict(controller_api.ControllerModule.AUTH_ARGSPEC, **argument_spec))
    monkeypatch.setattr(controller_api.ControllerAPIModule, "__init__", catch)
    module = import_module("ansible_collections.awx.awx.plugins.modules." + module_name)
    with pytest.raises(ArgumentSpecCaught) as caught:
        module.main()
    return caught.value.argument_spec


def trusted(value):
    """Playbook text as Ansible trusts it: every string may be a template."""
    if isinstance(value, dict):
        return {key: trusted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [trusted(item) for item in value]
    return trust_as_template(value) if isinstance(value, str) else value


def rendered_awx_tasks():
    """[(module name, task name, args)] for each awx.awx task and loop item, templated with the play's variables."""
    with open(CONFIGURE, encoding="utf-8") as stream:
        play = yaml.safe_load(stream)[0]
    variables = {"playbook_dir": os.path.dirname(CONFIGURE), **OPERATOR_VARS}
    templar = Templar(loader=DataLoader(), variables=variables)
    for name, value in play["vars"].items():
        variables.setdefault(name, templar.template(trusted(value)))
    templar = Templar(loader=DataLoader(), variables=variables)
    tasks = []
    for task in play["tasks"]:
        module = next((key for key in task if key.startswith("awx.awx.")), None)
        if module is None:
            continue
        items = templar.template(trusted(task["loop"])) if "loop" in task else [None]
        for item in items:
            item_templar = Templar(loader=DataLoader(), variables=dict(variables, item=item))
            tasks.append((module.split(".")[-1], task["name"], item_templar.template(trusted(task[module]))))
    return tasks


@needs_loader
@uses_loader
def test_the_playbook_reads_the_data_file():
    templates = awx_launch.load_templates()
    tasks = rendered_awx_tasks()
    assert sorted({module for module, _name, _args in tasks}) == ["credential", "inventory", "inventory_source", "job_template", "project"]
    job_templates = [args for module, _name, args in tasks if module == "job_template"]
    assert [args["name"] for args in job_templates] == [template["name"] for template in templates["job_templates"]]
    assert [args["survey_spec"]["spec"] for args in job_templates] == [template["survey"] for template in templates["job_templates"]]
    assert all(args["extra_vars"] == {"katalyst_kubeconfig": ""} and args["credentials"] == ["katalyst cluster"] for args in job_templates)


@needs_loader
@uses_loader
def test_every_awx_task_is_valid_for_its_module(monkeypatch):
    specs = {}
    for module, name, args in rendered_awx_tasks():
        spec = specs.setdefault(module, awx_argument_spec(module, monkeypatch))
        result = ArgumentSpecValidator(spec).validate(args)
        assert not result.error_messages, (module, name, result.error_messages)


@needs_loader
@uses_loader
def test_the_validation_refuses_a_wrong_argument(monkeypatch):
    spec = awx_argument_spec("job_template", monkeypatch)
    result = ArgumentSpecValidator(spec).validate({"name": "x", "job_type": "preview", "survey": {}})
    assert any("survey" in message for message in result.error_messages), result.error_messages
    assert any("job_type" in message for message in result.error_messages), result.error_messages


def check_question(question):
    """One survey question as AWX accepts it; the reason when it does not."""
    missing = {"variable", "question_name", "type", "required"} - set(question)
    if missing:
        return "missing %s" % sorted(missing)
    if not VARIABLE_NAME.match(question["variable"]) or question["type"] not in SURVEY_TYPES or not isinstance(question["required"], bool):
        return "bad variable name, type or required"
    default = question.get("default")
    if question["type"] in ("integer", "float"):
        number = int if question["type"] == "integer" else float
        if not isinstance(default, number) or not question["min"] <= default <= question["max"]:
            return "default %r is not a %s in [min, max]" % (default, question["type"])
    elif question["type"] in ("multiplechoice", "multiselect"):
        chosen = str(default).split("\n") if question["type"] == "multiselect" else [default]
        if not isinstance(question.get("choices"), list) or not set(chosen) <= set(question["choices"]):
            return "default %r is not among the choices" % default
    elif not isinstance(default, str) or (default and not question["min"] <= len(default) <= question["max"]):
        return "default %r is not a text of min..max characters" % default
    return None


@pytest.mark.parametrize("template", awx_launch.load_templates()["job_templates"], ids=lambda template: template["name"])
def test_each_survey_is_well_formed_and_used_by_its_playbook(template):
    assert template["job_type"] in ("run", "check")
    with open(os.path.join(REPO, template["playbook"]), encoding="utf-8") as stream:
        playbook_text = stream.read()
    names = [question["variable"] for question in template["survey"]]
    assert len(names) == len(set(names)), names
    for question in template["survey"]:
        assert check_question(question) is None, (question["variable"], check_question(question))
        assert re.search(r"\b%s\b" % question["variable"], playbook_text), "%s does not use %s" % (template["playbook"], question["variable"])


def test_the_survey_check_refuses_bad_questions():
    good = {"variable": "pool", "question_name": "Pool", "type": "multiplechoice", "required": True, "choices": ["a", "b"], "default": "a"}
    assert check_question(good) is None
    assert "choices" in check_question(dict(good, default="c"))
    assert "integer" in check_question({"variable": "n", "question_name": "N", "type": "integer", "required": True, "default": 9, "min": 0, "max": 5})
    assert check_question(dict(good, variable="not-a-name")) == "bad variable name, type or required"


def test_the_playbooks_pass_syntax_check():
    playbooks = [CONFIGURE] + sorted({os.path.join(REPO, template["playbook"]) for template in awx_launch.load_templates()["job_templates"]})
    environ = dict(os.environ, ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO),
                   ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "--syntax-check"] + playbooks
    result = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("playbook: ") == len(playbooks), result.stdout


def test_the_configure_playbook_refuses_missing_credential_inputs_and_reaches_for_the_controller(tmp_path):
    """Without the cluster credential's inputs the playbook stops at once with what to set; with them, awx.awx.project
    accepts its arguments and only fails to reach the (absent) AWX server."""
    environ = dict(os.environ, ANSIBLE_COLLECTIONS_PATH="%s/.build/collections:%s/.build/deps" % (REPO, REPO),
                   ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), CONTROLLER_HOST="http://127.0.0.1:%d" % closed_port(),
                   CONTROLLER_OAUTH_TOKEN="token", HOME=str(tmp_path))
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), CONFIGURE]
    refused = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=300, check=False)
    assert refused.returncode != 0 and "set awx_k8s_host (the API server URL) and awx_k8s_bearer_token" in refused.stdout, refused.stdout
    command += ["-e", "awx_k8s_host=%s" % OPERATOR_VARS["awx_k8s_host"], "-e", "awx_k8s_bearer_token=%s" % OPERATOR_VARS["awx_k8s_bearer_token"]]
    unreachable = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=300, check=False)
    output = unreachable.stdout + unreachable.stderr
    assert unreachable.returncode != 0 and "TASK [The project]" in output and "TASK [The inventory]" not in output, output
    assert "Unsupported parameters" not in output and "Connection refused" in output, output


def closed_port():
    """A local port nothing listens on (the socket that held it is closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
