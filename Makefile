# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast bench gpu-check install clean

# torch 2.13.0 first (a local CPU build here; a plain `torch` requirement would pull several GB of CUDA),
# then the project with its extras. GPU users: install your own torch into .venv before `make`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tofgan demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/bench_simulation.py
	$(BIN)/python bench/bench_patches.py

# One GPU, ≤ 8 min: outputs/gpu_check.json and the README performance table (bench/gpu_check.py).
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py --out outputs/gpu_check.json

clean:
	rm -rf $(VENV) .cache outputs
