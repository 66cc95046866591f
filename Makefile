# `make run` and `make test` do all the set-up on a fresh machine (Python 3.11).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false
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

bench: setup  ## benchmark figures (needs ../shared/datasets)
	python benchmarks/data_stages.py

clean:  ## remove generated outputs (keeps the venv and the download cache)
	rm -rf data/raw data/validated data/prepared data/stats reports/validation
