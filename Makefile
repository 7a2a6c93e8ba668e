# The common commands. `make train` and `make test` each set up the environment they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= small

.PHONY: setup train sample test test-fast stress-tests fuzz bench clean

$(BIN)/namegen: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first: TORCH_INDEX=https://download.pytorch.org/whl/cpu picks the CPU build on a machine
	@# without a GPU (where a local wheel is configured, as on CI, plain pip finds it)
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

setup: $(BIN)/namegen  ## the virtual environment, with namegen installed in it

train: setup  ## train MODEL (default small) on the shipped names, then sample from it
	$(BIN)/namegen train --model $(MODEL)
	$(BIN)/namegen sample --ckpt checkpoints/$(MODEL)/best.ckpt -n 10

test: setup  ## the whole test suite, as CI runs it (-rs: every skip says why; only gpu tests skip without CUDA)
	WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q -rs

test-fast: setup  ## the inner loop: everything but the tests that start processes
	WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q -rs -m "not slow"

STRESS_RUNS ?= 10
STRESS_HOGS ?= 1
STRESS_TESTS ?= -m slow
stress-tests: setup  ## the tests that start processes, STRESS_RUNS times beside STRESS_HOGS busy cores (docs/development.md)
	PYTHON=$(BIN)/python tests/stress.sh $(STRESS_RUNS) $(STRESS_HOGS) $(STRESS_TESTS)

fuzz: setup  ## every reader fed hostile files, at length (Hypothesis's "long" profile; `make test` runs a short derandomised one)
	HYPOTHESIS_PROFILE=long WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q -rs -m fuzz tests/test_fuzz.py

bench: setup  ## speed as a user sees it (needs a quiet machine; writes bench/RESULTS.md)
	$(BIN)/python bench/speed.py

clean:  ## remove the virtual environment and build outputs
	rm -rf $(VENV) build *.egg-info
