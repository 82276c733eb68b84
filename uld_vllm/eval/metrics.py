"""TOFU's evaluation math: per-example log entries, ROUGE-L recall, and the Model Utility / Forget Quality aggregation.

Semantics: docs/ULD_REFERENCE.md section 4, i.e. TOFU's own code (github.com/locuslab/tofu): the per-example
entries of `evaluate_util.py` (`get_all_evals`, `eval_perturbation_ratio`, `eval_rouge_recall`) and the aggregation of
`aggregate_eval_stat.py` (`get_model_utility`, `get_forget_quality`), whose numpy operations are kept in their order
so that results match TOFU's bit for bit. Losses are natural-log NLLs (nats); "avg" losses are nats per token.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp

from uld_vllm.errors import UldError

# TOFU's eval-log layout: one JSON file per split, or one aggregated file keyed by these file names.
FORGET_LOG = "eval_log_forget.json"
RETAIN_LOG = "eval_log.json"
REAL_AUTHORS_LOG = "eval_real_author_wo_options.json"
REAL_WORLD_LOG = "eval_real_world_wo_options.json"

# Split file -> TOFU's display name, in `get_model_utility`'s order: its result keys, and so the order in which Model
# Utility's harmonic mean adds up its nine numbers, follow this order, not the log's.
SPLIT_NAMES: dict[str, str] = {
    REAL_AUTHORS_LOG: "Real Authors",
    REAL_WORLD_LOG: "Real World",
    RETAIN_LOG: "Retain",
    FORGET_LOG: "Forget",
}
EVAL_LOGS: tuple[str, ...] = tuple(SPLIT_NAMES)  # the four log files, in that order

# Per-example keys our logs hold for every split (TOFU's names), each a dict example id -> value. TOFU also logs
# rouge1_recall, which no aggregate reads; it is not computed here.
LOG_KEYS: tuple[str, ...] = (
    "avg_gt_loss",  # NLL of the true answer, nats per token
    "gt_loss",  # NLL of the true answer, nats (sum over its tokens)
    "num_token_gt",  # tokens scored in the true answer
    "generated_text",  # [prompt, greedy generation, true answer]
    "rougeL_recall",  # ROUGE-L recall of the generation against the true answer
    "average_perturb_loss",  # list: NLL per perturbed (wrong) answer, nats per token
    "avg_paraphrased_loss",  # NLL of the paraphrased answer (the true one for real authors/world), nats per token
    "truth_ratio",  # exp(avg_paraphrased_loss - mean(average_perturb_loss)): the inverse of the aggregation's tr
    "paraphrased_loss",  # NLL of the paraphrased answer, nats
    "perturb_loss",  # list: NLL per perturbed answer, nats
    "num_token_paraphrased",  # tokens scored in the paraphrased answer
    "num_token_perturb",  # list: tokens scored per perturbed answer
)
# With `uld-eval run --judge JUDGE`: the judge LM's mean NLL per token of each greedy answer after its question (same
# prompt format), nats; None for an empty answer. Not TOFU's: it tells a fluent wrong answer from noise.
FLUENCY_KEY = "fluency_nll"
GIBBERISH_QUANTILE = 0.95  # an answer is gibberish above this quantile of the retain model's own answers' NLL
# Not TOFU's, absent from older logs, averaged over the forget split where logged: open-unlearning's memorisation of
# the true answer, teacher-forced (the share of its tokens that are the model's greedy choice, and Extraction
# Strength, below); and, for data that lists each answer's facts, the share of them the greedy generation states.
MEMORIZATION_KEYS = {"exact_memorization": "Exact Memorization", "extraction_strength": "Extraction Strength"}
FACTS_KEY = "facts_stated"
# 1.0 where the greedy answer loops (repetitive): degenerate text a judge LM finds likely, which the gibberish rate
# misses (bench/results/README.md, "An assistant trained until it remembers").
REPETITION_KEY = "repetitive"
FORGET_MEANS = MEMORIZATION_KEYS | {FACTS_KEY: "Facts Stated", REPETITION_KEY: "Repetitive"}
# The keys the aggregation reads; a log lacking one cannot be scored.
AGGREGATED_KEYS: tuple[str, ...] = ("avg_gt_loss", "rougeL_recall", "avg_paraphrased_loss", "average_perturb_loss")
# Splits whose "Prob." is the plain probability of the true answer (TOFU: `'eval_log' in k`); on the real-author and
# real-world splits it is normalized over the answer options instead.
_PLAIN_PROB_SPLITS = (RETAIN_LOG, FORGET_LOG)

EvalLogs = dict[str, dict[str, dict[Any, Any]]]  # split file -> metric key -> example id -> value


class EvalError(UldError):
    """The one-line user error of uld-eval (a ValueError): eval logs that are missing, malformed or do not match."""


# ---- per example ------------------------------------------------------------------------------------------------


@functools.cache
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    """Built once: the stemmer and tokenizer setup is not free, and every example uses the same scorer."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generated: str, reference: str) -> float:
    """ROUGE-L recall of `generated` against `reference` (TOFU's `rougeL_recall`): LCS length / reference tokens.

    Recall, not F1, so a long correct generation is not penalized for its extra words (TOFU's `eval_rouge_recall`).
    """
    return float(_rouge_l_scorer().score(reference, generated)["rougeL"].recall)


