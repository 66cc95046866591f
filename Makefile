# `make run` and `make test` do all the set-up on a fresh machine (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PYTHONHASHSEED := 0

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip==26.3
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

run: setup  ## the whole pipeline on the default (demo) profile
	dvc repro

test: setup  ## the test suite (tests needing ../shared/datasets skip without it)
	python -m pytest

bench: setup  ## benchmark figures: stage times on the demo profile; data stages on ../shared/datasets
	python benchmarks/stage_times.py
	python benchmarks/data_stages.py

clean:  ## remove generated outputs (keeps the venv, the download cache and MLflow's store)
	rm -rf data/raw data/validated data/prepared data/stats models reports

# `make review BASE=<rev>`: runs what is missing (`dvc repro`), then compares the workspace with the
# git revision BASE (its outputs come from the DVC cache) in reports/review.md; FORMAT=html embeds the plots.
FORMAT ?= md
.PHONY: review
review: setup  ## review report against a git revision: make review BASE=main [FORMAT=html]
	@test -n "$(BASE)" || { echo "usage: make review BASE=<git revision> [FORMAT=md|html]" >&2; exit 2; }
	dvc repro
	python -m pipeline report --base $(BASE) --format $(FORMAT) --output reports/review.$(FORMAT)

# `make ui [PORT=5000]`: MLflow's UI on the local store (mlflow.db, mlartifacts/) at http://127.0.0.1:$(PORT)
PORT ?= 5000
.PHONY: ui
ui: setup  ## MLflow UI on the local tracking store: make ui [PORT=5000]
	mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts --host 127.0.0.1 --port $(PORT)
