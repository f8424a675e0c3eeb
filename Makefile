# Tether developer commands. `make run` and `make test` set everything up themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit integration bench clean setup js-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,redis]'
	touch $(STAMP)

setup: $(STAMP)

# Node.js packages for the JS SDK tests (the real `centrifuge` npm client).
tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

js-deps: tests/js/node_modules/.installed

## Start Tether on the embedded default, with the dev config (chat page on :9000).
run: $(STAMP)
	$(BIN)/tether serve --config dev/tether.dev.toml

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

## The whole suite: lint, types, unit and integration tests (real SDKs, real sockets).
test: $(STAMP) js-deps lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/tether bench --help

clean:
	rm -rf $(VENV) tests/js/node_modules .pytest_cache .mypy_cache .ruff_cache