def _nll(logprobs: Sequence[float], what: str) -> tuple[float, float, int]:
    """(nats per token, nats, tokens) of one answer from its tokens' log-probs (natural log)."""
    if len(logprobs) == 0:
        raise EvalError(f"{what} has no scored tokens")
    total = -math.fsum(logprobs)
    return total / len(logprobs), total, len(logprobs)


def example_log_entries(
    gt_logprobs: Sequence[float],
    paraphrased_logprobs: Sequence[float],
    perturbed_logprobs: Sequence[Sequence[float]],
) -> dict[str, float | int | list[float] | list[int]]:
    """TOFU's per-example loss entries for one question, from the log-probs of its answers' tokens.

    Each argument holds log p(token | question, earlier answer tokens), natural log, one value per scored token of an
    answer (TOFU scores the answer's tokens and the one EOS it appends): the true answer, the paraphrased answer (pass
    the true answer again on the real-author/world splits, as TOFU does), and each perturbed (wrong) answer. Losses
    come back in nats, the `avg_*`/`average_*` ones in nats per token. `truth_ratio` is what TOFU logs,
    exp(paraphrased - mean perturbed), the inverse of the tr the aggregation recomputes from the losses.
    """
    if len(perturbed_logprobs) == 0:
        raise EvalError("an example has no perturbed answers")
    avg_gt, gt, n_gt = _nll(gt_logprobs, "the true answer")
    avg_para, para, n_para = _nll(paraphrased_logprobs, "the paraphrased answer")
    avg_perturb, perturb, n_perturb = zip(*(_nll(p, "a perturbed answer") for p in perturbed_logprobs), strict=True)
    return {
        "avg_gt_loss": avg_gt,
        "gt_loss": gt,
        "num_token_gt": n_gt,
        "avg_paraphrased_loss": avg_para,
        "paraphrased_loss": para,
        "num_token_paraphrased": n_para,
        "average_perturb_loss": list(avg_perturb),
        "perturb_loss": list(perturb),
        "num_token_perturb": list(n_perturb),
        "truth_ratio": math.exp(avg_para - sum(avg_perturb) / len(avg_perturb)),
    }


