# Two commands do all set-up on a fresh machine: `make repro` and `make test`.
# The environment is created on first use and refreshed when pyproject.toml changes.

VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

# dvc runs stage commands through the shell: `python` there must be the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv repro test test-all lint bench clean-stores

venv: $(STAMP)

# torch first, pinned to the local CPU wheel: an unpinned torch pulled in by a dependency would
# download several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $(STAMP)

repro: venv
	$(VENV)/bin/dvc repro

test: venv lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check src pipelines bench tests

test-all: venv
	$(PYTHON) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: venv
	$(PYTHON) bench/prepare.py
	$(PYTHON) bench/model.py

clean-stores:
	rm -rf mlflow.db mlartifacts optuna.db
