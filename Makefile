# The two commands a new user runs: `make demo` and `make test`. Both install what they need:
# uv (bootstrapped into .cache/ if it is not on PATH), the .venv with `-e .[all,dev]`, and Azurite
# (the Azure Blob emulator) from npm into .cache/azurite.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AZURITE_VERSION := 3.37.0
AZURITE := .cache/azurite/node_modules/.bin/azurite-blob
UV := $(shell command -v uv 2>/dev/null || echo .cache/bootstrap/bin/uv)
PYTEST_ARGS ?=
LINT_PATHS := airflow_skyplane tests benchmarks $(wildcard dags_examples)

.PHONY: install test demo bench chaos lint typecheck check clean

install: $(VENV)/.installed azurite

$(UV):
	@echo "uv not found on PATH: bootstrapping it into .cache/bootstrap"
	$(PYTHON) -m venv .cache/bootstrap
	.cache/bootstrap/bin/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: pyproject.toml | $(UV)
	[ -x $(PY) ] || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(PY) -e '.[all,dev]'
	@touch $@

.PHONY: azurite
azurite:
	@if [ -x $(AZURITE) ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  echo "installing Azurite $(AZURITE_VERSION) into .cache/azurite"; \
	  npm install --silent --no-audit --no-fund --prefix .cache/azurite azurite@$(AZURITE_VERSION); \
	else \
	  echo "npm not found: Azure Blob tests will be skipped (install Node.js and npm to run them)"; \
	fi

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m airflow_skyplane.demo

bench: install
	@for b in benchmarks/*.py; do \
	  case $$b in benchmarks/fit_network_model.py|benchmarks/peers.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b || exit 1; \
	done

# The full tier of the fault and fuzz suites (make test runs a fast tier of the same tests).
CHAOS_EXAMPLES ?= 100000
chaos: install
	@SKYPLANE_FUZZ_EXAMPLES=$(CHAOS_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/chaos \
	  --junitxml=.cache/chaos.xml; status=$$?; \
	$(PY) tests/chaos/report.py .cache/chaos.xml $(CHAOS_EXAMPLES); exit $$status

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: install
	$(VENV)/bin/mypy airflow_skyplane

check: lint typecheck test

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache build *.egg-info
