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
	rm -rf $(VENV) $(SDK_VENV) dist .pytest_cache .ruff_cache .coverage
