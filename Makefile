# The two commands of the README: `make demo` and `make test`. Both start with `make setup`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit stack-up stack-down bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; a no-op when up to date.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/ledgerflow demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy ledgerflow

stack-up: setup
	$(BIN)/ledgerflow stack up

stack-down: setup
	$(BIN)/ledgerflow stack down

# Lint, types, then every test against the real PostgreSQL and Kafka the stack starts, then
# another team's project run from the built wheel in a fresh virtualenv outside the repository.
test: setup lint typecheck stack-up
	bash scripts/ensure-prometheus.sh || true  # promtool + prometheus; without them those tests skip loudly
	$(BIN)/pytest
	bash scripts/run-integrator-example.sh

unit: setup
	$(BIN)/pytest tests/unit

bench: setup stack-up
	$(BIN)/ledgerflow bench ledger
	$(BIN)/ledgerflow bench e2e

clean: stack-down
	rm -rf .stack
