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
# MLflow's usage telemetry stays off for every target (docs/privacy.md); MLFLOW_DISABLE_TELEMETRY=false turns it on
ifeq ($(origin MLFLOW_DISABLE_TELEMETRY)$(origin DO_NOT_TRACK),undefinedundefined)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
endif
UI_PORT ?= 5000
SEARCH ?= clv_grid
BENCH_CUSTOMERS ?= 1000000
BENCH_ARGS ?=
EVALUATE_ARGS ?=
WORKERS ?= 2
# make server: the team tracking server (MLflow on PostgreSQL, with authentication) on SERVER_HOST;
# DATABASE_URL = use that database; SERVER_ALLOWED_HOSTS = more names clients reach it by (comma-separated)
SERVER_DIR ?= .server
SERVER_PORT ?= 5050
SERVER_HOST ?= 127.0.0.1
SERVER_ALLOWED_HOSTS ?=
PG_PORT ?= 55432
# make server-user NAME=alice ROLE=engineer|reviewer|scoring
NAME ?=
ROLE ?=
# make forget IDS=request.csv: the request's customer ids (docs/privacy.md)
IDS ?=
# make serve: REST endpoint for models:/customer-clv@champion of the configured tracking store (mlflow
# starts `uvicorn` by name, so the recipe puts .venv/bin on PATH)
SERVE_PORT ?= 5001
SERVE_MODEL ?= models:/customer-clv@champion

## help: list the targets (default)
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  make /'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep,server]"
	@touch $(STAMP)

# The [spark] extra (pyspark, about 500 MB) only for the targets that need it: the tests.
$(SPARK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep,server,spark]"
	@touch $(SPARK_STAMP)

## venv: create .venv and install the project (every other target does this when needed)
venv: $(STAMP)

