# modelship: CI/CD for AI applications on Apache Airflow 3. Every target calls `python -m devstack`
# (the development stack) or the tools in .venv; `make bootstrap` installs what is missing.
#   make up [K8S=1]   install what is missing, start the local stack and Airflow on 127.0.0.1:8080;
#                     K8S=1 also starts the local Kubernetes cluster and releases go there
#   make down         stop everything `make up` started
#   make demo [TARGET=kubernetes]   the whole story headless (model → ci → release → /score → status)
#   make test         ruff and the whole test suite, the real-cluster and compose-stack suites included
#                     (`make test QUICK=1` leaves those two out)
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: up down status test lint bootstrap bootstrap-test lock demo

bootstrap:
	@devstack/bootstrap.sh

# What the tests need on top: Chromium for the UI pages (tests/e2e/test_deployments_page.py).
bootstrap-test:
	@devstack/bootstrap.sh --test

up: bootstrap
	@$(PY) -m devstack up $(if $(filter 1 yes true,$(K8S)),--k8s)

down:
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

# Against the distributed stack when `make up-distributed` has it running, else against `make up`'s (started
# if it is not; TARGET=kubernetes starts it with the local cluster).
demo: bootstrap
	@if $(PY) -m devstack distributed running; then \
	  echo "demo against the distributed stack (make up-distributed)"; env=.state/distributed/modelship.env; \
	else \
	  $(MAKE) --no-print-directory up $(if $(filter kubernetes,$(TARGET)),K8S=1) && env=.state/modelship.env; \
	fi && set -a && . ./$$env && set +a && $(PY) -m devstack demo $(if $(TARGET),--target $(TARGET))

status:
	@$(PY) -m devstack status

lint: bootstrap
	.venv/bin/ruff check .

# The real-cluster (devstack/k8s-local) and compose-stack (Celery workers) suites are opt-in inside pytest,
# on here unless QUICK=1.
FULL := $(if $(QUICK),0,1)
test: bootstrap-test lint
	MODELSHIP_K8S=$${MODELSHIP_K8S:-$(FULL)} MODELSHIP_DISTRIBUTED=$${MODELSHIP_DISTRIBUTED:-$(FULL)} \
	  .venv/bin/pytest $(PYTEST_ARGS)

# Re-resolve requirements.in into the fully pinned requirements.txt (needs PyPI).
lock:
	rm -rf .state/lock-venv && python3 -m venv .state/lock-venv
	.state/lock-venv/bin/pip install -q -r requirements.in
	{ echo "# Generated from requirements.in by 'make lock' (pip freeze of a fresh venv). Do not edit by hand."; \
	  .state/lock-venv/bin/pip freeze; } > requirements.txt
	rm -rf .state/lock-venv

# The scale-out stack: Airflow on Postgres + Redis + two Celery workers (docker-compose.airflow.yml),
# beside `make up` on other ports. docs/scale-out.md.
.PHONY: up-distributed down-distributed
up-distributed: bootstrap
	@$(PY) -m devstack distributed up

down-distributed:
	@if [ -x $(PY) ]; then $(PY) -m devstack distributed down; fi

# Benchmarks (bench/): each prints its baseline, result and ratio; together they write bench/RESULTS.md.
# Long (about 1.5 h on 2 cores); `make bench BENCH_ARGS="--only parse serving"` runs some of them.
.PHONY: bench
bench: bootstrap
	@command -v wrk >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
	$(PY) -m bench.run_all $(BENCH_ARGS)
