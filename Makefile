# katalyst.colocation — the two commands a newcomer needs:
#   make demo   site.yml against the embedded sandbox (twice: the second run must say changed=0)
#   make test   sanity, units, lint, pytest (unit + integration), molecule tiers when root
SHELL := /bin/bash
PY ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/.build
COLL := $(BUILD)/collections/ansible_collections
STAMP := $(VENV)/.installed
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)/collections:$(BUILD)/deps
export PYTHONPATH := $(BUILD)/collections:$(CURDIR)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: venv links deps demo test unit integration sanity lint units sandbox-up sandbox-down clean

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

unit: venv links
	$(BIN)/python -m pytest -q tests/unit

integration: venv links
	$(BIN)/python -m pytest -q tests/integration

clean:
	rm -rf $(BUILD) tests/output .pytest_cache
