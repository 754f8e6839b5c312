# katalyst.colocation — the two commands a newcomer needs:
#   make demo   site.yml + the sample workload (playbooks/examples) on the embedded sandbox (twice: the second run must say changed=0);
#               make demo KATALYST_BACKEND=real runs it on the real Kubernetes control plane instead
#   make test   sanity, units, ansible-lint, pytest (unit + integration), molecule tiers when root
SHELL := /bin/bash
PY ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/.build
COLL := $(BUILD)/collections/ansible_collections
DEPS := $(BUILD)/deps
STAMP := $(VENV)/.installed
# Collections from the `ansible` package on the package index (Galaxy is not reachable here).
ANSIBLE_BUNDLE := ansible==12.3.0
DEP_COLLECTIONS := ansible/posix community/general community/crypto kubernetes/core awx/awx
SANDBOX_STATE := $(CURDIR)/.sandbox
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)/collections:$(DEPS)
export PYTHONPATH := $(BUILD)/collections:$(CURDIR)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(BIN):$(PATH)

.PHONY: all venv links deps demo test unit integration sanity units lint pytest sandbox-up sandbox-down clean benchmarks reliability

all: test

$(STAMP): requirements.txt test-requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r test-requirements.txt
	touch $@

venv: $(STAMP)

links: $(COLL)/katalyst/colocation
$(COLL)/katalyst/colocation:
	mkdir -p $(COLL)/katalyst
	ln -sfn $(CURDIR) $@

deps: $(DEPS)/.installed
$(DEPS)/.installed: $(STAMP)
	rm -rf $(DEPS) $(BUILD)/wheel && mkdir -p $(DEPS) $(BUILD)/wheel
	$(BIN)/pip download -q --no-deps -d $(BUILD)/wheel $(ANSIBLE_BUNDLE)
	$(BIN)/python scripts/extract_collections.py $(BUILD)/wheel $(DEPS) $(DEP_COLLECTIONS)
	rm -rf $(BUILD)/wheel
	touch $@

setup: venv links deps

# The execution environment (docs/awx.md): the collection's tarball, then the image (podman or docker).
.PHONY: ee
ee: setup
	rm -f $(BUILD)/ee/*.tar.gz && $(BIN)/ansible-galaxy collection build --force --output-path $(BUILD)/ee
	$(BIN)/ansible-builder build -f execution-environment.yml -c $(BUILD)/ee/context -t katalyst-colocation-ee:$$(sed -n 's/^version: //p' galaxy.yml)

# --- tests -------------------------------------------------------------------------------------
# The real control plane is built first (cold: ~1,250 CPU-seconds, 10-35 min on 2 cores; then cached in .build/kube) so that the
# cluster-side integration tests run on both backends; make test refuses to skip the real one.
test: setup kube-build sanity units lint
	$(MAKE) pytest KATALYST_REQUIRE_REAL_BACKEND=1
	$(MAKE) molecule

sanity: setup
	scripts/ansible-test.sh sanity --venv --python 3.11

units: setup
	scripts/ansible-test.sh units --venv --python 3.11

lint: setup
	$(BIN)/ansible-lint --offline

# Cluster-side integration tests on the emulator and on the real control plane (skipped, with the reason, until
# `make kube-build` has built it; BACKEND=emulator|real|both).
BACKEND ?= both
pytest: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --backend $(BACKEND) tests/unit tests/integration tests/reliability

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration: setup
	$(BIN)/python -m pytest -q tests/integration

# The reliability figures at full size (kills, failovers, faults, fuzzing; ~15-20 min): one line per figure.
reliability: setup kube-build
	$(BIN)/python tests/benchmarks/reliability.py

benchmarks: setup
	for b in tests/benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# --- the embedded sandbox ------------------------------------------------------------------------
# KATALYST_BACKEND=real: the same demo on the real Kubernetes control plane (built first when missing, ~30 min
# cold; then up in ~10-20 s) instead of the API emulator. `sandbox-down` stops whichever runs.
KATALYST_BACKEND ?= emulator
sandbox-up: setup $(if $(filter real,$(KATALYST_BACKEND)),kube-build)
	$(BIN)/python -m sandbox up --state-dir $(SANDBOX_STATE) --backend $(KATALYST_BACKEND)

sandbox-down:
	-$(BIN)/python -m sandbox down --state-dir $(SANDBOX_STATE)

demo: setup sandbox-up
	$(BIN)/python -m sandbox demo --state-dir $(SANDBOX_STATE)

# --- the real Kubernetes tier (sandbox/kube/README.md) -------------------------------------------
# The pinned release's kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl and
# etcd as one binary in .build/kube/<version>/ (cold ~30 min on 2 cores; seconds when up to date).
.PHONY: kube-build cluster-up cluster-down cluster-status
kube-build:
	sandbox/kube/build.sh

# etcd, kube-apiserver (TLS, Node+RBAC), kube-controller-manager and kube-scheduler on loopback, state in .cluster/
# (KUBECONFIG=.cluster/admin.kubeconfig). CLUSTER_EXTENDER_CONFIG: the KubeSchedulerConfiguration the
# scheduler_extender role writes, whose `extenders` entry kube-scheduler then uses.
CLUSTER_STATE := $(CURDIR)/.cluster
CLUSTER_EXTENDER_CONFIG ?=
cluster-up: kube-build venv
	$(BIN)/python -m sandbox.kube.cluster up --state-dir $(CLUSTER_STATE) \
	  $(if $(CLUSTER_EXTENDER_CONFIG),--scheduler-extender-config $(CLUSTER_EXTENDER_CONFIG))

cluster-status:
	$(BIN)/python -m sandbox.kube.cluster status --state-dir $(CLUSTER_STATE)

cluster-down: node-down
	-$(BIN)/python -m sandbox.kube.cluster down --state-dir $(CLUSTER_STATE)

# A real kubelet node joined to that control plane (as root: containerd + runc from .ci/apt-packages.txt, images built
# here, CNI bridge katalyst-cni0, cgroup root /katalyst-node); `node-down` leaves the host as it found it.
.PHONY: node-up node-down node-status
node-up: cluster-up
	$(BIN)/python -m sandbox.kube.node up --cluster-state $(CLUSTER_STATE)

node-status:
	$(BIN)/python -m sandbox.kube.node status --cluster-state $(CLUSTER_STATE)

node-down:
	-$(BIN)/python -m sandbox.kube.node down --cluster-state $(CLUSTER_STATE)

include mk/molecule.mk

clean: sandbox-down cluster-down
	rm -rf $(BUILD) tests/output .pytest_cache $(SANDBOX_STATE) $(CLUSTER_STATE)
