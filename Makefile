# The two commands a newcomer needs: `make run` and `make test` (`make unit`: the fast tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test unit lint imports typecheck pytest pytest-core pytest-integration-a \
	pytest-integration-b checks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# --no-compile: bytecode is written as modules are first imported, for those that are;
# compiling every installed file up front doubled the install's time.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test,oracles]'
	touch $@ $(STAMP)

run: $(STAMP)
	$(BIN)/dispatchd serve --config dispatchd.toml

lint: $(TEST_STAMP)
	$(BIN)/ruff check dispatchd tests
	$(BIN)/ruff format --check dispatchd tests

# Layering as a test: the import-linter contracts in pyproject.toml ([tool.importlinter]).
imports: $(TEST_STAMP)
	$(BIN)/lint-imports --no-cache

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

pytest: $(TEST_STAMP)
	$(BIN)/pytest

# The fast tests, for the edit-test loop: everything that runs without a daemon (the pure
# domain, the store contract over both backends, service and worker on the in-memory store,
# the provider kinds). `pytest -m "not slow"` adds the in-process daemon tests and leaves
# out processes, crash, chaos, fuzz, bench and Textual; `make test` runs them all.
unit: $(TEST_STAMP)
	$(BIN)/pytest -m "not slow" -p no:schemathesis -p no:hypothesispytest \
		tests/unit tests/contract tests/providers

# The suite in three parts of similar length: what needs no daemon (and the console), and
# the daemon tests in two groups. Together they are `pytest`.
INTEGRATION_A := $(addprefix tests/integration/test_,lifecycle.py hostile.py \
	providers_e2e.py crash.py batch.py delivery.py api.py providers_part2.py metrics.py \
	auth.py client.py idempotency.py ordering.py)
INTEGRATION_B := $(filter-out $(INTEGRATION_A),$(wildcard tests/integration/test_*.py))

pytest-core: $(TEST_STAMP)
	$(BIN)/pytest tests/unit tests/contract tests/providers tests/console

pytest-integration-a: $(TEST_STAMP)
	$(BIN)/pytest $(INTEGRATION_A)

pytest-integration-b: $(TEST_STAMP)
	$(BIN)/pytest $(INTEGRATION_B)

# Everything: lint and layering first (seconds), then mypy and the suite's parts side by
# side: the daemon tests spend much of their time waiting on sockets and subprocesses.
test: lint imports
	$(MAKE) --no-print-directory -j3 --output-sync=target checks

checks: typecheck pytest-core pytest-integration-a pytest-integration-b

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
