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

.PHONY: venv repro exp-show test test-all lint bench clean-stores

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

# `dvc exp show` trimmed to what tells experiments apart (README "What runs"): Experiment, Created,
# each dataset's headline metrics (AUROC, recall and false-alarm rate at the threshold, event
# recall), and only the params whose value differs between the rows; no dependency hashes. DVC's
# own flags: --keep protects columns, --only-changed drops params (and the rest) equal in all rows,
# --drop removes every column that is not a param (a param's name is `section.key`).
EXP_SHOW_KEEP := Experiment$$|Created$$|image_auroc$$|frame_auroc$$|event_recall$$|(.*:)?(recall_at_threshold|false_alarm_rate)$$
EXP_SHOW_DROP := (?!State$$|Executor$$|[a-z][a-z0-9_]*\.)
EXP_SHOW_ARGS ?=

exp-show: venv
	$(VENV)/bin/dvc exp show --only-changed --keep '$(EXP_SHOW_KEEP)' --drop '$(EXP_SHOW_DROP)' $(EXP_SHOW_ARGS)

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
