# The README's commands. Each bootstraps what it needs: virtualenv, pinned packages,
# and the real services (PostgreSQL, Valkey) on loopback.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: up test lint format bench services services-stop venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock examples/hr/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e . -e examples/hr
	@touch $@

## make up: run the platform with its embedded defaults (PostgreSQL + Valkey + HR API on :8000)
up: venv
	$(BIN)/tenantry up

## make test: start the test services and run the whole suite
test: venv
	scripts/services start
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format src tests examples bench
	$(BIN)/ruff check --fix src tests examples bench

## make bench: the side-by-side benchmarks (ratios printed, nothing asserted)
bench: venv
	scripts/services start postgres
	$(BIN)/python bench/tenant_overhead.py
	$(BIN)/python bench/provision.py
	$(BIN)/python bench/flags.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/observability.py
	$(BIN)/python bench/audit_chain.py
	scripts/services start valkey valkey-cluster
	$(BIN)/python bench/cache.py
	scripts/services start kafka
	$(BIN)/python bench/events.py

services: venv
	scripts/services start

services-stop: venv
	scripts/services stop

clean:
	rm -rf $(VENV) build dist src/*.egg-info
