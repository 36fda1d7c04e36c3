# axisguard: `make demo` runs the main job, `make test` the test suite; both set themselves up.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.axisguard-setup-1
ACS_DATA ?= ../shared/acs-data

.PHONY: setup demo test test-fast lint bench-eval bench-guard bench-vllm report soak external default-thresholds bench-few-shot

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/setup.sh
	bash scripts/setup.sh $(PY) $(VENV)
	touch $(STAMP)

demo: setup
	$(BIN)/python -m scripts.demo

test: lint
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

# ruff, the import contract (guard <- probes <- integrations <- axisguard_cli) and the type checker.
lint: setup
	$(BIN)/ruff check guard probes integrations axisguard_cli tests scripts
	$(BIN)/python -m tests.test_import_layers
	$(BIN)/mypy

# Regenerates probes/REPORT.md (catalogue quality gates on the three real models).
report: setup
	$(BIN)/python -m scripts.catalogue_report

# External validity (issue #9): public harmful requests vs our look-alikes, leave-one-family-out, plus
# every axis' internal test split. DEV is what catalogue work iterates on; FINAL is scored once.
external: setup
	$(BIN)/python -m scripts.external_validity --split dev
	$(BIN)/python -m scripts.external_validity --split final

# Leave-one-family-out on the paper's released data (held-out split of its training pairs).
bench-eval: setup
	$(BIN)/axisguard eval --models smollm2-135m,gemma3-270m,qwen2.5-0.5b --data $(ACS_DATA) --out bench/results/acs-data-lofo

# The default policy's thresholds: each rule flags 1 % of the built-in benign sample on Qwen2.5, plus the
# calibration check (set on one half, flag rate on the other) in bench/results/threshold_calibration_*.
default-thresholds: setup
	$(BIN)/python -m scripts.default_thresholds --fpr 0.01

# Few-shot learning curve (N labelled target pairs per axis on top of the anchors-only axis), LOFO.
bench-few-shot: setup
	$(BIN)/python -m scripts.few_shot_curve --out bench/results/few_shot

# Guard overhead against plain generation (transformers path, then inside a vLLM engine).
bench-guard: setup
	$(BIN)/python -m scripts.bench_guard_overhead --model smollm2-135m --batch 8 --new-tokens 32 --rounds 5 --out bench/results/guard_overhead_smollm2.json

bench-vllm: setup
	$(BIN)/python -m scripts.bench_vllm_defaults --model smollm2-135m --rounds 3 --out bench/results
	$(BIN)/python -m scripts.bench_vllm_throughput --model smollm2-135m --batch 8 32 --rounds 5 --out bench/results

# Soak: 500 mixed requests at concurrency 24 through `axisguard serve` (SmolLM2, loopback), with and
# without the guard; bounded in count and time, stops by itself (`make test` runs a short version).
soak: setup
	$(BIN)/python -m scripts.soak --requests 500 --concurrency 24 --deadline-s 1800 --out bench/results/soak.json --readme bench/results/README.md
