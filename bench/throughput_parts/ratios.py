"""Speed ratios between systems, read from a run's results: whole rounds, rebuilt steps, parts of a round."""

from __future__ import annotations

from bench.steps import steps_speedup


def measured(results: dict, system: str, size: int, workload: str = "decode") -> dict:
    """One system's measurement: the decode workload at batch `size`, or scoring (KeyError where it was not run)."""
    return results[system]["scoring"] if workload == "scoring" else results[system]["decode"][str(size)]


def ratio(results: dict, system: str, base: str, size: int, workload: str = "decode") -> float | None:
    try:
        return measured(results, system, size, workload)["tok_s"] / measured(results, base, size, workload)["tok_s"]
    except KeyError:
        return None


def step_ratio(
    results: dict, system: str, base: str, size: int, workload: str = "decode", part: str = "model_s"
) -> float | None:
    """system / base speed from their rounds rebuilt step by step (`best_steps`): `part` is model_s (every step),
    decode_s (the decode-only steps) or logits_s (compute_logits alone). None where the two did not run the same
    schedule, or for runs from before step clocks."""
    try:
        mine, theirs = (measured(results, s, size, workload)["steps"] for s in (system, base))
    except KeyError:
        return None
    return steps_speedup(mine, theirs, part)


def free_head_ceiling(results: dict, size: int, workload: str = "decode") -> float | None:
    """sparse / dense if the dense system's compute_logits cost only what plain's does (the target's head alone: the
    assistant's head, ULD's mask and combination free). A measured bound on any assistant head: the sparse path still
    computes the target's logits in full (the keep set needs every one)."""
    try:
        dense, plain = (measured(results, system, size, workload) for system in ("uld-f0.01-dense", "plain"))
        dense_s, plain_s = 1.0 / dense["tok_s"], 1.0 / plain["tok_s"]  # seconds per token: both did the same tokens
        return dense_s / (dense_s - dense["logits_share"] * dense_s + plain["logits_share"] * plain_s)
    except KeyError:
        return None


def split_speedup(results: dict, size: int, inside: bool, workload: str = "decode") -> float | None:
    """sparse / dense speed of one part of the round: compute_logits (where the head choice acts) or the rest (the
    same code in both systems, so its ratio is the measurement's spread)."""
    try:
        parts = []
        for system in ("uld-f0.01-dense", "uld-f0.01"):
            res = measured(results, system, size, workload)
            share = res["logits_share"] if inside else 1.0 - res["logits_share"]
            parts.append(share / res["tok_s"])  # seconds per token in that part
        return parts[0] / parts[1]
    except KeyError:
        return None
