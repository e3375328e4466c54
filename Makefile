# The two commands of the README: `make run` and `make test`. Everything else is what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint fuzz reliability

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/dogstatsd-relay run

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# A million mutated datagrams through the parser and both fast paths, at most 10 minutes.
fuzz: $(INSTALLED)
	FUZZ_CASES=1000000 FUZZ_SECONDS=600 $(BIN)/python -m pytest -p no:logging -q -s tests/pipeline/test_fuzz.py

# The scenarios behind docs/OPERATIONS.md's Reliability section, with the figures they print.
reliability: $(INSTALLED)
	$(BIN)/python -m pytest -q -s tests/test_abuse.py tests/test_faults.py tests/test_flood.py tests/test_reload.py \
		"tests/test_e2e.py::test_outage_then_restart_delivers_everything_exactly_once" | grep -E "reliability:|passed|failed"
