"""Launch a job template of awx/job_templates.yml with ansible-runner the way AWX launches a job: the survey's answers
(defaults for questions not answered) as extra vars over the template's own, the template's inventory, `--check` for a
check job, `--diff` when the template has diff mode, `--limit` when asked, and the Kubernetes credential's inputs as the
K8S_AUTH_* environment variables AWX's injector sets."""

import os
import sys

import ansible_runner
import yaml

from tests.integration.ansible_runner import REPO

TEMPLATES_FILE = os.path.join(REPO, "awx", "job_templates.yml")


def load_templates():
    with open(TEMPLATES_FILE, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def template_named(templates, name):
    return next(template for template in templates["job_templates"] if template["name"] == name)


def survey_extra_vars(survey, answers):
    """The extra vars AWX passes for a survey: each answer (or the question's default when it has one), typed as AWX
    types them (integer, float, multiselect as a list); unanswered questions without a default are left out."""
    extra_vars = {}
    for question in survey:
        name = question["variable"]
        if name in answers:
            extra_vars[name] = answers[name]
            continue
        default = question.get("default")
        if default in (None, "") and question["type"] not in ("integer", "float"):
            continue
        if question["type"] == "integer":
            extra_vars[name] = int(default)
        elif question["type"] == "float":
            extra_vars[name] = float(default)
        elif question["type"] == "multiselect":
            extra_vars[name] = [choice for choice in str(default).split("\n") if choice]
        else:
            extra_vars[name] = default
    return extra_vars


def credential_env(kubernetes_credential):
    """The built-in Kubernetes credential type's injector: host, bearer token, TLS verification (and the CA as a file)."""
    environ = {"K8S_AUTH_HOST": kubernetes_credential["host"], "K8S_AUTH_API_KEY": kubernetes_credential["bearer_token"],
               "K8S_AUTH_VERIFY_SSL": str(bool(kubernetes_credential.get("verify_ssl", False)))}
    if kubernetes_credential.get("ssl_ca_cert_file"):
        environ["K8S_AUTH_SSL_CA_CERT"] = kubernetes_credential["ssl_ca_cert_file"]
    return environ


def launch(templates, name, private_data_dir, credential, answers=None, limit=None, inventory_vars=None):
    """Run template ``name`` with ansible-runner; the finished Runner (status, rc, stats, events).
    ``inventory_vars`` are the site's own variables (where the sandbox lives, its free ports): extra vars below the
    survey's, as AWX would take them from the inventory or the template."""
    template = template_named(templates, name)
    extra_vars = dict(inventory_vars or {})
    extra_vars.update(templates.get("common_extra_vars") or {})
    extra_vars.update(template.get("extra_vars") or {})
    extra_vars.update(survey_extra_vars(template.get("survey") or [], answers or {}))
    cmdline = []
    if template["job_type"] == "check":
        cmdline.append("--check")
    if template.get("diff_mode"):
        cmdline.append("--diff")
    environ = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               "ANSIBLE_COLLECTIONS_PATH": "%s/.build/collections:%s/.build/deps" % (REPO, REPO),
               "ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg")}
    environ.update(credential_env(credential))
    inventory = os.path.join(REPO, templates["inventory"]["source_path"])
    return ansible_runner.run(private_data_dir=str(private_data_dir), project_dir=REPO, playbook=template["playbook"],
                              inventory=inventory, extravars=extra_vars, envvars=environ, cmdline=" ".join(cmdline) or None,
                              limit=limit, quiet=True, timeout=900)