def memorization_entries(greedy: Sequence[bool]) -> dict[str, float]:
    """Exact Memorization and Extraction Strength of one true answer from its greedy flags (one per scored token).

    As open-unlearning computes them (its memorization.py): EM is the share of greedy tokens; ES is 1 - k / n for the
    smallest k whose suffix is all greedy, where a last token that is not greedy leaves k at n - 1 (ES = 1 / n)."""
    n = len(greedy)
    if n == 0:
        raise EvalError("an answer has no scored tokens")
    k = next((k for k in range(n) if all(greedy[k:])), n - 1)
    return {"exact_memorization": sum(greedy) / n, "extraction_strength": 1 - k / n}


def facts_stated(generated: str, facts: Sequence[str]) -> float:
    """The share of facts the generation states, each as a whole word or phrase, ignoring case ("5" is not in
    "1956"). Unlike ROUGE, an answer in the trained wording with every fact wrong scores 0."""
    if not facts:
        raise EvalError("an example has no facts to check")
    found = [re.search(rf"(?<!\w){re.escape(fact)}(?!\w)", generated, re.IGNORECASE) for fact in facts]
    return sum(match is not None for match in found) / len(facts)


def repetitive(generated: str, n: int = 3, times: int = 3) -> bool:
    """Whether some run of n words occurs `times` times in the answer: a loop ("accred accred accred ..."), which
    fluent answers of TOFU's length do not make (bench/results/README.md)."""
    words = generated.split()
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= times


# ---- loading and checking logs ----------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalError(f"{path}: no such file or directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror})") from None


def load_eval_logs(path: str | Path) -> EvalLogs:
    """TOFU eval logs from an aggregated JSON file (keyed by split file name) or a directory of per-split files.

    Checked on load, so a bad log fails with one line naming the file and the problem, not a KeyError mid-aggregation.
    """
    path = Path(path)
    if path.is_dir() and (path / FORGET_LOG).is_file() and not (path / RETAIN_LOG).exists():
        # A `--splits forget` run: enough for Forget Quality and the forget columns, not for Model Utility.
        logs = {FORGET_LOG: _read_json(path / FORGET_LOG)}
        _check_split(logs[FORGET_LOG], FORGET_LOG, str(path))
        return logs
    logs = {name: _read_json(path / name) for name in EVAL_LOGS} if path.is_dir() else _read_json(path)
    _check_logs(logs, str(path))
    return logs


def _values(split_log: dict[str, dict[Any, Any]], key: str) -> np.ndarray:
    """One metric of one split as an array, in the log's example order (TOFU: `np.array(list(d.values()))`)."""
    return np.array(list(split_log[key].values()), dtype=np.float64)


def _check_split(split_log: Any, split: str, source: str) -> None:
    if not isinstance(split_log, dict):
        raise EvalError(f"{source}: split {split} is not a JSON object of metrics")
    for key in AGGREGATED_KEYS:
        if not isinstance(split_log.get(key), dict):
            raise EvalError(f"{source}: split {split} lacks metric {key!r}")
    examples = split_log["avg_gt_loss"].keys()
    if not examples:
        raise EvalError(f"{source}: split {split} has no examples")
    for key in AGGREGATED_KEYS:
        if split_log[key].keys() != examples:
            raise EvalError(f"{source}: split {split}: {key!r} and 'avg_gt_loss' cover different examples")
        try:
            values = _values(split_log, key)
        except (TypeError, ValueError):
            values = None
        per_answer = key == "average_perturb_loss"  # one list per example, one entry per perturbed answer
        if values is None or values.ndim != (2 if per_answer else 1) or values.size == 0:
            kind = "a non-empty list of numbers, the same length for every example" if per_answer else "a number"
            raise EvalError(f"{source}: split {split}: {key!r} must map each example to {kind}")


def _check_logs(logs: Any, source: str) -> None:
    """Raise EvalError unless `logs` holds every split with every metric the aggregation reads, one per example."""
    if not isinstance(logs, dict):
        raise EvalError(f"{source}: expected a JSON object keyed by split file name ({', '.join(EVAL_LOGS)})")
    for split in EVAL_LOGS:
        if split not in logs:
            raise EvalError(f"{source}: missing split {split} (found: {', '.join(map(str, logs)) or 'none'})")
        _check_split(logs[split], split, source)


