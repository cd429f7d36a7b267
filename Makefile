# STORM — the two commands: `make run` and `make test`.  Everything else here supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml sdk/pyproject.toml | sha1sum | cut -c1-12)
PACKAGES := storm gateway tenants consumers db storm_cli storm_tools sdk/storm_sdk
export STORM_SERVICES_DIR ?= $(CURDIR)/.services

.PHONY: run run-cluster test install lint scan services-up services-down browser-deps clean

## run: a running STORM on embedded defaults at http://127.0.0.1:8000 (Ctrl-C stops it)
run: install
	$(BIN)/storm dev --open

## run-cluster: the services plus two gateways (:8001, :8002), the tenants API (:8003) and the consumers
## as separate processes on Pulsar, Hazelcast and PostgreSQL (Ctrl-C stops the STORM processes)
run-cluster: install
	$(BIN)/storm cluster

## install: the virtualenv with STORM, the SDK distribution (sdk/) and the dev dependencies
install: $(STAMP)
$(STAMP): pyproject.toml sdk/pyproject.toml
	@echo "==> creating $(VENV) and installing STORM (first run takes a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q -e ./sdk -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

## test: install, start the services, lint, scan, run the whole suite with coverage
test: install services-up browser-deps
	@mkdir -p reports
	@status=0; \
	$(MAKE) --no-print-directory lint scan || status=$$?; \
	if [ $$status -eq 0 ]; then \
		env $$(scripts/services.sh env all) $(BIN)/pytest --cov --cov-report=term \
			--cov-report=xml:reports/coverage.xml --junitxml=reports/junit.xml || status=$$?; \
	fi; \
	$(MAKE) --no-print-directory services-down; exit $$status

## lint: ruff, the import rules (import-linter, .importlinter) and the type checker (mypy, pyproject.toml)
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

## scan: bandit (no high-severity finding) and pip-audit (no known vulnerability)
scan: install
	$(BIN)/bandit -q -r $(PACKAGES) --severity-level high --confidence-level medium
	$(BIN)/pip-audit --progress-spinner off --skip-editable

## services-up / services-down: PostgreSQL, Pulsar and Hazelcast for the tests (docs/operations.md)
services-up:
	scripts/services.sh up all

services-down:
	scripts/services.sh down all

browser-deps:
	scripts/ensure-chromium.sh

clean:
	rm -rf $(VENV) reports .pytest_cache .ruff_cache .coverage
