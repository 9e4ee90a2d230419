# modelship: CI/CD for AI applications on Apache Airflow 3.
#   make up     install what is missing, start the local stack and Airflow on 127.0.0.1:8080
#   make down   stop everything `make up` started
#   make test   the whole test suite (it starts the real components it needs itself, the local Kubernetes
#               cluster included; `make test QUICK=1` leaves it out). The compose-stack suite runs with
#               `make test MODELSHIP_DISTRIBUTED=1` (not yet in CI: see issue 11)
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: up down status test lint bootstrap lock demo

bootstrap:
	@scripts/bootstrap.sh

up: bootstrap
	@$(PY) -m modelship.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m modelship.stack down; fi

# The whole story headless: model → ci → release → /score → status, twice. Against the distributed stack
# when `make up-distributed` has it running, else against `make up`'s (started if it is not).
demo: bootstrap
	@if $(PY) -m modelship.distributed running; then \
	  echo "demo against the distributed stack (make up-distributed)"; env=.state/distributed/modelship.env; \
	else \
	  $(MAKE) --no-print-directory up && env=.state/modelship.env; \
	fi && set -a && . ./$$env && set +a && $(PY) -m modelship.demo

status:
	@$(PY) -m modelship.stack status

lint: bootstrap
	.venv/bin/ruff check .

# The real-cluster (shared/k8s-local) and compose-stack (Celery workers) suites are opt-in inside pytest,
# on here unless QUICK=1.
FULL := $(if $(QUICK),0,1)
test: bootstrap lint
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
	@$(PY) -m modelship.distributed up

down-distributed:
	@if [ -x $(PY) ]; then $(PY) -m modelship.distributed down; fi

# Benchmarks (bench/): each prints its baseline, result and ratio; together they write bench/RESULTS.md.
# Long (about 1.5 h on 2 cores); `make bench BENCH_ARGS="--only parse serving"` runs some of them.
.PHONY: bench
bench: bootstrap
	@command -v wrk >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
	$(PY) -m bench.run_all $(BENCH_ARGS)
