# The two commands of README.md. Each creates .venv (Python 3.11+) and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# exact versions with hashes (scripts/lock.py); pyproject.toml keeps the loose ranges
LOCKS := requirements.lock requirements-dev.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCKS) | cksum | cut -d' ' -f1)

.PHONY: demo test install lock serve lint typecheck protos bench-load loadtest loadtest-production faults faults-quick clean

# the dev lock, hash-checked, then the project itself without dependencies (the lock has them,
# and the build backend: no unpinned download at all); then the check that the lock still
# matches pyproject.toml
$(STAMP): pyproject.toml $(LOCKS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python scripts/lock.py --check
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## lock: re-resolve requirements.lock and requirements-dev.lock from pyproject.toml (UPGRADE=1: newest of everything)
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv packaging
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)

## demo: start the server on a private Redis with synthetic customers and print real decisions
demo: $(STAMP)
	$(BIN)/nbo demo

## test: lock and generated-code drift checks, lint, format check, types, import rules, then the whole test suite
test: $(STAMP)
	$(BIN)/python scripts/lock.py --check
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/python scripts/gen_openapi.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q

serve: $(STAMP)
	$(BIN)/nbo serve

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## protos: regenerate server/gen from proto/ (commit the result)
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

## loadtest: h2load against the server and the echo baseline (see loadtest/README.md)
loadtest: $(STAMP)
	bash loadtest/run.sh

## loadtest-production: the production mix (model, bandit, budgets, Zipf customers, outcomes; 10/100/500 offers)
loadtest-production: $(STAMP)
	$(BIN)/python -m loadtest.production

## faults: the issue-10 fault suite against real Redis and `nbo serve` processes (see loadtest/README.md)
faults: $(STAMP)
	$(BIN)/python -m loadtest.faults

faults-quick: $(STAMP)
	$(BIN)/python -m loadtest.faults --quick

clean:
	rm -rf $(VENV) .nbo .pytest_cache .mypy_cache .ruff_cache
