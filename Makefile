# The two commands a new user runs: `make demo` and `make test`. Both install what they need: as
# root on a machine with apt-get, the Debian packages the tests use that are missing (the list is in
# airflow_skyplane/testing/requirements.py); uv (bootstrapped into .cache/ if it is not on PATH); the
# .venv with `-e .[all,dev]`; and Azurite (the Azure Blob emulator) from npm into .cache/azurite.
# `make test` then says in one line which groups of tests will skip here, and why (nothing if none).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AZURITE_VERSION := 3.37.0
AZURITE := .cache/azurite/node_modules/.bin/azurite-blob
UV := $(shell command -v uv 2>/dev/null || echo .cache/bootstrap/bin/uv)
PYTEST_ARGS ?=
LINT_PATHS := airflow_skyplane tests benchmarks $(wildcard dags_examples)

.PHONY: install test demo bench chaos test-full lint typecheck check clean

install: system-packages $(VENV)/.installed azurite

# Checks for each package's commands first, so it costs a few milliseconds when all are there; never
# runs apt-get without root. python3-venv is added when uv must be bootstrapped and this Python
# cannot make a virtualenv (Debian's python3 without it has no ensurepip).
.PHONY: system-packages
system-packages:
	@missing="$$($(PYTHON) -I airflow_skyplane/testing/requirements.py packages)"; \
	if [ ! -x $(UV) ] && ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then missing="$$missing python3-venv"; fi; \
	missing="$$(echo $$missing)"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian packages: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(UV): | system-packages
	@echo "uv not found on PATH: bootstrapping it into .cache/bootstrap"
	$(PYTHON) -m venv .cache/bootstrap
	.cache/bootstrap/bin/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: pyproject.toml | $(UV) system-packages
	[ -x $(PY) ] || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(PY) -e '.[all,dev]'
	@touch $@

.PHONY: azurite
azurite: system-packages
	@if [ -x $(AZURITE) ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  echo "installing Azurite $(AZURITE_VERSION) into .cache/azurite"; \
	  npm install --silent --no-audit --no-fund --prefix .cache/azurite azurite@$(AZURITE_VERSION); \
	else \
	  echo "npm not found: Azurite not installed (Debian packages nodejs and npm; make install as root installs them)"; \
	fi

test: install
	@$(PY) -m airflow_skyplane.testing.requirements notice
	$(PY) -m pytest $(PYTEST_ARGS)

# `make demo MIB=200` for a smaller day's partition (default 1536 MiB)
demo: install
	$(PY) -m airflow_skyplane.demo $(if $(MIB),--mib $(MIB))

bench: install
	@for b in benchmarks/*.py; do \
	  case $$b in benchmarks/fit_network_model.py|benchmarks/peers.py|benchmarks/wan.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b || exit 1; \
	done

# The full tier of the fault, security, load and fuzz suites (make test runs a fast tier of the same
# tests): 100,000 fuzz inputs per target, a 30 s link cut, 100,000 objects, 8 concurrent DAG runs.
CHAOS_EXAMPLES ?= 100000
CHAOS_CUT_S ?= 30
CHAOS_LOAD_OBJECTS ?= 100000
CHAOS_DAG_RUNS ?= 8
# 100,000 program-parser inputs take 10 to 20 minutes on 2 busy cores: more than make test's 900 s bound
CHAOS_TIMEOUT_S ?= 3600
chaos: install
	@rm -f .cache/chaos-ledger.jsonl; \
	SKYPLANE_CHAOS_FULL=1 SKYPLANE_FUZZ_EXAMPLES=$(CHAOS_EXAMPLES) SKYPLANE_CHAOS_CUT_S=$(CHAOS_CUT_S) \
	SKYPLANE_CHAOS_LOAD_OBJECTS=$(CHAOS_LOAD_OBJECTS) SKYPLANE_CHAOS_DAG_RUNS=$(CHAOS_DAG_RUNS) \
	SKYPLANE_CHAOS_LEDGER=$(CURDIR)/.cache/chaos-ledger.jsonl \
	  $(PY) -m pytest -q -p no:cacheprovider -o timeout=$(CHAOS_TIMEOUT_S) tests/chaos $(PYTEST_ARGS) \
	  --junitxml=.cache/chaos.xml; status=$$?; \
	$(PY) tests/chaos/report.py .cache/chaos.xml $(CHAOS_EXAMPLES) .cache/chaos-ledger.jsonl; exit $$status

# The long cases make test leaves out (marked full_tier, each beside a shorter case of the same
# behaviour in make test): five backfill runs at once, Airflow's own retries after a kill, the chaos
# suites' full figures
test-full: install
	SKYPLANE_FULL_TIER=1 $(PY) -m pytest -m full_tier $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: install
	$(VENV)/bin/mypy airflow_skyplane

check: lint typecheck test

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache build *.egg-info