# The system programs the real parts need: PostgreSQL (the team server), a Java runtime (Spark) and
# Chromium (pages checked in a real browser). A target names what it needs in NEEDS; system-deps installs
# what is missing with apt-get when run as root on Debian/Ubuntu, otherwise says in one line what to install.
NEEDS ?= postgresql java chromium
## system-deps: install PostgreSQL, Java and Chromium where missing (apt-get as root; the tests run it)
system-deps:
	@missing=(); \
	for need in $(NEEDS); do case $$need in \
	  postgresql) command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
	    || missing+=(postgresql);; \
	  java) command -v java >/dev/null || missing+=(java);; \
	  chromium) command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium);; \
	esac; done; \
	[ $${#missing[@]} -eq 0 ] && exit 0; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "error: this target needs $${missing[*]} (missing here): install them, e.g. on Debian/Ubuntu" \
	    "sudo apt-get install $${missing[*]/java/openjdk-17-jre-headless}" >&2; exit 1; fi; \
	echo "installing $${missing[*]} with apt-get (missing here)"; \
	export DEBIAN_FRONTEND=noninteractive; apt-get update -qq || exit 1; \
	packages=("$${missing[@]/java/}"); [[ " $${missing[*]} " == *" java "* ]] && { \
	  apt-cache show openjdk-17-jre-headless >/dev/null 2>&1 && packages+=(openjdk-17-jre-headless) \
	  || packages+=(default-jre-headless); }; \
	apt-get install -y -qq $${packages[@]} >/dev/null

## train: fit, evaluate, log and register the CLV and segment models on the bundled CDNOW log
train: $(STAMP)
	$(BIN)/python -m customer_value.train $(ARGS)

## sweep: a Hydra search (SEARCH=clv_grid | segments_grid | clv_optuna) on WORKERS parallel jobs; registers the best
sweep: $(STAMP)
	$(BIN)/python -m customer_value.train hparams_search=$(SEARCH) hydra/launcher=joblib \
		hydra.launcher.n_jobs=$(WORKERS) $(ARGS)

## shapes: every corpus log shape (single-day cohort, visits without amounts, ...) through train and score -> docs/log-shapes.md
shapes: $(STAMP)
	$(BIN)/python -m customer_value.jobs.shape_report --output docs/log-shapes.md

## example-data: a simulated log and customer file with known covariate effects -> outputs/example/
example-data: $(STAMP)
	$(BIN)/python -m customer_value.jobs.example_data --output outputs/example

## score: score every customer with the champion models into scores/customer_scores.parquet
score: $(STAMP)
	$(BIN)/python -m customer_value.score $(ARGS)

## campaign: an audience from a scoring output, global holdout out, treatment/control lists (ARGS="campaign=winback ...")
campaign: $(STAMP)
	$(BIN)/python -m customer_value.campaign $(ARGS)

## forget: forget customers on request: make forget IDS=request.csv (their keyed hashes listed, every output rewritten)
forget: $(STAMP)
	$(BIN)/python -m customer_value.privacy forget --ids "$(IDS)" $(ARGS)

## campaign-report: a campaign's lift per segment on today's log (ARGS="report.campaign_id=winback data=...")
campaign-report: $(STAMP)
	$(BIN)/python -m customer_value.campaign report $(ARGS)

## monitor: judge earlier scorings on what happened since (realised churn, purchases, revenue), drift, report
monitor: $(STAMP)
	$(BIN)/python -m customer_value.monitor $(ARGS)

## ui: MLflow UI for the local store on http://127.0.0.1:5000, opening the CLV runs (UI_PORT=... to change)
ui: $(STAMP)
	$(BIN)/python -m customer_value.jobs.ui --port $(UI_PORT)

## server: start the team tracking server (MLflow + PostgreSQL, artifacts served) in the background on :5050
server: NEEDS = $(if $(DATABASE_URL),,postgresql)
server: $(STAMP) system-deps
	$(BIN)/python -m customer_value.jobs.server start --folder $(SERVER_DIR) --port $(SERVER_PORT) --pg-port $(PG_PORT) \
		--host $(SERVER_HOST) --allowed-hosts "$(SERVER_ALLOWED_HOSTS)"

## server-user: add a team-server user with a role: make server-user NAME=alice ROLE=engineer|reviewer|scoring
server-user: $(STAMP)
	$(BIN)/python -m customer_value.jobs.server user "$(NAME)" --role "$(ROLE)" --folder $(SERVER_DIR)

## server-rotate-admin: give the team server's admin a new generated password (kept in SERVER_DIR/admin.credentials)
server-rotate-admin: $(STAMP)
	$(BIN)/python -m customer_value.jobs.server rotate-admin --folder $(SERVER_DIR)

## server-stop: stop the team tracking server and the PostgreSQL cluster it started
server-stop: $(STAMP)
	$(BIN)/python -m customer_value.jobs.server stop --folder $(SERVER_DIR)

## serve: REST scoring of models:/customer-clv@champion on http://127.0.0.1:5001 (SERVE_PORT=... to change)
serve: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" \
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlruns/mlflow.db}" \
	MLFLOW_HTTP_REQUEST_MAX_RETRIES="$${MLFLOW_HTTP_REQUEST_MAX_RETRIES:-2}" \
	CUSTOMER_VALUE_SUPPRESSION_LIST="$${CUSTOMER_VALUE_SUPPRESSION_LIST:-$(abspath .secrets/suppression.csv)}" \
	CUSTOMER_VALUE_PRIVACY_KEY_FILE="$${CUSTOMER_VALUE_PRIVACY_KEY_FILE:-$(abspath .secrets/privacy.key)}" \
	$(BIN)/mlflow models serve -m $(SERVE_MODEL) --env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

## evaluate: churn on real futures (CDNOW cut at four dates, generated non-BTYD logs) -> docs/churn-evaluation.md
evaluate: $(STAMP)
	$(BIN)/python -m customer_value.jobs.evaluate $(EVALUATE_ARGS)

## bench: the project's path vs plain lifetimes/scikit-learn at BENCH_CUSTOMERS (1M: ~12M orders) as ratios
bench: $(STAMP)
	$(BIN)/python -m customer_value.bench --customers $(BENCH_CUSTOMERS) $(BENCH_ARGS)

## bench-engines: train with engine=pandas beside engine=spark (local[2]) at 1M and 10M orders: time, driver peak RSS
bench-engines: NEEDS = java
bench-engines: $(SPARK_STAMP) system-deps
	$(BIN)/python -m customer_value.bench.engines --orders 1000000 10000000

# Tests run on pytest-xdist workers, one more than the cores: many of the long tests wait on a child process
# (a tracking server, PostgreSQL, a JVM, a browser), and a third worker fills the idle core (2-core Xeon,
# 2026-12-06: `make test` 10:12 -> 8:50 at 159 % CPU, `make test-fast` 1:54 -> 1:46). Work stealing evens
# out the long end-to-end tests; the 25 slowest are printed, so drift shows in every run.
TEST_WORKERS := $(shell echo $$(( $$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) + 1 )))
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=25

## test: the whole test suite, slow tests included (what CI runs; installs the [spark] extra too)
test: $(SPARK_STAMP) system-deps
	$(PYTEST) -m "slow or not slow"

## test-fast: the fast tests only (pytest's default selection)
test-fast: NEEDS = chromium
test-fast: $(STAMP) system-deps
	$(PYTEST)

## lint: ruff lint and format check
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## clean: remove local runs, outputs and scores (keeps .venv)
clean:
	rm -rf outputs multirun scores mlruns/mlflow.db mlruns/artifacts

.PHONY: help venv system-deps server-user server-rotate-admin campaign campaign-report forget train sweep evaluate bench bench-engines shapes example-data score monitor ui server server-stop serve test test-fast lint clean
