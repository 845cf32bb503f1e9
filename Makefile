# Every target creates (or reuses) an isolated environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prunemix-installed

.PHONY: digits test lint bench results

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[examples,plot,test]"
	touch $(STAMP)

digits: $(STAMP)  ## the main job: prune a CNN on scikit-learn's digits
	$(BIN)/python examples/prune_digits.py

test: $(STAMP)  ## lint, doctests of the pure modules, and the test suite (2 processes)
	$(BIN)/ruff check prunemix tests examples bench
	$(BIN)/python -m pytest -n 2
	KERAS_BACKEND=jax $(BIN)/python -m pytest tests/test_jax.py

bench: $(STAMP)  ## step-time overhead of pruning, pruned vs dense
	$(BIN)/python bench/overhead.py

results: $(STAMP)  ## both RFC-style tables (digits, seq2seq) and docs/sparsity_vs_accuracy.png
	$(BIN)/python examples/rfc_results.py
