# Every target runs the idempotent setup first, so each works on a fresh clone.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint demo bench

setup:
	@bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest tests -q

lint: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: setup
	$(VENV)/bin/uld-batch --input examples/prompts.parquet --output out/demo.parquet
