# Each target creates .venv from the project's own pinned files on first use.
VENV    := .venv
BIN     := $(abspath $(VENV))/bin
STAMP   := $(VENV)/.installed
PYTHON  ?= python3
# test processes: two halve the suite's time on two cores (much of it waits on git, DVC and child
# processes); loadfile keeps each file's shared workspaces in one process
TEST_WORKERS ?= 2

# Avalanche, for benchmarks/peer.py only, lives in its own venv: never in .venv, never a dependency
PEER_VENV  := .venv-peer
PEER_BIN   := $(abspath $(PEER_VENV))/bin
PEER_STAMP := $(PEER_VENV)/.installed

.PHONY: demo demo-team test data repro ui lint bench bench-peer

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)  ## the embedded digits stream through the real cycle, in a throwaway workspace
	$(BIN)/ratchet demo

demo-team: $(STAMP)  ## team mode on this machine: PostgreSQL (installed as root on Debian), MLflow and Prefect servers and a worker on 127.0.0.1; stops them all
	@sh .ci/postgresql
	$(BIN)/ratchet demo-team

test: $(STAMP)  ## the whole test suite (what CI runs); as root on Debian it installs chromium for the UI test and PostgreSQL for the tracking-server tests
	@sh .ci/chromium
	@sh .ci/postgresql
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

data: $(STAMP)  ## materialise the reference data version tracked by data.dvc, offline
	$(BIN)/ratchet reference-data .
	PATH=$(BIN):$$PATH $(BIN)/dvc status data.dvc

repro: data  ## reproduce the committed candidate: dvc repro, then weights and metrics must match git
	PATH=$(BIN):$$PATH $(BIN)/dvc repro -f --no-run-cache  # really run: the run cache would restore old outputs
	@# dvc.lock holds the hash of every stage output (the candidate's weights among them)
	git diff --exit-code -- dvc.lock artifacts/eval && echo "weights and metrics reproduced"

ui: $(STAMP)  ## MLflow UI on the store this workspace uses (MLFLOW_TRACKING_URI, registry.tracking_uri, or mlruns/)
	$(BIN)/mlflow ui --backend-store-uri "$$($(BIN)/python -c 'from pathlib import Path; from ratchet.registry import open_registry; from ratchet.workspace import open_workspace; print(open_registry(open_workspace(Path("."))).tracking_uri)')"

lint: $(STAMP)
	$(BIN)/ruff check src flows tests benchmarks
	$(BIN)/ruff format --check src flows tests benchmarks
	$(BIN)/mypy src flows benchmarks  # strict: see pyproject.toml

bench: $(STAMP)  ## Fashion-MNIST benchmarks, full data (needs the Debian package dataset-fashion-mnist); ARGS=--fraction 0.2 for a quicker CPU run; STREAM_ARGS for the product streams (default 25% of the data)
	$(BIN)/python -m benchmarks.throughput $(THROUGHPUT_ARGS)
	$(BIN)/python -m benchmarks.continual_quality $(ARGS)
	$(BIN)/python -m benchmarks.stream $(STREAM_ARGS)

$(PEER_STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	@# the lock's pins hold (torch above all): Avalanche only adds what ratchet does not have
	$(PEER_BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[peer]'
	touch $(PEER_STAMP)

bench-peer: $(PEER_STAMP)  ## ratchet against Avalanche on class-incremental Fashion-MNIST, in .venv-peer; PEER_ARGS="--fraction 0.1 --repeats 3"
	$(PEER_BIN)/python -m benchmarks.peer $(PEER_ARGS)
