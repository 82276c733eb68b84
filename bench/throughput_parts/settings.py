"""The fixed choices every part of a throughput run reads: the systems compared, the model shapes, filter and rank."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent.parent / "results"
SYSTEMS = {
    "plain": {},
    "uld-f0": {"filter": 0.0},
    "uld-f0.01": {"filter": 0.01},
    "uld-f0.01-dense": {"filter": 0.01, "hf_overrides": {"uld_sparse_head": False}},
    "uld-merged-f0": {"filter": 0.0, "hf_overrides": {"uld_share_weights": False}},
    "hf-reference": {"filter": 0.01},
}
# Systems measured on another system's engine, with its assistant head switched off for their turns (what
# uld_sparse_head False starts): the same weights, memory and process, so sparse / dense compares the head alone.
# Runs of identical code also drift over minutes, on one shared engine too, by more than the head choice moves where it
# is close (bench/results/README.md): sharing removes only the engine-to-engine part; bench/head_choice.py pairs
# adjacent runs for the rest. Engine starts and peak memory stay each system's own.
HEAD_OFF_ON = {"uld-f0.01-dense": "uld-f0.01"}
SHAPES = {
    "bench": dict(hidden=1024, layers=8, heads=16, kv_heads=4, intermediate=2816, vocab=32000),
    "large": dict(hidden=2048, layers=8, heads=16, kv_heads=4, intermediate=5632, vocab=128256),
    "quick": dict(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=344, vocab=2048),
    # The real model (the default): the SmolLM2 study's ULD bundle (uld_vllm.smollm2_tofu) on TOFU's own text.
    "smollm2": dict(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152),
}
REAL_SHAPES = {"smollm2"}  # shapes that are a trained model on real text, not a random model with a fitted head
FILTER = 0.01
LORA_RANK = 16
STEP_NOTE = "each engine step's best round"  # how best_steps rebuilds a round, as reports name it


def assistant_depth(layers: int) -> int:
    """K = L/4: the bench assistant's depth."""
    return max(1, layers // 4)
