# ice-pipeline: the few commands a newcomer needs. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_QUIET ?= -q

.PHONY: help setup test test-fast lint run pipeline compare cost-to-target bench bench-ice overhead gc clean up down remote pool deploy worker trigger status mlflow-ui

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup:  ## create .venv and install the project with its dev extras (CPU torch, no CUDA)
	bash scripts/setup.sh

test:  ## run the test suite
	$(PY) -m pytest

test-fast:  ## the tests without the slow ones
	$(PY) -m pytest -m "not slow"

lint:  ## ruff (lint and format), mypy and the import contracts (lint-imports)
	$(VENV)/bin/ruff check ice plumbing tasks flows tests benchmarks scripts
	$(VENV)/bin/ruff format --check ice plumbing tasks flows tests benchmarks scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

cost-to-target:  ## cost to reach the target on CIFAR-10 (hours of CPU; resumable; see benchmarks/README.md)
	$(PY) benchmarks/cost_to_target.py

bench:  ## data-path throughput benchmark
	$(PY) benchmarks/throughput.py

gc:  ## shrink .ice-cache/: keep what the current outputs and the registry reference
	$(VENV)/bin/ice gc

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .mypy_cache data/cache

run:  ## the main job: `dvc repro` of the whole pipeline on params.yaml (bundled digits by default), via `ice run`
	$(VENV)/bin/ice run

pipeline:  ## the same stages as one Prefect flow (python -m flows.pipeline)
	$(VENV)/bin/ice pipeline --params params.yaml

compare:  ## every method in one process, no orchestration (benchmarks/compare_methods.py)
	$(VENV)/bin/ice compare --params params.yaml

overhead:  ## orchestration overhead: flows with tracking vs calling ice directly
	$(PY) benchmarks/overhead.py --params params.yaml

mlflow-ui:  ## browse runs and model versions of the local sqlite store on 127.0.0.1:5000
	@$(PY) -m scripts.links | head -1
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

up:  ## start S3 (SeaweedFS :8333), a Prefect server (:4200) and an MLflow server (:5000, artifacts in S3) on 127.0.0.1
	$(VENV)/bin/ice up

remote:  ## configure the DVC remote s3://ice/dvc on the stack's S3 (in .dvc/config.local)
	bash infra/stack.sh remote

pool:  ## create the process work pool ice-pool
	bash infra/stack.sh pool

deploy:  ## deploy pipeline and prune from infra/prefect.yaml
	bash infra/stack.sh deploy

worker:  ## start a process worker on ice-pool
	bash infra/stack.sh worker

trigger:  ## run a deployment: make trigger DEPLOYMENT=prune/prune ARGS='--param method=ice'
	bash infra/stack.sh trigger $(or $(DEPLOYMENT),pipeline/pipeline) $(ARGS)

status:  ## which stack processes are running
	$(VENV)/bin/ice status

down:  ## stop the worker and the servers, by their PIDs
	$(VENV)/bin/ice down
