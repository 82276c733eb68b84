"""Forget / retain data: TOFU-style question-answer files to padded token batches with question tokens unlabelled.

Files are parquet (.parquet) or JSON lines (.json / .jsonl, TOFU's format) with `question` and `answer` columns;
`tofu:NAME` reads TOFU's own file NAME, shipped with uld (uld_vllm.tofu: e.g. tofu:forget05, tofu:retain95).
Optional columns, used when `augment` is on (ULD_REFERENCE.md section 2: the reference expands each forget QA with
paraphrases and uses perturbed answers as extra retain-side text):
    paraphrased_question  -> extra pair (paraphrased question, answer)
    paraphrased_answer    -> extra pair (question, paraphrased answer)
    perturbed_answer      -> (question, wrong answer) pairs, a list or one string. The trainer adds the retain
                             file's ones to the retain side of methods whose retain term teaches ignorance (uld),
                             never to GD / KL terms (which would teach wrong answers); the forget file's ones are
                             left alone, because TOFU's truth ratio evaluates the model on exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from uld_train.config import TrainError
from uld_train.losses import IGNORE_INDEX
from uld_vllm.qa import answer_ids, prompt_ids, read_rows

REQUIRED_COLUMNS = ("question", "answer")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    source: str  # "FILE row N", for error messages


@dataclass(frozen=True)
class QASet:
    """One file's rows, split by how the trainer uses them."""

    pairs: list[QA]  # the question/answer rows as given
    paraphrased: list[QA]  # pairs built from the paraphrase columns (empty without them)
    perturbed: list[QA]  # (question, perturbed answer) pairs (empty without the column)


def _text(row: dict, column: str, source: str) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        raise TrainError(f"{source}: {column!r} must be a string, got {value!r}")
    return value


def read_qa(path: str | Path, what: str) -> QASet:
    """Read and check a QA file; augmentation pairs come from the optional columns when present."""
    path = Path(path)
    rows = read_rows(path, what)
    if not rows:
        raise TrainError(f"{what} {path} has no rows")
    columns = set().union(*(row.keys() for row in rows))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise TrainError(f"{what} {path} lacks column(s) {', '.join(missing)} (has: {', '.join(sorted(columns))})")
    pairs, paraphrased, perturbed = [], [], []
    for number, row in enumerate(rows):
        source = f"{what} {path.name} row {number}"
        question, answer = _text(row, "question", source), _text(row, "answer", source)
        pairs.append(QA(question, answer, source))
        if row.get("paraphrased_question"):
            paraphrased.append(QA(_text(row, "paraphrased_question", source), answer, source))
        if row.get("paraphrased_answer"):
            paraphrased.append(QA(question, _text(row, "paraphrased_answer", source), source))
        wrong = row.get("perturbed_answer") or []
        for text in [wrong] if isinstance(wrong, str) else wrong:
            if isinstance(text, str) and text.strip():
                perturbed.append(QA(question, text, source))
    return QASet(pairs, paraphrased, perturbed)


def unique(pairs: list[QA]) -> list[QA]:
    """Drop repeated (question, answer) pairs (a paraphrase equal to the original), keeping the first."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for qa in pairs:
        if (qa.question, qa.answer) not in seen:
            seen.add((qa.question, qa.answer))
            kept.append(qa)
    return kept


def check_unscored(forget: list[QA], retain: list[QA], evaluation: dict[str, list]) -> None:
    """Refuse a run that trains on text its evaluation scores (uld_vllm.eval.data's examples by split).

    Every answer the evaluation scores is off limits except the forget split's true answers, which are the forget set
    itself: the truth ratio's paraphrased and perturbed answers, and every answer of the utility splits, would
    otherwise inflate Forget Quality or Model Utility."""
    scored = {
        text: f"{split} example {number}"
        for split, examples in evaluation.items()
        for number, example in enumerate(examples)
        for text in example.answers()
    }
    forget_answers = {example.answer for example in evaluation.get("forget", [])}
    for qa, allowed in [(qa, forget_answers) for qa in forget] + [(qa, set()) for qa in retain]:
        if qa.answer in scored and qa.answer not in allowed:
            raise TrainError(
                f"{qa.source}: trains on {qa.answer!r}, which the evaluation scores ({scored[qa.answer]}); "
                "augment from text the evaluation does not hold"
            )


# ---------------------------------------------------------------------------------------------------- tokenising


@dataclass(frozen=True)
class Example:
    input_ids: list[int]  # prompt (chat-formatted question) + answer + EOS
    labels: list[int]  # IGNORE_INDEX on the prompt: only answer tokens carry loss


def encode(tokenizer, qa: QA, max_length: int) -> Example:
    """Prompt + answer, cut to max_length at the end; raises when no answer token would remain."""
    prompt, answer = prompt_ids(tokenizer, qa.question), answer_ids(tokenizer, qa.answer)
    if not answer:
        raise TrainError(f"{qa.source}: answer {qa.answer!r} tokenizes to no tokens")
    if len(prompt) >= max_length:
        raise TrainError(
            f"{qa.source}: the question is {len(prompt)} tokens, no room for the answer in --max-length {max_length}"
        )
    ids = (prompt + answer)[:max_length]
    return Example(ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :])


def encode_all(tokenizer, pairs: list[QA], max_length: int) -> list[Example]:
    return [encode(tokenizer, qa, max_length) for qa in pairs]


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens
    labels: torch.Tensor  # (B, T) IGNORE_INDEX on prompt and padding

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def answer_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right padding: positions stay 0..n-1 for every row, so no position_ids are needed."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
    return Batch(ids, mask, labels)


def batch_plan(
    n_forget: int, n_retain: int, batch_size: int, grad_accum: int, epochs: int, seed: int
) -> list[list[tuple[list[int], list[int]]]]:
    """Every optimizer step's micro-batches as (forget indices, retain indices), fixed by the seed up front.

    An epoch is one shuffled pass over the forget set (as TOFU and open-unlearning anchor on it); each forget
    micro-batch is paired with as many retain examples, drawn from reshuffled passes over the retain set. Computing
    the whole plan first is what makes --resume exact: step N's data does not depend on any saved iterator state.
    """
    generator = torch.Generator().manual_seed(seed)
    steps: list[list[tuple[list[int], list[int]]]] = []
    retain_queue: list[int] = []
    for _ in range(epochs):
        order = torch.randperm(n_forget, generator=generator).tolist()
        micro = []
        for start in range(0, n_forget, batch_size):
            forget = order[start : start + batch_size]
            retain = []
            while n_retain and len(retain) < len(forget):
                if not retain_queue:
                    retain_queue = torch.randperm(n_retain, generator=generator).tolist()
                retain.append(retain_queue.pop())
            micro.append((forget, retain))
        steps.extend(micro[i : i + grad_accum] for i in range(0, len(micro), grad_accum))
    return steps
