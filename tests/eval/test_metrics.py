"""TOFU metrics: real Llama-2-7B logs against a plain-Python re-derivation, ROUGE-L recall, per-example entries, errors.

The expected values below are computed independently of uld_vllm.eval.metrics, from the formulas of
docs/ULD_REFERENCE.md section 4 with loops and math.exp; only the KS p-value comes from scipy (TOFU defines
Forget Quality as scipy's ks_2samp p-value).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import ks_2samp

from uld_vllm.eval.metrics import (
    EVAL_LOGS,
    FORGET_LOG,
    LOG_KEYS,
    RETAIN_LOG,
    EvalError,
    aggregate,
    example_log_entries,
    facts_stated,
    load_eval_logs,
    repetitive,
    rouge_l_recall,
)

LOG_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tofu" / "eval_logs"
MODELS = ("full", "retain90", "retain95", "retain99")
TIGHT = 1e-12  # relative tolerance: only summation order differs between numpy and the loops below


# ---- independent re-derivation of TOFU's aggregation -----------------------------------------------------------


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values)


def _truth_ratios(split_log: dict) -> list[float]:
    """tr = exp(mean perturbed loss - paraphrased loss), per example."""
    return [
        math.exp(_mean(split_log["average_perturb_loss"][i]) - split_log["avg_paraphrased_loss"][i])
        for i in split_log["avg_paraphrased_loss"]
    ]


def _expected_prob(split_log: dict, normalized: bool) -> float:
    probs = []
    for i, loss in split_log["avg_gt_loss"].items():
        p_true = math.exp(-loss)
        p_options = p_true + sum(math.exp(-x) for x in split_log["average_perturb_loss"][i])
        probs.append(p_true / p_options if normalized else p_true)
    return _mean(probs)


def _expected_summary(logs: dict) -> dict[str, float]:
    names = {
        "eval_real_author_wo_options.json": "Real Authors",
        "eval_real_world_wo_options.json": "Real World",
        "eval_log.json": "Retain",
        "eval_log_forget.json": "Forget",
    }
    expected = {}
    for split, name in names.items():
        log = logs[split]
        trs = _truth_ratios(log)
        expected[f"ROUGE {name}"] = _mean(log["rougeL_recall"].values())
        expected[f"Prob. {name}"] = _expected_prob(log, normalized=not split.startswith("eval_log"))
        if name == "Forget":
            expected[f"Truth Ratio {name}"] = _mean(min(tr, 1 / tr) for tr in trs)
        else:
            expected[f"Truth Ratio {name}"] = _mean(max(0.0, 1 - 1 / tr) for tr in trs)
    utility = [value for key, value in expected.items() if "Forget" not in key]
    expected["Model Utility"] = len(utility) / sum(1 / value for value in utility)
    return expected


def _ks_statistic(a: list[float], b: list[float]) -> float:
    """Largest gap between the two empirical CDFs."""
    return max(abs(sum(x <= v for x in a) / len(a) - sum(x <= v for x in b) / len(b)) for v in a + b)


def _assert_matches(result: dict[str, float], expected: dict[str, float]) -> None:
    for key, value in expected.items():
        assert type(result[key]) is float, key
        assert math.isclose(result[key], value, rel_tol=TIGHT), (key, result[key], value)


# ---- a small hand-made log ---------------------------------------------------------------------------------------


def _toy_split(n: int, n_perturbed: int, shift: float) -> dict[str, dict[str, Any]]:
    ids = [str(i) for i in range(n)]
    return {
        "avg_gt_loss": {i: 0.1 * (j + 1) + shift for j, i in enumerate(ids)},
        "rougeL_recall": {i: 1.0 - 0.2 * j for j, i in enumerate(ids)},
        "avg_paraphrased_loss": {i: 0.5 + 0.1 * j + shift for j, i in enumerate(ids)},
        "average_perturb_loss": {i: [0.4 + 0.3 * j + 0.1 * k for k in range(n_perturbed)] for j, i in enumerate(ids)},
    }


def _toy_logs(n: int = 4, shift: float = 0.0) -> dict[str, dict[str, dict[str, Any]]]:
    """Four splits of n examples (5 perturbed answers on forget/retain, 3 on real authors/world, as in TOFU)."""
    return {split: _toy_split(n, 5 if split.startswith("eval_log") else 3, shift) for split in EVAL_LOGS}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_json(path: Path, obj: Any) -> Path:
    return _write_text(path, json.dumps(obj))


def _write_split_files(directory: Path, logs: dict) -> Path:
    directory.mkdir()
    for split, split_log in logs.items():
        _write_json(directory / split, split_log)
    return directory


# ---- the real TOFU logs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tofu_logs() -> dict[str, dict]:
    if not LOG_DIR.is_dir():
        pytest.skip(f"TOFU eval logs not found at {LOG_DIR}")
    return {model: load_eval_logs(LOG_DIR / f"llama2-7b_{model}.json") for model in MODELS}


@pytest.mark.parametrize("model", MODELS)
def test_model_utility_matches_tofu_formulas(tofu_logs: dict, model: str) -> None:
    result = aggregate(tofu_logs[model], None)
    _assert_matches(result, _expected_summary(tofu_logs[model]))
    assert result["model_utility"] == result["Model Utility"]
    assert result["rouge_retain"] == result["ROUGE Retain"]
    assert result["rouge_forget"] == result["ROUGE Forget"]
    assert "Forget Quality" not in result and "forget_quality" not in result


def test_model_utility_of_the_finetuned_model_is_tofus(tofu_logs: dict) -> None:
    # TOFU reports Model Utility 0.62-0.63 for Llama-2-7B finetuned on all of TOFU; retain models are close to it.
    for model in MODELS:
        assert 0.59 < aggregate(tofu_logs[model], None)["Model Utility"] < 0.64, model
    assert aggregate(tofu_logs["full"], None)["ROUGE Forget"] > 0.95  # it knows the forget set
    assert aggregate(tofu_logs["retain90"], None)["ROUGE Forget"] < 0.5  # it never saw it


@pytest.mark.parametrize(
    ("model", "retain"),
    [("full", "retain90"), ("retain90", "retain90"), ("retain95", "retain95"), ("retain99", "retain99")],
)
def test_forget_quality_matches_tofu_formulas(tofu_logs: dict, model: str, retain: str) -> None:
    result = aggregate(tofu_logs[model], tofu_logs[retain])
    ours, theirs = _truth_ratios(tofu_logs[model][FORGET_LOG]), _truth_ratios(tofu_logs[retain][FORGET_LOG])
    expected_pvalue = float(ks_2samp(ours, theirs).pvalue)
    _assert_matches(
        result,
        {
            **_expected_summary(tofu_logs[model]),
            "Forget Quality": expected_pvalue,
            "KS Test PVal Forget": expected_pvalue,
            "KS Test Forget": _ks_statistic(ours, theirs),
        },
    )
    assert result["forget_quality"] == result["Forget Quality"]


def test_forget_quality_separates_the_finetuned_model_from_the_retain_model(tofu_logs: dict) -> None:
    assert aggregate(tofu_logs["retain90"], tofu_logs["retain90"])["Forget Quality"] == 1.0
    assert aggregate(tofu_logs["full"], tofu_logs["retain90"])["Forget Quality"] < 1e-10


@pytest.mark.parametrize("retain", ["retain95", "retain99"])
def test_forget_quality_refuses_a_retain_model_of_another_forget_set(tofu_logs: dict, retain: str) -> None:
    # The full model's log covers forget10 (300 questions); retain95/99 were evaluated on forget05/forget01.
    with pytest.raises(EvalError, match="different forget set"):
        aggregate(tofu_logs["full"], tofu_logs[retain])


def test_logged_truth_ratio_is_paraphrased_over_perturbed(tofu_logs: dict) -> None:
    # TOFU logs exp(paraphrased - mean perturbed) per example (in float32): the inverse of the aggregation's tr.
    for split, split_log in tofu_logs["full"].items():
        for i, logged in split_log["truth_ratio"].items():
            perturbed = split_log["average_perturb_loss"][i]
            inverse_tr = math.exp(split_log["avg_paraphrased_loss"][i] - sum(perturbed) / len(perturbed))
            assert math.isclose(logged, inverse_tr, rel_tol=1e-5), (split, i)


# ---- hand-made inputs --------------------------------------------------------------------------------------------


def test_aggregate_of_a_hand_made_log_matches_tofu_formulas() -> None:
    logs, retain_logs = _toy_logs(), _toy_logs(shift=0.5)
    result = aggregate(logs, retain_logs)
    _assert_matches(result, _expected_summary(logs))
    ours, theirs = _truth_ratios(logs[FORGET_LOG]), _truth_ratios(retain_logs[FORGET_LOG])
    assert math.isclose(result["KS Test Forget"], _ks_statistic(ours, theirs), rel_tol=TIGHT)
    assert all(type(value) is float for value in result.values())


def test_a_directory_of_split_files_reads_like_the_aggregated_file(tmp_path: Path) -> None:
    logs, retain_logs = _toy_logs(), _toy_logs(shift=0.5)
    from_file = load_eval_logs(_write_json(tmp_path / "aggregated.json", logs))
    from_directory = load_eval_logs(_write_split_files(tmp_path / "eval_results", logs))
    assert from_directory == from_file
    assert aggregate(from_directory, retain_logs) == aggregate(from_file, retain_logs)


@pytest.mark.parametrize(
    ("generated", "reference", "recall"),
    [
        pytest.param("He was running home", "He runs home", 1.0, id="stemming-running-runs"),
        pytest.param("The Eiffel Tower is in Paris", "Paris", 1.0, id="recall-not-precision"),
        pytest.param("Paris", "The Eiffel Tower is in Paris", 1 / 6, id="one-of-six-reference-words"),
        pytest.param("bob met alice", "alice met bob today", 1 / 4, id="longest-common-subsequence-not-bag"),
        pytest.param("", "anything at all", 0.0, id="empty-generation"),
    ],
)
def test_rouge_l_recall(generated: str, reference: str, recall: float) -> None:
    assert rouge_l_recall(generated, reference) == recall


@pytest.mark.parametrize(
    ("generated", "facts", "share"),
    [
        pytest.param("She was born on 5 May 1956.", ["5", "May", "1956"], 1.0, id="all-stated"),
        pytest.param("She was born on 15 May 1956.", ["5", "May", "1956"], 2 / 3, id="whole-numbers-only"),
        pytest.param("Her debut was the silent river.", ["The Silent River"], 1.0, id="case-ignored"),
        pytest.param("The author writes crime fiction.", ["science fiction"], 0.0, id="phrase-not-word"),
        pytest.param("", ["Paris"], 0.0, id="empty-generation"),
    ],
)
def test_facts_stated_counts_whole_facts(generated: str, facts: list[str], share: float) -> None:
    assert facts_stated(generated, facts) == share


def test_example_log_entries_from_token_logprobs() -> None:
    entries = example_log_entries(
        gt_logprobs=[-1.0, -2.0, -3.0],
        paraphrased_logprobs=[-0.5, -1.5],
        perturbed_logprobs=[[-2.0, -2.0], [-4.0]],
    )
    assert entries == {
        "avg_gt_loss": 2.0,
        "gt_loss": 6.0,
        "num_token_gt": 3,
        "avg_paraphrased_loss": 1.0,
        "paraphrased_loss": 2.0,
        "num_token_paraphrased": 2,
        "average_perturb_loss": [2.0, 4.0],
        "perturb_loss": [4.0, 4.0],
        "num_token_perturb": [2, 1],
        "truth_ratio": math.exp(1.0 - 3.0),  # TOFU's logged direction: paraphrased minus mean perturbed
    }
    assert set(entries) <= set(LOG_KEYS)


# ---- one-line errors ---------------------------------------------------------------------------------------------


def _load_edited(tmp_path: Path, edit: Callable[[dict], object]) -> None:
    logs = _toy_logs()
    edit(logs)
    load_eval_logs(_write_json(tmp_path / "logs.json", logs))


def _aggregate_with_retain(retain_logs: dict) -> None:
    aggregate(_toy_logs(), retain_logs)


def _without(logs: dict, split: str) -> dict:
    return {name: split_log for name, split_log in logs.items() if name != split}


def _renumbered(logs: dict, split: str) -> dict:
    """logs with the examples of one split renumbered from 100: same count, other questions."""
    logs = copy.deepcopy(logs)
    for key, values in logs[split].items():
        logs[split][key] = {str(100 + int(i)): value for i, value in values.items()}
    return logs


BAD_INPUTS = [
    pytest.param(lambda tmp: load_eval_logs(tmp / "absent.json"), "absent.json: no such file", id="missing-file"),
    pytest.param(
        lambda tmp: load_eval_logs(_write_split_files(tmp / "d", _without(_toy_logs(), FORGET_LOG))),
        "eval_log_forget.json: no such file",
        id="directory-missing-split-file",
    ),
    pytest.param(
        lambda tmp: load_eval_logs(_write_text(tmp / "x.json", "{oops")), "x.json: not valid JSON", id="not-json"
    ),
    pytest.param(
        lambda tmp: load_eval_logs(_write_json(tmp / "list.json", [1, 2])), "expected a JSON object", id="not-an-object"
    ),
    pytest.param(
        lambda tmp: _load_edited(tmp, lambda logs: logs.pop(RETAIN_LOG)),
        f"missing split {RETAIN_LOG}",
        id="missing-split",
    ),
    pytest.param(
        lambda tmp: _load_edited(tmp, lambda logs: logs[FORGET_LOG].pop("avg_paraphrased_loss")),
        f"split {FORGET_LOG} lacks metric 'avg_paraphrased_loss'",
        id="missing-metric",
    ),
    pytest.param(
        lambda tmp: _load_edited(tmp, lambda logs: logs[RETAIN_LOG]["rougeL_recall"].pop("3")),
        "'rougeL_recall' and 'avg_gt_loss' cover different examples",
        id="metric-misses-an-example",
    ),
    pytest.param(
        lambda tmp: _load_edited(tmp, lambda logs: logs[RETAIN_LOG]["average_perturb_loss"]["0"].pop()),
        "the same length for every example",
        id="ragged-perturbed-losses",
    ),
    pytest.param(
        lambda tmp: _load_edited(tmp, lambda logs: logs[RETAIN_LOG]["avg_gt_loss"].update({"0": "low"})),
        "'avg_gt_loss' must map each example to a number",
        id="non-numeric-loss",
    ),
    pytest.param(
        lambda tmp: _load_edited(tmp, lambda logs: logs.update({FORGET_LOG: _toy_split(0, 5, 0.0)})),
        f"split {FORGET_LOG} has no examples",
        id="empty-split",
    ),
    pytest.param(
        lambda tmp: _aggregate_with_retain(_toy_logs(n=3)),
        "forget split has 3 examples, the unlearned model's has 4",
        id="retain-forget-set-of-other-size",
    ),
    pytest.param(
        lambda tmp: _aggregate_with_retain(_renumbered(_toy_logs(), FORGET_LOG)),
        "different example ids",
        id="retain-forget-set-of-other-questions",
    ),
    pytest.param(
        lambda tmp: example_log_entries([], [-1.0], [[-1.0]]), "true answer has no scored tokens", id="empty-answer"
    ),
]


@pytest.mark.parametrize(("trigger", "message"), BAD_INPUTS)
def test_bad_input_is_a_one_line_eval_error(tmp_path: Path, trigger: Callable[[Path], object], message: str) -> None:
    with pytest.raises(EvalError, match=re.escape(message)) as raised:
        trigger(tmp_path)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("generated", "loops"),
    [
        ("The author was born in Paris in 1956 to a baker and a nurse.", False),
        ("tlement restaurateur grizzBLE accred accred accred accred accred", True),  # one word five times
        ("Her work: the tide turns, the tide turns, the tide turns, the end", True),  # a 3-word run three times
        ("yes yes no yes yes no yes yes", False),  # "yes yes no" twice only
        ("", False),
    ],
)
def test_repetitive_flags_loops_not_fluent_answers(generated: str, loops: bool) -> None:
    assert repetitive(generated) is loops


def test_aggregate_counts_empty_forget_answers() -> None:
    """An answer with no text has no judge NLL, so the gibberish rate cannot see it; its share is reported."""
    logs = _toy_logs()
    answers = ["Paris.", "", "  ", "He wrote novels."]
    logs[FORGET_LOG]["generated_text"] = {str(i): ["question", a, "truth"] for i, a in enumerate(answers)}
    result = aggregate(logs, None)
    assert result["Empty Forget"] == result["empty_forget"] == 0.5
    assert "Empty Forget" not in aggregate(_toy_logs(), None)  # logs without answers (TOFU's scoring-only ones)
