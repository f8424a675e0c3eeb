# Tether developer commands. `make run` and `make test` set everything up themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit integration bench clean setup js-deps system-deps

# The product (tether) and, beside it, the bench distribution (bench/pyproject.toml): the
# integration tests use its real-process harnesses (redis-server, Redis Cluster, a cluster
# behind HAProxy) and smoke-test the bench itself.
$(STAMP): pyproject.toml bench/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,redis]' -e bench
	touch $(STAMP)

setup: $(STAMP)

# Node.js packages for the JS SDK tests (the real `centrifuge` npm client).
tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

js-deps: tests/js/node_modules/.installed

# Debian packages the suite needs (Node.js, npm, redis-server, haproxy), if missing.
system-deps:
	bash scripts/system-deps.sh

## Start Tether on the embedded default, with the dev config (chat page on :9000).
## CONFIG=examples/backend/tether.toml: with the example backend's hooks (make example-backend).
CONFIG ?= dev/tether.dev.toml
run: $(STAMP)
	$(BIN)/tether serve --config $(CONFIG)

## The example backend (examples/backend/README.md) on :5000, for `make run CONFIG=...`.
.PHONY: example-backend
example-backend: $(STAMP)
	$(BIN)/python examples/backend/app.py

lint: $(STAMP)
	$(BIN)/ruff check src bench tests
	$(BIN)/ruff format --check src bench tests

typecheck: $(STAMP)
	$(BIN)/mypy

## The whole suite: lint, types, unit and integration tests (real SDKs, real sockets).
test: system-deps $(STAMP) js-deps lint typecheck
	$(BIN)/pytest

# Node.js peer of the bench (npm `socket.io`), pinned by its package-lock.json.
bench/js/node_modules/.installed: bench/js/package.json bench/js/package-lock.json
	cd bench/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Tether vs the raw-asyncio ceiling, websockets, python-socketio and Socket.IO on Node.js,
## same scenarios, one session, then the resilience section (about 10 minutes; stopped at 15):
## rewrites docs/benchmarks.md.
bench: $(STAMP) bench/js/node_modules/.installed
	timeout 2100 $(BIN)/tether-bench compare --out docs/benchmarks.md

## Bytes on the wire with and without fossil delta compression, JSON and Protobuf: a
## 2 KiB JSON document published 100 times, each version changing one card (seconds).
.PHONY: bench-delta
bench-delta: $(STAMP)
	$(BIN)/python -m tether_bench.deltabytes --updates 100

## Everything but the resilience section, which is kept from docs/benchmarks.json
## (about 25 minutes on a shared 2-core machine).
.PHONY: bench-main
bench-main: $(STAMP) bench/js/node_modules/.installed
	timeout 2400 $(BIN)/tether-bench compare --no-resilience --out docs/benchmarks.md

## Only the resilience section of docs/benchmarks.md (slow consumers, typing storm,
## reconnect storm, publish burst; Tether on a private redis-server, about 5 minutes);
## the other sections are kept from docs/benchmarks.json. `make bench` runs it too.
.PHONY: bench-resilience
bench-resilience: $(STAMP)
	timeout 600 $(BIN)/tether-bench compare --resilience --out docs/benchmarks.md

## Only the hook-outage section of docs/benchmarks.md (issue 14: plain fan-out while a
## hook backend hangs, about 1 minute); the other sections are kept from
## docs/benchmarks.json. `make bench` and `make bench-main` run it too.
.PHONY: bench-hooks
bench-hooks: $(STAMP)
	timeout 300 $(BIN)/tether-bench compare --hooks --out docs/benchmarks.md

## Scale-out measurements (issues 3, 4 and 11): `tether serve --workers 1/2/3` over Redis, a
## 3-node cluster behind HAProxy (rooms, reconnect storms, a node killed), 100,000
## connections (7 workers, 6 bench processes); about 12 minutes, stopped at 25 (the 50,000
## run of issue 3: `tether-bench scale --only fifty`). Rewrites only the scale section of
## docs/benchmarks.md (between <!-- scale:begin/end -->) and docs/benchmarks-scale.json.
.PHONY: bench-scale
bench-scale: $(STAMP)
	timeout 1500 $(BIN)/tether-bench scale --out docs/benchmarks.md

## Regenerate the Protobuf code of the client protocol (src/tether/protocol/_pb/) from its
## client.proto with the pinned protoc; commit the result.
.PHONY: proto
proto: $(STAMP)
	$(BIN)/pip install -q -e '.[codegen]'
	cd src && ../$(BIN)/protoc -I. --python_out=. --pyi_out=. tether/protocol/_pb/client.proto

clean:
	rm -rf $(VENV) tests/js/node_modules .pytest_cache .mypy_cache .ruff_cache

## A local cluster: Redis, 3 nodes and HAProxy (no sticky sessions) until Ctrl-C.
## Clients on ws://127.0.0.1:8080, server API on :9080 (docs/howto/scale-out.md).
.PHONY: cluster
cluster: $(STAMP)
	deploy/local/cluster.sh
