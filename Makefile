# axisguard: `make demo` runs the main job, `make test` the test suite; both set themselves up.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.axisguard-setup-1
ACS_DATA ?= ../shared/acs-data

.PHONY: setup demo test test-fast lint bench-eval bench-guard bench-vllm report

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/setup.sh
	bash scripts/setup.sh $(PY) $(VENV)
	touch $(STAMP)

demo: setup
	$(BIN)/python -m scripts.demo

test: setup
	$(BIN)/ruff check guard probes integrations tests scripts
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: setup
	$(BIN)/ruff check guard probes integrations tests scripts
