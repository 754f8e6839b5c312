"""Run ansible-playbook from tests, with the project's collections and a JSON result per task."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_playbook(playbook_text, tmp_path, extra_args=(), extra_vars=None, env=None):
    """Returns (returncode, {task name: result}, stdout). Uses the json callback."""
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(playbook_text)
    environ = dict(os.environ)
    environ.update({"ANSIBLE_COLLECTIONS_PATH": "%s/.build/collections:%s/.build/deps" % (REPO, REPO),
                    "ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
                    "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"})
    environ.update(env or {})
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
               "-e", "ansible_python_interpreter=%s" % sys.executable, str(playbook)] + list(extra_args)
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    result = subprocess.run(command, capture_output=True, text=True, env=environ, cwd=REPO, timeout=600, check=False)
    tasks = {}
    try:
        # other stdout callbacks (the timer) may print after the JSON document
        report, _end = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{"):])
        for play in report["plays"]:
            for task in play["tasks"]:
                tasks[task["task"]["name"]] = next(iter(task["hosts"].values()))
    except (ValueError, KeyError, StopIteration):
        pass
    return result.returncode, tasks, result.stdout + result.stderr
