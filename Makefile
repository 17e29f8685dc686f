# ice-pipeline: the few commands a newcomer needs. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_QUIET ?= -q

.PHONY: help setup test test-fast lint run bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup:  ## create .venv and install the project with its dev extras (CPU torch, no CUDA)
	bash scripts/setup.sh

test:  ## run the test suite
	$(PY) -m pytest

test-fast:  ## the tests without the slow ones
	$(PY) -m pytest -m "not slow"

lint:  ## ruff and mypy
	$(VENV)/bin/ruff check ice tests benchmarks
	$(VENV)/bin/mypy

bench:  ## data-path throughput benchmark
	$(PY) benchmarks/throughput.py

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .mypy_cache data/cache

run:  ## pre-train on the bundled digits and compare every method (params.yaml)
	$(PY) benchmarks/compare_methods.py --params params.yaml
