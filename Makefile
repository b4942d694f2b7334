# The two commands: `make run` brings the whole local stack up, `make test` runs every test.
# Both install what is missing first (idempotent; quick when done).

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
BIN := $(VENV)/bin
GO ?= go
DEVSTACK_BIN := devstack/bin/nimbus-emulators devstack/bin/nimbus-gateway devstack/bin/nimbus-load
DEVSTACK_SRC := $(shell find devstack -name '*.go' -o -name go.mod -o -name go.sum 2>/dev/null)

.PHONY: run test install lint format unit e2e gotest bench load chaos clean help

help:
	@echo "make run      install what is missing, then run the whole stack (gateway on :8080)"
	@echo "make test     install what is missing, lint, then run every test"
	@echo "make lint     ruff, ruff format --check, mypy, go vet"
	@echo "make chaos    only the chaos tests: kills, stalls, outages on a real stack (~6 min; in make test too)"
	@echo "make clean    remove the venv, built programs and local state (.nimbus/)"
	@echo "make bench    Nimbus vs mlflow models serve vs the floor (BENCH_ARGS=--quick: ~2 min), then make load"
	@echo "make load     200 req/s for 30 s on POST /v1/predict through the gateway; zero errors required"

run: install
	$(BIN)/nimbus up

test: install lint gotest
	$(BIN)/pytest

install: $(VENV)/.synced $(DEVSTACK_BIN) redis shellcheck postgresql compose chromium

# uv itself lives in its own small venv so `uv sync` can keep .venv exactly as uv.lock says.
$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras
	touch $@

$(DEVSTACK_BIN) &: $(DEVSTACK_SRC)
	cd devstack && $(GO) build -o bin/ ./cmd/...

# Memorystore's local stand-in: Debian's redis-server, installed once when missing.
redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# tests/deploy: shellcheck lints deploy/*.sh; PostgreSQL stands in for Cloud SQL (Debian's).
.PHONY: shellcheck postgresql compose chromium
shellcheck:
	@command -v shellcheck >/dev/null || { \
	  echo "installing shellcheck (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq shellcheck >/dev/null; }

# tests/e2e/test_ui.py: the jobs page in headless Chromium, Debian's browser and its driver.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# `docker compose config` checks docker-compose.yml without a Docker engine; when the docker
# CLI has no compose plugin, one is built from its Go module (pinned in deploy/tools/compose).
COMPOSE_PLUGIN := .tools/docker/cli-plugins/docker-compose
compose:
	@docker compose version >/dev/null 2>&1 || $(MAKE) --no-print-directory $(COMPOSE_PLUGIN)

$(COMPOSE_PLUGIN): deploy/tools/compose/go.mod deploy/tools/compose/go.sum
	cd deploy/tools/compose && $(GO) build -trimpath -o $(CURDIR)/$@ \
	  -ldflags "-s -X github.com/docker/compose/v5/internal.Version=v5.6.0" \
	  github.com/docker/compose/v5/cmd

# The side-by-side benchmark (bench/README.md): its own stack on free ports, about 8 minutes.
bench: install wrk
	$(UV) sync --frozen --all-extras --group bench
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(MAKE) --no-print-directory load

# A bounded load run (devstack/cmd/nimbus-load): a fixed rate, open loop, on POST /v1/predict
# through the gateway; fails on any error or a missed rate. It starts a stack of its own on
# free ports, or LOAD_URL=http://host:port uses a running one. LOAD_ARGS to change the rate.
LOAD_ARGS ?= -rate 200 -duration 30s
load: install
	devstack/bin/nimbus-load $(if $(LOAD_URL),-url $(LOAD_URL),-stack $(BIN)/nimbus) $(LOAD_ARGS)

# The load generator: Debian's wrk, installed once when missing.
wrk:
	@command -v wrk >/dev/null || { \
	  echo "installing wrk (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk >/dev/null; }

lint: $(VENV)/.synced
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@# Each function's main.py is a module named `main`: checked one at a time.
	for fn in functions/*/main.py; do $(BIN)/mypy --no-error-summary $$fn || exit 1; done

format: $(VENV)/.synced
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Only the chaos tests: kills, stalls and outages against a real stack (tests/chaos); about
# 6 minutes. `make test` runs them too.
chaos: install
	$(BIN)/pytest -m chaos tests/chaos

gotest:
	cd devstack && $(GO) vet ./... && $(GO) test ./...

clean:
	rm -rf $(VENV) .tools devstack/bin .nimbus .pytest_cache .mypy_cache .ruff_cache
