# FIRM developer entry points. `make test` on a fresh clone creates .venv, installs, runs the suite.
PYTHON ?= python3.11
VENV ?= .venv
# CPU wheel by default so no CUDA build is pulled on CPU machines; GPU images override (e.g. TORCH_SPEC=torch==2.13.0+cu128).
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test quickstart lint fmt clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

quickstart: $(STAMP)
	$(VENV)/bin/firmctl quickstart

lint: $(STAMP)
	$(VENV)/bin/ruff check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
