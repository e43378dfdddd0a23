# FIRM developer entry points. `make test` on a fresh clone creates .venv, installs, runs the suite.
PYTHON ?= python3.11
VENV ?= .venv
# CPU wheel by default so no CUDA build is pulled on CPU machines; GPU images override (e.g. TORCH_SPEC=torch==2.13.0+cu128).
TORCH_SPEC ?= torch==2.13.0
# Where pip finds that torch. Empty = pip's configured indexes (this project's dev/CI machines hold the CPU wheel
# locally); on a plain machine use TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the CPU build.
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
# Packages are installed with uv (a PyPI package, bootstrapped into the venv by pip): it resolves and installs the
# ~150 dependencies in ~20 s where pip takes 1.5–3 min on a 2-core machine (BENCHMARKS.md, test suite). uv does not
# read pip's configuration: a find-links folder set for pip (PIP_FIND_LINKS, e.g. where a machine keeps its torch
# wheel) is passed on.
UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
UV_ARGS := $(if $(UV_FIND_LINKS),$(foreach d,$(UV_FIND_LINKS),--find-links $(d)),)
PIP := $(VENV)/bin/pip
UV := $(VENV)/bin/uv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test files run on 2 pytest-xdist workers (whole files per worker: their module fixtures stay shared), handed out
# in collection order (--no-loadscope-reorder: xdist would otherwise sort files by their number of tests, which put
# the longest files last) — tests/conftest.py collects the longest files first (BENCHMARKS.md, test suite).
PYTEST_WORKERS ?= 2
# Python may cache bytecode (__pycache__, ignored by git) even where the environment says not to: uv installs without
# .pyc files, and the suite starts hundreds of Python processes (CLI calls, torchrun ranks, KFP local-runner steps),
# each of which would otherwise compile what it imports from source again (importing DeepSpeed, KFP, tritonclient
# and boto3 took 8.5 s instead of 4.7 s on this project's 2-core machine; BENCHMARKS.md, test suite).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install test quickstart lint fmt clean images images-push manifests bench

# Container images (a container engine is needed; none exists on the project's development machines, where
# tests/deploy lints the Dockerfiles with hadolint instead of building them). Build context: the repository root.
IMAGE_REGISTRY ?= ghcr.io/firm-platform
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker
IMAGE_ARGS = --build-arg VERSION=$(IMAGE_TAG) --build-arg REVISION=$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "uv>=0.5"

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(UV) pip install -q --python $(PY) $(UV_ARGS) $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(UV) pip install -q --python $(PY) $(UV_ARGS) -e ".[dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

quickstart: $(STAMP)
	$(VENV)/bin/firmctl quickstart

# Every benchmark in benchmarks/ with its default sizes, then BENCHMARKS.md rewritten from benchmarks/results/ and
# benchmarks/notes/ (tens of minutes; e.g. BENCH_ARGS="--only reward_parsing" or "--render").
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

images:
	$(DOCKER) build $(IMAGE_ARGS) -f images/firm-trainer/Dockerfile -t $(IMAGE_REGISTRY)/firm-trainer:$(IMAGE_TAG) .
	$(DOCKER) build $(IMAGE_ARGS) -f images/firm-triton/Dockerfile -t $(IMAGE_REGISTRY)/firm-triton:$(IMAGE_TAG) .
	$(DOCKER) build $(IMAGE_ARGS) -f images/firm-triton/Dockerfile.vllm -t $(IMAGE_REGISTRY)/firm-triton-vllm:$(IMAGE_TAG) .
	$(DOCKER) build $(IMAGE_ARGS) -f images/firm-pipeline/Dockerfile -t $(IMAGE_REGISTRY)/firm-pipeline:$(IMAGE_TAG) .

images-push: images
	for i in firm-trainer firm-triton firm-triton-vllm firm-pipeline; do $(DOCKER) push $(IMAGE_REGISTRY)/$$i:$(IMAGE_TAG); done

# Regenerate the k8s/base and k8s/overlays files that come from the chart and from `firmctl job render`.
manifests: $(STAMP)
	$(PY) -m tests.deploy.render_manifests
