# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench chaos deep clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ledger demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

bench: $(STAMP)
	$(BIN)/ledger bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

chaos: $(STAMP)
	CHAOS_ITERATIONS=100 $(BIN)/pytest tests/faults/test_crash_anywhere.py
	RESTART_ITERATIONS=50 $(BIN)/pytest tests/e2e/test_broker_restart.py

deep: $(STAMP)
	HYPOTHESIS_MAX_EXAMPLES=10000 $(BIN)/pytest tests/properties
	LEDGER_DEEP_TESTS=1 $(BIN)/pytest tests/faults/test_commands_while_facts_flow.py
	LEDGER_ALL_BACKENDS=1 $(BIN)/pytest -m ci_backend tests
