# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv bytecode test demo bench lint xsoar-package xsoar-pack validate-xsoar docs readme-coverage clean

venv: $(STAMP)

# Recreate the environment whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(MAKE) --no-print-directory bytecode
	touch $(STAMP)

# What pip does for a regular install: byte-compile the CLI's modules once, so machines that set
# PYTHONDONTWRITEBYTECODE do not compile them on every `mde` run. (The plugin has its own cache.)
bytecode:
	$(BIN)/python -m compileall -q xsoar_local demistomock.py

lint: venv
	$(BIN)/ruff check .

PYTEST := $(BIN)/python -m pytest --cov=MicrosoftDefenderForEndpoint --cov-report=term-missing:skip-covered --cov-fail-under=90
RUNS ?= 5

test: venv lint
	$(PYTEST) $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-oldest-python

# The plugin's unit tests again on Python 3.10, the oldest it supports (XSOAR images), in a venv of its own:
# the standard library differs (3.10's datetime.fromisoformat takes only 3 or 6 fractional digits).
# The CLI, emulator and end-to-end tests run on the main venv's Python only.
OLDEST_PYTHON ?= $(shell for p in $$(command -v python3.10) $$HOME/.pyenv/versions/3.10*/bin/python3.10 \
	/usr/bin/python3.10 /usr/local/bin/python3.10; do "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' \
	2>/dev/null && echo "$$p" && break; done)
OLD_VENV := .venv-py310
PLUGIN_UNIT_TESTS := $(filter-out tests/test_e2e% tests/test_emulator% tests/test_under_load.py tests/test_bench.py \
	tests/test_examples.py tests/test_session_checks.py,$(wildcard tests/test_*.py))

.PHONY: test-oldest-python
test-oldest-python:
	@if [ -z "$(OLDEST_PYTHON)" ]; then \
		echo "NOT RUN: no Python 3.10 found; the plugin's unit tests ran on $$($(BIN)/python -V) only"; exit 0; fi; \
	if [ ! -f $(OLD_VENV)/.installed ] || [ pyproject.toml -nt $(OLD_VENV)/.installed ]; then \
		$(OLDEST_PYTHON) -m venv $(OLD_VENV) && $(OLD_VENV)/bin/python -m pip install --quiet --upgrade pip && \
		$(OLD_VENV)/bin/python -m pip install --quiet -e '.[test]' && touch $(OLD_VENV)/.installed || exit 1; fi; \
	echo "the plugin's unit tests on $$($(OLD_VENV)/bin/python -V):"; \
	$(OLD_VENV)/bin/python -m pytest -p no:cacheprovider $(PLUGIN_UNIT_TESTS)

# The suite RUNS times while two busy loops saturate the CPU; prints passes/RUNS, fails unless all passed.
.PHONY: test-under-load
test-under-load: venv
	$(BIN)/python -m lab.under_load --runs $(RUNS) -- $(PYTEST) $(PYTEST_ARGS)

demo: venv
	$(BIN)/python -m lab.demo

bench: venv bytecode
	$(BIN)/python -m lab.bench

xsoar-package: venv
	$(BIN)/python -m xsoar_local.package --out dist

# The integration as a content pack folder: dist/Packs/<Pack>/ (what `demisto-sdk validate` checks).
xsoar-pack: venv
	rm -rf dist/Packs
	$(BIN)/python -m xsoar_local.pack --out dist

# XSOAR's validator in its own environment (large, and not part of `make test`); offline checks only.
SDK_VENV := .venv-sdk
SDK_STAMP := $(SDK_VENV)/.installed
$(SDK_STAMP):
	$(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SDK_VENV)/bin/python -m pip install --quiet 'demisto-sdk>=1.39.13,<1.40'
	touch $(SDK_STAMP)

validate-xsoar: xsoar-pack $(SDK_STAMP)
	$(BIN)/python -m xsoar_local.validate_pack --sdk $(SDK_VENV)/bin/demisto-sdk --dist dist

docs: venv readme-coverage
	$(BIN)/python -m xsoar_local.docs MicrosoftDefenderForEndpoint.yml > docs/commands.md

readme-coverage: venv
	$(BIN)/python -m xsoar_local.coverage --readme README.md

clean:
	rm -rf $(VENV) $(SDK_VENV) $(OLD_VENV) dist .pytest_cache .ruff_cache .coverage
