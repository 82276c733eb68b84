"""Per-step clocks on a vLLM model: rounds of the same requests compared step by step, without their spikes.

Used by bench/throughput.py and bench/spread.py inside their engine processes (`llm.apply_model(clock_steps)`), and
free of their side effects (environment, huge pages) so tests can import it.
"""

from __future__ import annotations

import hashlib
import json
import time


def clock_steps(model) -> None:
    """A clock per engine step around the model's own work: its forward, then the compute_logits calls that follow
    (the LM heads, ULD's mask and combination; not the sampler, vLLM's own in every system). Each step is recorded as
    [tokens, logits rows, forward seconds, compute_logits seconds] (`take_steps`): compute_logits' share of a round
    bounds what any head can save, and step by step the rounds compare without their spikes (`best_steps`)."""
    forward, compute_logits = model.forward, model.compute_logits
    model.uld_bench_steps = []

    def clocked_forward(*args, **kwargs):
        positions = kwargs["positions"] if "positions" in kwargs else args[1]
        started = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            model.uld_bench_steps.append([positions.shape[-1], 0, time.perf_counter() - started, 0.0])

    def clocked_logits(hidden_states, *args, **kwargs):
        started = time.perf_counter()
        try:
            return compute_logits(hidden_states, *args, **kwargs)
        finally:
            steps = model.uld_bench_steps or [[0, 0, 0.0, 0.0]]
            steps[-1][1] += hidden_states.shape[0]
            steps[-1][3] += time.perf_counter() - started
            model.uld_bench_steps = steps

    model.forward, model.compute_logits = clocked_forward, clocked_logits


def take_steps(model) -> list[list[float]]:
    """The steps clocked since the last call (and a fresh list for the next)."""
    steps, model.uld_bench_steps = model.uld_bench_steps, []
    return steps


def best_steps(rounds: list[list[list[float]]]) -> dict:
    """One system's rounds of the same requests, rebuilt from each step's fastest round.

    Rounds of the same requests (EOS ignored) run the same schedule, in every system: step i is the same tokens and
    logits rows each time. A whole round's best keeps whatever spikes hit it; the sum of each step's best keeps only
    the spikes that hit a step in every round. Returns the model seconds of all steps, of the decode-only steps (every
    row decoding: as many logits rows as tokens) and of compute_logits, with the schedule's digest, by which systems'
    rounds are checked to be the same work (None where this system's own rounds differed)."""
    schedules = {json.dumps([step[:2] for step in steps]) for steps in rounds}
    if len(schedules) != 1:
        return {"schedule": None}
    (schedule,) = schedules
    by_step = list(zip(*rounds, strict=True))  # step i of every round
    best = [min(run[2] + run[3] for run in step) for step in by_step]
    decode = [seconds for seconds, step in zip(best, by_step, strict=True) if step[0][0] == step[0][1]]
    return {
        "schedule": hashlib.sha256(schedule.encode()).hexdigest()[:12],
        "steps": len(best),
        "decode_steps": len(decode),
        "model_s": sum(best),
        "decode_s": sum(decode),
        "logits_s": sum(min(run[3] for run in step) for step in by_step),
    }


def steps_speedup(mine: dict, theirs: dict, part: str = "model_s") -> float | None:
    """How much faster `mine` ran than `theirs` (both `best_steps`) in `part`: model_s, decode_s or logits_s. None
    where they did not run the same schedule (so not the same work), or where `mine` has none of that part."""
    if mine["schedule"] is None or mine["schedule"] != theirs["schedule"] or not mine[part]:
        return None
    return theirs[part] / mine[part]
