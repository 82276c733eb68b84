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

# The tiny seeded demo bundle (random weights: it shows the pipeline, not unlearning) until the mini-TOFU bundle ships.
demo: setup
	$(VENV)/bin/uld-demo --dir out/demo
	$(VENV)/bin/uld-batch --model out/demo/model/bundle --input examples/prompts.parquet --output out/demo/generations.parquet \
		--max-tokens 24 --max-model-len 256 --show 6 --engine-arg enforce_eager=true

# ULD vs plain vLLM vs the HF reference, with the physical limits (about 7 minutes on 2 cores): bench/results/.
bench: setup
	$(PY) bench/throughput.py
