"""Each loss term against a computation by hand (plain Python math on small numbers)."""

from __future__ import annotations

import math

import pytest
import torch

from uld_train import losses
from uld_train.config import TrainConfig
from uld_train.loop import warmup_cosine
from uld_train.methods import METHODS

IGNORE = losses.IGNORE_INDEX


def log_softmax(row: list[float]) -> list[float]:
    norm = math.log(sum(math.exp(x) for x in row))
    return [x - norm for x in row]


# Batch of one: 4 positions, vocabulary 3. Labels: the question token 0 is masked, answer tokens 1..3 are labelled.
LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0], [0.3, 0.1, -0.4]]
LABELS = [IGNORE, 2, 0, 1]


def test_answer_nll_is_mean_over_answer_tokens_of_next_token_cross_entropy():
    # logits at t predict label t + 1: pairs (row 0, token 2), (row 1, token 0), (row 2, token 1)
    expected = -(log_softmax(LOGITS[0])[2] + log_softmax(LOGITS[1])[0] + log_softmax(LOGITS[2])[1]) / 3
    got = losses.answer_nll(torch.tensor([LOGITS]), torch.tensor([LABELS]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert losses.gradient_ascent(torch.tensor([LOGITS]), torch.tensor([LABELS])).item() == pytest.approx(
        -expected, rel=1e-6
    )


def test_answer_nll_skips_masked_labels():
    labels = [IGNORE, IGNORE, 0, IGNORE]  # only (row 1, token 0) counts
    got = losses.answer_nll(torch.tensor([LOGITS]), torch.tensor([labels]))
    assert got.item() == pytest.approx(-log_softmax(LOGITS[1])[0], rel=1e-6)


def test_sequence_logprob_sums_each_examples_answer_tokens():
    logits = torch.tensor([LOGITS, LOGITS])
    labels = torch.tensor([LABELS, [IGNORE, IGNORE, IGNORE, 2]])
    first = log_softmax(LOGITS[0])[2] + log_softmax(LOGITS[1])[0] + log_softmax(LOGITS[2])[1]
    second = log_softmax(LOGITS[2])[2]
    assert losses.sequence_logprob(logits, labels).tolist() == pytest.approx([first, second], rel=1e-6)


def test_uniform_kl_by_hand_and_padding_ignored():
    # Rows 0..2 predict real tokens (attention mask 1 at t + 1); row 3 is the last token, it predicts nothing.
    per_row = [-sum(log_softmax(r)) / 3 - math.log(3) for r in LOGITS[:3]]
    got = losses.uniform_kl(torch.tensor([LOGITS]), torch.tensor([[1, 1, 1, 1]]))
    assert got.item() == pytest.approx(sum(per_row) / 3, rel=1e-6)
    # Padding after position 1: only row 0 predicts a real token. A peaked padding row must not count (reference bug).
    padded = [LOGITS[0], LOGITS[1], [50.0, -50.0, 0.0], [0.0, 0.0, 0.0]]
    got = losses.uniform_kl(torch.tensor([padded]), torch.tensor([[1, 1, 0, 0]]))
    assert got.item() == pytest.approx(per_row[0], rel=1e-6)


def test_uniform_kl_is_zero_on_flat_logits_and_equals_torch_kl_div():
    assert losses.uniform_kl(torch.full((2, 5, 7), 3.0), torch.ones(2, 5)).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(3, 6, 11, generator=torch.Generator().manual_seed(0))
    log_p = torch.log_softmax(logits[:, :-1], dim=-1).reshape(-1, 11)
    uniform = torch.full_like(log_p, 1 / 11)
    reference = torch.nn.functional.kl_div(log_p, uniform, reduction="batchmean")  # the reference's formula, no padding
    assert losses.uniform_kl(logits, torch.ones(3, 6)).item() == pytest.approx(reference.item(), rel=1e-5)


def test_kl_to_reference_by_hand():
    model = [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    reference = [[math.log(9.0), 0.0], [1.0, 0.0], [0.0, 0.0]]  # p_ref = (0.9, 0.1), then equal to the model
    got = losses.kl_to_reference(torch.tensor([model]), torch.tensor([reference]), torch.tensor([[1, 1, 1]]))
    first = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(p_ref || p) at row 0, 0 at row 1
    assert got.item() == pytest.approx(first / 2, rel=1e-5)
    got = losses.kl_to_reference(torch.tensor([model]), torch.tensor([reference]), torch.tensor([[1, 1, 0]]))
    assert got.item() == pytest.approx(first, rel=1e-5)


def test_npo_by_hand():
    beta = 0.1
    logprob, reference = [-3.0, -10.0], [-2.0, -1.0]
    expected = [
        -2 / beta * math.log(1 / (1 + math.exp(beta * (lp - ref)))) for lp, ref in zip(logprob, reference, strict=True)
    ]
    got = losses.npo(torch.tensor(logprob), torch.tensor(reference), beta=beta)
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    # Model equal to the reference: 2/beta * log 2; NPO stays bounded as the forget likelihood collapses.
    assert losses.npo(torch.tensor([-4.0]), torch.tensor([-4.0])).item() == pytest.approx(
        2 / 0.1 * math.log(2), rel=1e-6
    )
    assert losses.npo(torch.tensor([-1e4]), torch.tensor([-1.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_registry_names_every_cli_method_and_uld_defaults():
    assert list(METHODS) == ["uld", "ga", "ga_gd", "ga_kl", "npo", "npo_gd"]
    assert METHODS["uld"]().retain_weight == 5.0 and METHODS["uld"].trains_assistant
    assert METHODS["npo_gd"](retain_weight=2.0).retain_weight == 2.0
    assert not METHODS["ga"].needs_retain and not METHODS["npo"].needs_retain
    assert TrainConfig.__dataclass_fields__["lora_r"].default == 16


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(warmup_steps=3, total_steps=13)
    assert [factor(s) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert factor(3) == pytest.approx(1.0)
    assert factor(8) == pytest.approx(0.5)  # half-way through the 10 decay steps
    assert 0 < factor(12) < 0.03  # the last step still learns a little
