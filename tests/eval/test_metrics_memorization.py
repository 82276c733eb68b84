"""open-unlearning's Exact Memorization and Extraction Strength, from greedy flags, against its own loop."""

from __future__ import annotations

import random

import pytest

from uld_vllm.eval.metrics import EvalError, memorization_entries


def open_unlearning_es(preds: list[int], labels: list[int]) -> float:
    """open-unlearning's extraction_strength loop for one answer, as written there (k survives the loop)."""
    for k in range(len(labels)):
        if preds[k:] == labels[k:]:
            break
    return 1 - (k / len(labels))


@pytest.mark.parametrize(
    "greedy, em, es",
    [
        ([True, True, True, True], 1.0, 1.0),
        ([False, True, True, True], 0.75, 0.75),  # extractable from the second token on
        ([True, False, True, True], 0.75, 0.5),
        ([True, True, True, False], 0.75, 0.25),  # the last token is wrong: open-unlearning leaves ES at 1 / n
        ([False, False, False, False], 0.0, 0.25),
    ],
)
def test_by_hand(greedy: list[bool], em: float, es: float) -> None:
    assert memorization_entries(greedy) == {"exact_memorization": em, "extraction_strength": es}


def test_equals_open_unlearnings_loop_on_random_answers() -> None:
    rng = random.Random(0)
    for _ in range(200):
        labels = [rng.randrange(5) for _ in range(rng.randint(1, 12))]
        preds = [label if rng.random() < 0.7 else (label + 1) % 5 for label in labels]
        got = memorization_entries([p == t for p, t in zip(preds, labels, strict=True)])
        assert got["extraction_strength"] == pytest.approx(open_unlearning_es(preds, labels))
        assert got["exact_memorization"] == pytest.approx(
            sum(p == t for p, t in zip(preds, labels, strict=True)) / len(labels)
        )


def test_an_answer_without_tokens_is_an_error() -> None:
    with pytest.raises(EvalError, match="no scored tokens"):
        memorization_entries([])