def _check_same_forget_set(logs: EvalLogs, retain_logs: EvalLogs) -> None:
    """Forget Quality compares two models on the same forget questions; a retain log for another forget set is wrong."""
    ids = {str(i) for i in logs[FORGET_LOG]["avg_gt_loss"]}
    retain_ids = {str(i) for i in retain_logs[FORGET_LOG]["avg_gt_loss"]}
    if len(ids) != len(retain_ids):
        raise EvalError(
            f"retain logs: forget split has {len(retain_ids)} examples, the unlearned model's has {len(ids)} "
            "(a retain model evaluated on a different forget set?)"
        )
    if ids != retain_ids:
        raise EvalError(
            f"retain logs: forget split has different example ids than the unlearned model's, e.g. "
            f"{sorted(retain_ids - ids)[0]!r} (a retain model evaluated on a different forget set?)"
        )


# ---- aggregation (TOFU's aggregate_eval_stat.py) ----------------------------------------------------------------


def _truth_ratio(split_log: dict[str, dict[Any, Any]]) -> np.ndarray:
    """Per example tr = exp(mean perturbed loss - paraphrased loss): > 1 when the model prefers the true answer."""
    paraphrased = _values(split_log, "avg_paraphrased_loss")
    perturbed = _values(split_log, "average_perturb_loss").mean(axis=-1)
    return np.exp(perturbed - paraphrased)


def _prob(split_log: dict[str, dict[Any, Any]], split: str) -> float:
    """Mean probability of the true answer; on the real-author/world splits normalized over the answer options."""
    true_prob = np.exp(-1 * _values(split_log, "avg_gt_loss"))
    if split in _PLAIN_PROB_SPLITS:
        return float(np.mean(true_prob))
    false_prob = np.exp(-1 * _values(split_log, "average_perturb_loss"))
    all_prob = np.concatenate([np.expand_dims(true_prob, axis=-1), false_prob], axis=1).sum(-1)
    return float(np.mean(true_prob / all_prob))


def _truth_ratio_score(split_log: dict[str, dict[Any, Any]], split: str) -> float:
    """TOFU's reported "Truth Ratio": mean(min(tr, 1/tr)) on the forget split, mean(max(0, 1 - 1/tr)) elsewhere."""
    tr = _truth_ratio(split_log)
    if split == FORGET_LOG:
        return float(np.mean(np.minimum(tr, 1 / tr)))
    return float(np.mean(np.maximum(0, 1 - 1 / tr)))


def forget_split_summary(logs: EvalLogs) -> dict[str, float]:
    """TOFU's forget-split columns of one model (ROUGE, Prob., Truth Ratio) from its forget log alone."""
    split_log = logs[FORGET_LOG]
    _check_split(split_log, FORGET_LOG, "logs")
    return {
        "ROUGE Forget": float(np.mean(_values(split_log, "rougeL_recall"))),
        "Prob. Forget": _prob(split_log, FORGET_LOG),
        "Truth Ratio Forget": _truth_ratio_score(split_log, FORGET_LOG),
    }


def _model_utility(logs: EvalLogs) -> dict[str, float]:
    """TOFU's `get_model_utility`: ROUGE, Prob. and Truth Ratio per split, and their harmonic mean off the forget split."""
    result: dict[str, float] = {}
    for split, name in SPLIT_NAMES.items():
        result[f"ROUGE {name}"] = float(_values(logs[split], "rougeL_recall").mean())
        result[f"Prob. {name}"] = _prob(logs[split], split)
        result[f"Truth Ratio {name}"] = _truth_ratio_score(logs[split], split)
    utility_inputs = [v for k, v in result.items() if not k.endswith(SPLIT_NAMES[FORGET_LOG])]
    result["Model Utility"] = float(hmean(utility_inputs))  # 0 if any input is 0
    return result


