# `make demo` and `make test` do all set-up on a fresh machine (a virtual environment in .venv).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-quick test test-quick lint format clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/slimkit demo --out demo_output

demo-quick: $(STAMP)
	$(BIN)/slimkit demo --quick --out demo_output_quick

# everything, the slow kill -9 tests included (what CI runs)
test: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests

# without the tests marked slow
test-quick: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests -m "not slow"

# ruff (lint + format) and mypy (config in pyproject.toml: strict on slimkit.prune and slimkit.quant)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks tools
	$(BIN)/ruff check --fix src tests benchmarks tools

clean:
	rm -rf $(VENV) demo_output demo_output_quick .pytest_cache
