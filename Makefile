# FIRM developer entry points. `make test` on a fresh clone creates .venv, installs, runs the suite.
PYTHON ?= python3.11
VENV ?= .venv
# CPU wheel by default so no CUDA build is pulled on CPU machines; GPU images override (e.g. TORCH_SPEC=torch==2.13.0+cu128).
TORCH_SPEC ?= torch==2.13.0
# Where pip finds that torch. Empty = pip's configured indexes (this project's dev/CI machines hold the CPU wheel
# locally); on a plain machine use TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU build.
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test quickstart lint fmt clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
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
