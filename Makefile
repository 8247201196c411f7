# aepipe: `make demo` sets up and runs the pipeline on the built-in digits; `make test` sets up
# and runs the test suite. Both create .venv when it is missing and install from constraints.txt.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aepipe-installed
PIP_VERSION := 26.3

# Python 3.13 for `make test-py313` (CI's second interpreter): on PATH, or pyenv's
# (the first that runs: pyenv's shim on PATH may refuse when 3.13 is not its global)
PYTHON313 ?= $(shell for p in python3.13 $$(pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13; \
	do $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null && \
	{ echo $$p; break; }; done)
VENV313 ?= .venv-py313
# the smoke subset on 3.13: the estimator, and flows end to end (train, register, write, score)
SMOKE := tests/ae_models/test_estimator.py \
	tests/flows/test_score_features.py::test_without_timestamps_new_rows_are_new_entity_ids

.PHONY: setup demo test test-fast test-py313 lint format lock clean

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
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# The edit-run loop: the suite without its slow end-to-end and fault tests (`-m "not slow"`);
# `make test` (what CI runs) runs them all.
test-fast: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

# The pinned set on Python 3.13 in a second venv, and the smoke subset (CI runs it after
# `make test`; aepipe supports 3.11 to 3.13).
test-py313:
	@test -n "$(PYTHON313)" || { echo "python3.13 not found: set PYTHON313=/path/to/python3.13"; exit 2; }
	@test -x $(VENV313)/bin/python || $(PYTHON313) -m venv $(VENV313)
	$(VENV313)/bin/python -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(VENV313)/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(VENV313)/bin/python -m pytest -q -n 2 $(SMOKE)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# Re-resolve the pinned set after changing dependencies in pyproject.toml: every extra, so
# the benchmarks' peers (bench) and the Dask runner (dask) keep their pins.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet "pip==$(PIP_VERSION)"
	.lock-venv/bin/python -m pip install --quiet -e ".[dev,bench,scale]" "torch==2.13.0"
	{ sed -n '1,3p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable \
		| grep -v '^aepipe' | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(VENV313) .aepipe .pytest_cache .ruff_cache .hypothesis benchmarks/out
