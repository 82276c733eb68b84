"""bench/steps.py: the per-step clocks the benchmarks compare systems by, on a real module and on given rounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.steps import best_steps, clock_steps, steps_speedup, take_steps


class TwoCalls(nn.Module):
    """A model with vLLM's two entry points: forward over the step's tokens, compute_logits over the sampled rows."""

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return torch.zeros(positions.shape[0], 4)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states @ torch.ones(4, 8)


def test_clock_steps_records_each_forward_with_the_logits_calls_after_it() -> None:
    model = TwoCalls()
    clock_steps(model)
    hidden = model(input_ids=torch.zeros(5, dtype=torch.long), positions=torch.arange(5))  # a prefill of 5 tokens
    model.compute_logits(hidden[-1:])
    model(torch.zeros(3, dtype=torch.long), torch.arange(3))  # positional, as some runners call it
    model.compute_logits(torch.zeros(2, 4))
    model.compute_logits(torch.zeros(1, 4))  # a second logits call in the same step adds to it
    steps = take_steps(model)
    assert [step[:2] for step in steps] == [[5, 1], [3, 3]]
    assert all(step[2] > 0 and step[3] > 0 for step in steps)
    assert take_steps(model) == []


def _round(seconds: list[tuple[float, float]], schedule=((5, 1), (2, 2), (2, 2))) -> list[list[float]]:
    return [
        [tokens, rows, forward, logits] for (tokens, rows), (forward, logits) in zip(schedule, seconds, strict=True)
    ]


def test_best_steps_keeps_each_steps_fastest_round() -> None:
    spiked_early = _round([(9.0, 1.0), (1.0, 0.5), (1.0, 0.5)])
    spiked_late = _round([(2.0, 1.0), (1.0, 0.5), (7.0, 0.5)])
    best = best_steps([spiked_early, spiked_late])
    assert best["model_s"] == pytest.approx(3.0 + 1.5 + 1.5)  # neither round alone is this fast (10.5 and 11.5)
    assert best["decode_s"] == pytest.approx(3.0)  # steps 2 and 3: as many logits rows as tokens
    assert best["logits_s"] == pytest.approx(2.0)
    assert (best["steps"], best["decode_steps"]) == (3, 2)
    same_work = best_steps([_round([(1.0, 1.0)] * 3)])
    assert same_work["schedule"] == best["schedule"]  # other timings, the same schedule: comparable


def test_best_steps_refuses_rounds_of_different_schedules() -> None:
    other = _round([(1.0, 0.1)] * 3, schedule=((5, 1), (2, 2), (1, 1)))
    assert best_steps([_round([(1.0, 0.1)] * 3), other]) == {"schedule": None}
    assert best_steps([other])["schedule"] != best_steps([_round([(1.0, 0.1)] * 3)])["schedule"]


def test_steps_speedup_compares_only_the_same_schedule() -> None:
    fast, slow = best_steps([_round([(1.0, 0.5)] * 3)]), best_steps([_round([(2.0, 1.0)] * 3)])
    assert steps_speedup(fast, slow) == pytest.approx(2.0)
    assert steps_speedup(fast, slow, "logits_s") == pytest.approx(2.0)
    prefill_only = best_steps([_round([(1.0, 0.5)], schedule=((5, 1),))])
    assert steps_speedup(prefill_only, prefill_only, "decode_s") is None  # no decode-only steps: nothing to compare
    other = best_steps([_round([(1.0, 0.5)] * 3, schedule=((5, 1), (2, 2), (1, 1)))])
    assert steps_speedup(fast, other) is None
    assert steps_speedup(fast, {"schedule": None}) is None
