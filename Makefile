# STORM — the two commands: `make run` and `make test`.  Everything else here supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml sdk/pyproject.toml | sha1sum | cut -c1-12)
PACKAGES := storm gateway tenants consumers db storm_cli storm_tools sdk/storm_sdk
export STORM_SERVICES_DIR ?= $(CURDIR)/.services

.PHONY: run run-cluster test install lint infra-check scan services-up services-down browser-deps clean chaos

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

## lint: ruff, the import rules (import-linter, .importlinter), the type checker (mypy, pyproject.toml), infra-check
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	@$(MAKE) --no-print-directory infra-check

## infra-check: terraform/ and .github/workflows/ offline (terraform/README.md, "Checks"): checkov in its own
## virtualenv, actionlint built with go install, the Terraform tests, `fmt -check` when tofu or terraform is on PATH
CHECKOV := $(VENV)/checkov/bin/checkov
ACTIONLINT_VERSION := v1.7.12
ACTIONLINT := $(VENV)/tools/actionlint-$(ACTIONLINT_VERSION)/actionlint
infra-check: install $(CHECKOV) $(ACTIONLINT)
	$(CHECKOV) -d terraform -d .github --framework terraform secrets github_actions --skip-download --compact --quiet
	$(ACTIONLINT) -color=false
	$(BIN)/pytest -q -p no:cacheprovider tests/unit/test_terraform.py tests/unit/test_cost.py tests/unit/test_workflows.py
	@for tf in tofu terraform; do if command -v $$tf >/dev/null; then echo "$$tf fmt -check"; \
		$$tf fmt -check -recursive terraform || exit 1; break; fi; done

$(CHECKOV): terraform/checkov-requirements.txt
	@test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install -q -r terraform/checkov-requirements.txt
	@touch $@

$(ACTIONLINT):
	@command -v go >/dev/null || { echo "infra-check: actionlint is built with Go (go install); install Go"; exit 1; }
	GOBIN=$(abspath $(dir $(ACTIONLINT))) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

## scan: bandit (no high-severity finding) and pip-audit (no known vulnerability)
scan: install
	$(BIN)/bandit -q -r $(PACKAGES) --severity-level high --confidence-level medium
	$(BIN)/pip-audit --progress-spinner off --skip-editable

## chaos: the whole chaos matrix (chaos-experiments/) on a cluster it starts; journals and summary.md/json in
## reports/chaos/<time>/ (storm chaos run --all; STORM_CHAOS_ARGS adds options, e.g. --connections 100);
## then the services are stopped, as after `make test`
chaos: install services-up
	@status=0; $(BIN)/storm chaos run --all --no-services $(STORM_CHAOS_ARGS) || status=$$?; \
	$(MAKE) --no-print-directory services-down; exit $$status

## services-up / services-down: PostgreSQL, Pulsar, Hazelcast and Toxiproxy for the tests (docs/operations.md)
services-up:
	scripts/services.sh up all

services-down:
	scripts/services.sh down all

browser-deps:
	scripts/ensure-chromium.sh

clean:
	rm -rf $(VENV) reports .pytest_cache .ruff_cache .coverage
