"""The fluency measure (uld-eval --judge): the judge LM's NLL tells TOFU's own answers from the same words shuffled,
and the gibberish rate counts the shuffled ones against the fluent ones' 95th percentile."""

from __future__ import annotations

import random

import numpy as np
import pytest
from helpers import SMALL_ENGINE

from uld_vllm.engine import check_model
from uld_vllm.eval.data import read_eval_data
from uld_vllm.eval.metrics import FLUENCY_KEY, FORGET_LOG, gibberish_rate
from uld_vllm.eval.run import EvalSettings, EvalTimings, judge_answers
from uld_vllm.smollm2_tofu import base_dir

pytestmark = pytest.mark.vllm


def judged(answers: list[str], examples) -> dict[str, float]:
    """The judge's NLL of each answer to its question (the pretrained SmolLM2, as on real TOFU), through the engine."""
    records = {"forget": {i: {"generated_text": ["", answer, ""]} for i, answer in enumerate(answers)}}
    settings = EvalSettings(model="unused", data="unused", dtype="float32", engine_args=SMALL_ENGINE, progress=False)
    judge_answers(settings, check_model(base_dir()), {"forget": examples}, [(records, EvalTimings())])
    return {str(i): record[FLUENCY_KEY] for i, record in records["forget"].items()}


def test_the_judge_separates_fluent_answers_from_their_words_shuffled():
    examples = read_eval_data("tofu:forget05", ("forget",))["forget"][:40]
    rng = random.Random(0)
    fluent = [example.answer for example in examples]
    shuffled = [" ".join(rng.sample(words, len(words))) for words in (answer.split() for answer in fluent)]
    ours, theirs = judged(shuffled, examples), judged(fluent, examples)
    assert np.mean(list(ours.values())) > np.mean(list(theirs.values())) + 1.0  # nats per token
    as_logs = [{FORGET_LOG: {FLUENCY_KEY: values}} for values in (ours, theirs)]
    assert gibberish_rate(as_logs[0], as_logs[1])["Gibberish Forget"] >= 0.9
    assert gibberish_rate(as_logs[1], as_logs[1])["Gibberish Forget"] <= 0.05  # fluent against itself: the tail
