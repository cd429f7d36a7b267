# STORM — the two commands: `make run` and `make test`.  Everything else here supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PACKAGES := storm gateway tenants consumers db
export STORM_SERVICES_DIR ?= $(CURDIR)/.services

.PHONY: run test install lint scan services-up services-down browser-deps clean

## run: a running STORM on embedded defaults at http://127.0.0.1:8000 (Ctrl-C stops it)
run: install
	$(BIN)/storm dev --open

## install: the virtualenv with STORM and its dev dependencies (re-run when pyproject.toml changes)
install: $(STAMP)
$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing STORM (first run takes a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

## test: install, start the services, lint, scan, run the whole suite with coverage
test: install services-up browser-deps
	@mkdir -p reports
	@status=0; \
	$(MAKE) --no-print-directory lint scan || status=$$?; \
	if [ $$status -eq 0 ]; then \
		STORM_TEST_PG_URL="$$(scripts/pg.sh url)" $(BIN)/pytest --cov --cov-report=term \
			--cov-report=xml:reports/coverage.xml --junitxml=reports/junit.xml || status=$$?; \
	fi; \
	$(MAKE) --no-print-directory services-down; exit $$status

lint: install
	$(BIN)/ruff check .

## scan: bandit (no high-severity finding) and pip-audit (no known vulnerability)
scan: install
	$(BIN)/bandit -q -r $(PACKAGES) --severity-level high --confidence-level medium
	$(BIN)/pip-audit --progress-spinner off --skip-editable

services-up:
	scripts/pg.sh up

services-down:
	scripts/pg.sh down

browser-deps:
	scripts/ensure-chromium.sh

clean:
	rm -rf $(VENV) reports .pytest_cache .ruff_cache .coverage