def forget_quality(logs: EvalLogs, retain_logs: EvalLogs) -> dict[str, float]:
    """TOFU's `get_forget_quality`: KS test between the two models' forget-split tr; its p-value is Forget Quality.
    Only the forget split's logs are read (a run of `--splits forget` suffices)."""
    for source, split_logs in (("logs", logs), ("retain logs", retain_logs)):
        if not isinstance(split_logs, dict) or FORGET_LOG not in split_logs:
            raise EvalError(f"{source}: missing split {FORGET_LOG}")
        _check_split(split_logs[FORGET_LOG], FORGET_LOG, source)
    _check_same_forget_set(logs, retain_logs)
    test = ks_2samp(_truth_ratio(logs[FORGET_LOG]), _truth_ratio(retain_logs[FORGET_LOG]))
    pvalue = float(test.pvalue)
    return {"Forget Quality": pvalue, "KS Test PVal Forget": pvalue, "KS Test Forget": float(test.statistic)}


def gibberish_rate(logs: EvalLogs, retain_logs: EvalLogs) -> dict[str, float]:
    """Per split both logs judged (FLUENCY_KEY), "Gibberish {split}": the share of answers whose judge NLL exceeds
    the GIBBERISH_QUANTILE of the retain model's own answers' NLL on the same split; ROUGE and the truth ratio count
    noise as forgetting, this does not. Empty answers count as neither (aggregate's "Empty Forget" is their share)."""
    result = {}
    for split, name in SPLIT_NAMES.items():
        ours, theirs = (
            [v for v in log.get(split, {}).get(FLUENCY_KEY, {}).values() if v is not None]
            for log in (logs, retain_logs)
        )
        if ours and theirs:
            result[f"Gibberish {name}"] = float(np.mean(np.asarray(ours) > gibberish_threshold(theirs)))
    return result


def gibberish_threshold(retain_values: Sequence[float]) -> float:
    """The judge NLL above which an answer counts as gibberish: GIBBERISH_QUANTILE of the retain model's answers'."""
    return float(np.quantile(retain_values, GIBBERISH_QUANTILE))


def aggregate(logs: EvalLogs, retain_logs: EvalLogs | None) -> dict[str, float]:
    """TOFU's summary of one model's eval logs, as a flat dict of Python floats.

    Keys are TOFU's ("ROUGE Retain", "Prob. Real Authors", "Truth Ratio Forget", ..., "Model Utility", and, given the
    retain model's logs, "Forget Quality", "KS Test PVal Forget", "KS Test Forget" and, for judged logs, "Gibberish
    {split}"; for logs that have them, "Exact Memorization Forget", "Extraction Strength Forget" and "Facts Stated
    Forget"), then snake_case conveniences: model_utility, rouge_retain, rouge_forget, the FORGET_MEANS keys (when
    logged) and, with retain logs, forget_quality. Without retain logs there is no
    Forget Quality, and its keys are absent.
    """
    _check_logs(logs, "logs")
    result = _model_utility(logs)
    if retain_logs is not None:
        _check_logs(retain_logs, "retain logs")
        result.update(forget_quality(logs, retain_logs))
        result.update(gibberish_rate(logs, retain_logs))
    for key, name in FORGET_MEANS.items():
        if key in logs[FORGET_LOG]:
            result[f"{name} Forget"] = result[key] = float(np.mean(_values(logs[FORGET_LOG], key)))
    if generated := logs[FORGET_LOG].get("generated_text"):  # answers nobody can judge: the gibberish rate skips them
        empty = [not str(entry[1]).strip() for entry in generated.values()]
        result["Empty Forget"] = result["empty_forget"] = float(np.mean(empty))
    result["model_utility"] = result["Model Utility"]
    result["rouge_retain"] = result["ROUGE Retain"]
    result["rouge_forget"] = result["ROUGE Forget"]
    if retain_logs is not None:
        result["forget_quality"] = result["Forget Quality"]
    return result
