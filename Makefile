# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The exact versions detlab is developed and tested with (pyproject.toml states ranges).
CONSTRAINTS := constraints-dev.txt

.PHONY: demo test lint browser tutorial clean

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "need python3.11 (or python3 3.10-3.13) on PATH, or run: make PYTHON=/path/to/python"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -c $(CONSTRAINTS) -e ".[test,bench]"
	$(BIN)/pip install -c $(CONSTRAINTS) --no-deps tidecv
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/detlab demo --out demo

browser:
	@scripts/ensure-chromium

# Executes the tutorial notebook top to bottom (about 14 minutes on 2 cores; it opens nothing) and
# saves it with its figures as docs/tutorial/lecture.ipynb, its numbers in docs/tutorial/numbers.json.
# To read or change it interactively, open either file in any Jupyter (not installed here).
tutorial: $(STAMP)
	$(BIN)/python docs/tutorial/execute.py

# TEST_WORKERS=2 runs two pytest-xdist processes, a test file each at a time (0: one process).
TEST_WORKERS ?= 0
test: $(STAMP) browser lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs/tutorial
	$(BIN)/ruff format --check src tests benchmarks docs/tutorial

clean:
	rm -rf $(VENV) demo runs
