# `make run` and `make test` do all the set-up on a fresh machine (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PYTHONHASHSEED := 0

.PHONY: setup run test bench results clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip==26.3
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

run: setup  ## the whole pipeline on the default (demo) profile
	dvc repro

test: setup  ## lint, then the test suite (tests needing ../shared/datasets skip without it)
	ruff check .
	ruff format --check .
	python -m pytest

# `make bench [QUICK=1]`: every script in benchmarks/ (each prints its figures), gathered into reports/benchmarks.json
bench: setup  ## benchmarks into reports/benchmarks.json (needs ../shared/datasets); QUICK=1 skips the ~7-min demo repro
	python -m benchmarks.run_all $(if $(QUICK),--skip-demo)

# `make results [VARIANTS=a,b]`: every variant (or a subset) on the real datasets at the seed's protocols
# (results.yaml) in results/workspace; writes reports/results.json and the results table of docs/results.md.
results: setup  ## real-data results at the seed's protocols (needs ../shared/datasets): make results [VARIANTS=a,b]
	python -m scripts.results $(if $(VARIANTS),--variants $(VARIANTS))

clean:  ## remove generated outputs (keeps the venv, the download cache and MLflow's store)
	rm -rf data/raw data/validated data/prepared data/stats models reports

# `make review BASE=<rev>`: runs what is missing (`dvc repro`, with --pull when the default DVC remote answers),
# then compares the workspace with the git revision BASE in reports/review.md; FORMAT=html embeds the plots.
# BASE's outputs come from the DVC cache, else from the remote where it has them; the rest is rebuilt in a
# worktree under .dvc/tmp/review/ (the run cache restores what ran here). No remote: one log line, no pull.
FORMAT ?= md
.PHONY: review
review: setup  ## review report against a git revision: make review BASE=main [FORMAT=html]
	@test -n "$(BASE)" || { echo "usage: make review BASE=<git revision> [FORMAT=md|html]" >&2; exit 2; }
	python -m pipeline.review.repro
	python -m pipeline report --base $(BASE) --rebuild-base --format $(FORMAT) --output reports/review.$(FORMAT)

# `make ui [PORT=5000]`: MLflow's UI on the local store (mlflow.db, mlartifacts/) at http://127.0.0.1:$(PORT);
# first prints each experiment's runs-table URL, with the view showing its key metric as a column
PORT ?= 5000
.PHONY: ui
ui: setup  ## MLflow UI on the local tracking store, or the team server's when MLFLOW_TRACKING_URI names one: make ui [PORT=5000]
	@case "$$MLFLOW_TRACKING_URI" in http*) python -m pipeline tracking urls "$$MLFLOW_TRACKING_URI"; \
		echo "the team server serves this UI at $$MLFLOW_TRACKING_URI (log in with your account)"; exit 0;; esac; \
	python -m pipeline tracking urls http://127.0.0.1:$(PORT) && \
	mlflow ui --backend-store-uri "$$(python -m pipeline tracking uri)" --default-artifact-root "$$(python -m pipeline tracking artifacts)" \
		--host 127.0.0.1 --port $(PORT)

# `make stack`: the team stack on loopback (PostgreSQL, SeaweedFS S3, MLflow server with accounts, Dask), state in .stack/;
# then `source .stack/env`. `make stack-down` stops it; data, runs, users and DVC objects are kept for the next `make stack`.
.PHONY: stack stack-down
stack: setup  ## start the team stack (a no-op when it runs); then: source .stack/env
	python -m pipeline stack up

stack-down: setup  ## stop the team stack (its data is kept)
	python -m pipeline stack down
