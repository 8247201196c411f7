# aepipe: `make demo` sets up and runs the pipeline on the built-in digits; `make test` sets up
# and runs the test suite. Both create .venv when it is missing and install from constraints.txt.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aepipe-installed
PIP_VERSION := 26.3

.PHONY: setup demo test lint format lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else \
		"aepipe needs Python 3.11 or newer; set PYTHON=/path/to/python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(BIN)/aepipe run configs/digits.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# Re-resolve the pinned set after changing dependencies in pyproject.toml.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet "pip==$(PIP_VERSION)"
	.lock-venv/bin/python -m pip install --quiet -e ".[dev]" "torch==2.13.0"
	{ sed -n '1,3p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable \
		| grep -v '^aepipe' | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

clean:
	rm -rf $(VENV) .aepipe .pytest_cache .ruff_cache .hypothesis benchmarks/out
