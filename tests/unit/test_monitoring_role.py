"""roles/monitoring builds scrape targets from the daemon roles' variables: its copy of their defaults must match them,
and its argument specs must cover its defaults with the right types."""

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLE = os.path.join(ROOT, "roles", "monitoring")
DAEMON_ROLES = ("agent", "tide", "webhook", "scheduler_extender")     # each prefixes its variables with its name


def load(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_daemon_defaults_are_the_daemon_roles_defaults():
    copied = load("roles", "monitoring", "defaults", "main.yml")["monitoring_daemon_defaults"]
    for name, value in copied.items():
        role = next(role for role in DAEMON_ROLES if name.startswith(role + "_"))
        assert load("roles", role, "defaults", "main.yml")[name] == value, "%s: roles/%s says otherwise" % (name, role)


def test_every_default_has_an_argument_spec_of_its_type():
    defaults = load("roles", "monitoring", "defaults", "main.yml")
    options = load("roles", "monitoring", "meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    python_type = {"bool": bool, "int": int, "str": str, "path": str, "dict": dict}
    for name, value in defaults.items():
        assert isinstance(value, python_type[options[name]["type"]]), name
        if "default" in options[name]:
            assert options[name]["default"] == value, name
