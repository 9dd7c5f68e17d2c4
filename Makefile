# The two commands a newcomer needs: `make run` and `make test` (`make unit`: the fast tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test unit lint imports typecheck pytest pytest-core pytest-integration checks clean

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

# The suite in two halves: what needs no daemon (and the console), and the daemon tests.
pytest-core: $(TEST_STAMP)
	$(BIN)/pytest tests/unit tests/contract tests/providers tests/console

pytest-integration: $(TEST_STAMP)
	$(BIN)/pytest tests/integration

# Everything: lint and layering first (seconds), then mypy and both halves of the suite side
# by side, so the daemon tests' waits on sockets and subprocesses use the second core.
test: lint imports
	$(MAKE) --no-print-directory -j3 --output-sync=target checks

checks: typecheck pytest-core pytest-integration

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
