# customer-value: every target sets up .venv first when it is missing or pyproject.toml changed.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
# Hydra overrides for train/score, e.g. make train ARGS="clv.penalizer=0.01 segmentation.n_clusters=6"
ARGS ?=
UI_PORT ?= 5000

## help: list the targets (default)
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  make /'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# The [spark] extra (pyspark, about 500 MB) only for the targets that need it: the tests.
$(SPARK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,spark]"
	@touch $(SPARK_STAMP)

## venv: create .venv and install the project (every other target does this when needed)
venv: $(STAMP)

## train: fit, evaluate, log and register the CLV and segment models on the bundled CDNOW log
train: $(STAMP)
	$(BIN)/python -m customer_value.train $(ARGS)

## score: score every customer with the champion models into scores/customer_scores.parquet
score: $(STAMP)
	$(BIN)/python -m customer_value.score $(ARGS)

## ui: MLflow UI for the local store on http://127.0.0.1:5000 (UI_PORT=... to change)
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port $(UI_PORT) --workers 1

## test: the whole test suite, slow tests included (what CI runs; installs the [spark] extra too)
test: $(SPARK_STAMP)
	$(BIN)/python -m pytest -m "slow or not slow"

## test-fast: the fast tests only (pytest's default selection)
test-fast: $(STAMP)
	$(BIN)/python -m pytest

## lint: ruff lint and format check
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## clean: remove local runs, outputs and scores (keeps .venv)
clean:
	rm -rf outputs multirun scores mlruns/mlflow.db mlruns/artifacts

.PHONY: help venv train score ui test test-fast lint clean
