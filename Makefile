# The two commands: `make up` (the local stack with the web chat) and `make test` (every test layer).
# Both run `make setup` first, which installs whatever this machine still lacks (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
STACK ?= dev
STACK_FILE ?=
PYTEST_ARGS ?=
PLAN_ARGS ?=
BASE ?=
HOSTS ?=
# `make verify` checks the local stack unless STACK is given on the command line (STACK's default is for plan).
VERIFY_STACK = $(if $(filter command line,$(origin STACK)),$(STACK),local)
BENCH_ARGS ?=

TO ?=
DRY_RUN ?=
YES ?=
DR_ARGS = $(if $(DRY_RUN),--dry-run) $(if $(YES),--yes)

.PHONY: help setup up down images test test-fast lint plan pin-digests bench loadtest clean drill failover failback verify

help:
	@echo "make up     - set up and run the local stack (Redis, vLLM on CPU, gateway, Nginx, Prometheus, web chat)"
	@echo "make down   - stop everything 'make up' started"
	@echo "make images - build the gateway and edge images with Docker, offline (IMAGES=1 make up runs them)"
	@echo "make test   - set up and run every test layer (lint included)"
	@echo "make test-fast - lint + every layer that starts no vLLM (the inner loop, under 2 minutes)"
	@echo "make plan STACK=prod | STACK_FILE=path - render a stack offline: resource tree, manifests, validation"
	@echo "make plan STACK=prod BASE=origin/main - offline diff against a git ref: resources added/removed/changed"
	@echo "make pin-digests STACK=prod - replace the stack's image tags by the digests its registry serves (skopeo)"
	@echo "make verify [STACK=prod [HOSTS=ssh://gpu-a1,...]] - testinfra: the local stack (default), or a"
	@echo "             stack's GPU hosts (ssh) and pods (kubectl), expectations from its settings"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - the gateway side by side with the direct path (not part of test): build/bench/"
	@echo "make bench ROUTING=1 - routing policies vs vllm-router on two real vLLMs: build/bench/routing.json"
	@echo "make loadtest URL=... RPS=... [STREAM=1] [KEY=...] [DURATION=60s] - Locust, P95 TTFT vs the SLO"
	@echo "make failover TO=site-b [DRY_RUN=1] [YES=1] - pin DNS, promote TO, demote the old primary (Pulumi)"
	@echo "make failback [DRY_RUN=1] [YES=1] - the same back to the original primary, once it has caught up"
	@echo "make drill  - the DR drill on this machine: two sites, kill A under traffic, fail over, fail back"

setup:
	@bash setup/install.sh

up: setup
	$(PY) -m localstack up

down:
	$(PY) -m localstack down

images: setup
	$(PY) -m localstack images

# (`make test` runs the same two as tests/architecture/test_lint.py, beside the other tests)
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

# Three pytest-xdist workers (tests/conftest.py groups the tests that share servers; most of their time is waiting
# on generation, so a third worker on two cores pays: 634 s against 871 s in the same conditions); TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
XDIST = -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

plan: setup
ifneq ($(BASE),)
	$(PY) -m infra.plan_diff --stack $(STACK) --base $(BASE)
else
	$(PY) -m infra.plan $(if $(STACK_FILE),--stack-file $(STACK_FILE),--stack $(STACK)) $(PLAN_ARGS)
endif

verify:
	$(PY) -m verify --stack $(VERIFY_STACK) $(if $(HOSTS),--hosts $(HOSTS))

pin-digests:
	$(PY) -m infra.pin_digests --stack $(STACK)

bench: setup
	$(PY) -m bench $(if $(filter-out 0,$(ROUTING)),routing) $(BENCH_ARGS)

loadtest: setup
	$(PY) -m bench loadtest $(if $(URL),--url $(URL)) --rps $(or $(RPS),2) $(if $(filter-out 0,$(STREAM)),--stream) \
		$(if $(KEY),--key $(KEY)) --duration $(or $(DURATION),60s)

drill: setup
	$(PY) -m dr drill

failover:
	@test -n "$(TO)" || { echo "usage: make failover TO=<site> [DRY_RUN=1] [YES=1]"; exit 2; }
	$(PY) -m dr failover --to $(TO) $(DR_ARGS)

failback:
	$(PY) -m dr failback $(DR_ARGS)

clean:
	-@for m in build/docker/run/netns/*; do [ -e "$$m" ] && umount "$$m" 2>/dev/null; done; true
	rm -rf build
