# The two commands of README.md. Each creates .venv (Python 3.11+) and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test serve lint typecheck protos bench-load loadtest loadtest-production faults faults-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

## demo: start the server on a private Redis with synthetic customers and print real decisions
demo: $(STAMP)
	$(BIN)/nbo demo

## test: generated-code drift check, lint, format check, types, import rules, then the whole test suite
test: $(STAMP)
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
