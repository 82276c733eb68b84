"""TOFU-style evaluation data: one directory per forget split, four JSON-lines files, checked before any engine starts.

DIR/forget.jsonl, retain.jsonl, real_authors.jsonl, world_facts.jsonl hold one object a line with TOFU's fields:
question, answer, paraphrased_answer (forget and retain; the utility sets score the answer itself, as TOFU's logs
do), perturbed_answer (a list of wrong answers, the same count on every row of a file), and optionally facts (the
strings a correct answer states, for the facts-stated check; mini-TOFU writes them, TOFU has none). The same files feed
uld-train. Instead of a directory, `tofu:forget01|forget05|forget10` takes the four splits from TOFU's own files
(uld_vllm.tofu.eval_rows); both go through the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from uld_vllm import tofu
from uld_vllm.eval.metrics import EvalError
from uld_vllm.qa import read_rows

# Split name -> data file. The order is the order uld-eval runs and reports them.
SPLIT_FILES = {
    "forget": "forget.jsonl",
    "retain": "retain.jsonl",
    "real_authors": "real_authors.jsonl",
    "world_facts": "world_facts.jsonl",
}
NEEDS_PARAPHRASE = ("forget", "retain")  # the truth ratio's denominator on these is the paraphrased answer


@dataclass(frozen=True)
class EvalExample:
    question: str
    answer: str
    paraphrased_answer: str  # the answer itself on the utility sets
    perturbed_answers: tuple[str, ...]
    facts: tuple[str, ...] = ()  # the values a correct answer states; none: no facts-stated check

    def answers(self) -> list[str]:
        """Every answer scored for this example: true, paraphrased, then each perturbed one."""
        return [self.answer, self.paraphrased_answer, *self.perturbed_answers]


def _text(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise EvalError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")
    return value


def _texts(row: dict, field: str, where: str, optional: bool = False) -> tuple[str, ...]:
    """A list-of-strings field: required and non-empty, or (optional) absent or any length."""
    values = row.get(field, [] if optional else None)
    if not isinstance(values, list) or not (values or optional):
        kind = "list" if optional else "non-empty list"
        raise EvalError(f"{where}: field {field!r} must be a {kind} of strings, got {values!r}")
    return tuple(_text({field: value}, field, where) for value in values)


def read_split(rows: list[dict], split: str, source: str) -> list[EvalExample]:
    """One split's rows as examples; source names the rows in messages (a file path, or a tofu: spec and split)."""
    if not rows:
        raise EvalError(f"{split} split {source} has no rows")
    examples = []
    for number, row in enumerate(rows):
        where = f"{source} row {number}"
        question, answer = _text(row, "question", where), _text(row, "answer", where)
        paraphrased = _text(row, "paraphrased_answer", where) if split in NEEDS_PARAPHRASE else answer
        perturbed = _texts(row, "perturbed_answer", where)
        facts = _texts(row, "facts", where, optional=True)
        examples.append(EvalExample(question, answer, paraphrased, perturbed, facts))
    counts = {len(e.perturbed_answers) for e in examples}
    if len(counts) > 1:
        raise EvalError(f"{source}: rows have different numbers of perturbed answers {sorted(counts)}; TOFU needs one")
    return examples


def read_eval_data(data: str | Path, splits: tuple[str, ...] = tuple(SPLIT_FILES)) -> dict[str, list[EvalExample]]:
    """The splits asked for (all four by default), in SPLIT_FILES order, of an evaluation directory or of a
    `tofu:forgetNN` spec."""
    unknown = sorted(set(splits) - SPLIT_FILES.keys())
    if unknown or not splits:
        raise EvalError(
            f"unknown split(s) {', '.join(unknown) or '(none given)'} (choose from {', '.join(SPLIT_FILES)})"
        )
    splits = tuple(split for split in SPLIT_FILES if split in splits)
    if tofu.is_tofu_spec(data):
        split_rows = tofu.eval_rows(tofu.spec_name(data))
        sources = {split: f"{data} {split}" for split in SPLIT_FILES}
    else:
        directory = Path(data)
        if not directory.is_dir():
            specs = ", ".join(tofu.SPEC_PREFIX + name for name in tofu.FORGET_SPLITS)
            raise EvalError(f"data directory not found: {directory} (or use one of TOFU's own: {specs})")
        paths = {split: directory / SPLIT_FILES[split] for split in splits}
        split_rows = {split: read_rows(path, f"{split} split") for split, path in paths.items()}
        sources = {split: str(path) for split, path in paths.items()}
    return {split: read_split(split_rows[split], split, sources[split]) for split in splits}
