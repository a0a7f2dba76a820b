# dicom_lakehouse: every command a user, CI and a developer run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VENV4 := .venv-spark4
STAMP4 := $(VENV4)/.installed
DEMO_DIR ?= .demo
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-spark4 services demo test test-spark4 test-fast lint format bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[spark,mlflow,derive,dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the package (editable) and the local extras

$(STAMP4): pyproject.toml
	$(PYTHON) -m venv $(VENV4)
	$(VENV4)/bin/python -m pip install --quiet --upgrade pip
	$(VENV4)/bin/python -m pip install --quiet -e '.[spark4,mlflow,derive,dev]'
	touch $(STAMP4)

install-spark4: $(STAMP4) ## Create .venv-spark4: the same, on Spark 4.0 / Delta 4.0

services: ## Install the servers and tools the tests use (Orthanc, dicom3tools, Azurite, Toxiproxy)
	bash scripts/install-orthanc.sh
	bash scripts/install-dicom3tools.sh
	bash scripts/install-azurite.sh
	bash scripts/install-toxiproxy.sh

demo: install ## Build the sample lake in $(DEMO_DIR), ingest it, show what landed
	$(BIN)/dicom-lakehouse demo --dir $(DEMO_DIR)

test: install services ## Run the whole test suite (local Spark + Delta, real services)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-spark4: install-spark4 services ## The Spark test tier on Spark 4.0 + Delta 4.0 (second CI leg)
	$(VENV4)/bin/python -m pytest -m spark $(PYTEST_ARGS)

test-fast: install ## Run the tests that need no Spark session
	$(BIN)/python -m pytest -m "not spark" $(PYTEST_ARGS)

lint: install ## ruff lint + format check, mypy
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: install ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: install ## Run the ingest benchmark (prints figures and ratios)
	$(BIN)/python benchmarks/bench_ingest.py

clean: ## Remove the venv, demo output and caches
	rm -rf $(VENV) $(VENV4) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
