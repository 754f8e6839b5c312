"""execution-environment.yml through `ansible-builder create`: the build context has a Containerfile on the declared
base image with the declared ansible-core and ansible-runner, the collection's tarball (built by ansible-galaxy from this
repository) and its dependency collections in the galaxy requirements, and its requirements.txt and bindep.txt in
_build. Then the builder stage's own introspection (its introspect.py) over the collection installed from that tarball
finds the collection's Python and system requirements, as the image build would."""

import os
import subprocess
import sys

import pytest
import yaml

from tests.integration.ansible_runner import REPO

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)


def run(*command, cwd=REPO):
    result = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def requirement_names(path):
    with open(path, encoding="utf-8") as stream:
        return {line.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for line in stream
                if line.strip() and not line.startswith(("#", "-r"))}


def test_ansible_builder_creates_the_build_context(tmp_path):
    with open(os.path.join(REPO, "execution-environment.yml"), encoding="utf-8") as stream:
        definition = yaml.safe_load(stream)
    with open(os.path.join(REPO, "galaxy.yml"), encoding="utf-8") as stream:
        galaxy = yaml.safe_load(stream)
    tarball = "%s-%s-%s.tar.gz" % (galaxy["namespace"], galaxy["name"], galaxy["version"])
    # the collection as the EE's additional_build_files expect it (.build/ee, outside the collection's own build)
    run(os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force", "--output-path", os.path.join(REPO, ".build", "ee"))
    context = tmp_path / "context"
    run(os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", str(context), "--output-filename", "Containerfile")

    containerfile = (context / "Containerfile").read_text()
    dependencies = definition["dependencies"]
    assert 'ARG EE_BASE_IMAGE="%s"' % definition["images"]["base_image"]["name"] in containerfile
    assert 'ARG ANSIBLE_INSTALL_REFS="%s %s"' % (dependencies["ansible_core"]["package_pip"], dependencies["ansible_runner"]["package_pip"]) in containerfile
    assert 'ARG PYCMD="%s"' % dependencies["python_interpreter"]["python_path"] in containerfile
    assert "ansible-core==2.19.14" in containerfile      # the ansible-core the collection is tested with (test-requirements.txt)
    build = context / "_build"
    assert (build / "requirements.txt").read_text() == open(os.path.join(REPO, "requirements.txt"), encoding="utf-8").read()
    assert (build / "bindep.txt").read_text() == open(os.path.join(REPO, "bindep.txt"), encoding="utf-8").read()
    assert (build / "collections" / tarball).is_file()
    galaxy_requirements = yaml.safe_load((build / "requirements.yml").read_text())["collections"]
    assert {"name": "collections/" + tarball, "type": "file"} in galaxy_requirements, galaxy_requirements
    assert {entry["name"] for entry in galaxy_requirements} >= {"kubernetes.core", "community.crypto", "ansible.posix"}

    # the image build's galaxy stage (offline: the collection alone) and its builder stage's introspection
    collections = tmp_path / "collections"
    run(os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--no-deps", "--force", "-p", str(collections), str(build / "collections" / tarball))
    pip_out, bindep_out = tmp_path / "requirements.out", tmp_path / "bindep.out"
    run(sys.executable, str(build / "scripts" / "introspect.py"), "introspect", str(collections), "--write-pip", str(pip_out),
        "--write-bindep", str(bindep_out))
    # (introspection leaves out what ansible-core itself brings: PyYAML)
    wanted = requirement_names(os.path.join(REPO, "requirements.txt")) - {"pyyaml"}
    assert wanted and requirement_names(pip_out) >= wanted, pip_out.read_text()
    assert "katalyst.colocation" in pip_out.read_text() and "openssl" in bindep_out.read_text(), bindep_out.read_text()
