"""TOFU's own question-answer files, shipped with the package and read by TOFU's names.

uld-train and uld-eval run on the real benchmark without a download or a hand-made split, and every run sees exactly
TOFU's rows. Only `full` and the `_perturbed` evaluation files are shipped (uld_vllm/tofu-data/, MIT, see its
LICENSE): forgetNN is the last NN% of `full` and retainNN the rest, as TOFU builds them, so those are derived here.
Wherever a QA file path is accepted, `tofu:NAME` names one of these (uld_vllm.qa.read_rows resolves it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from uld_vllm.rows import DataError, read_file

DATA_DIR = Path(__file__).parent / "tofu-data"
SPEC_PREFIX = "tofu:"
QA_PER_AUTHOR = 20  # full holds 200 fictitious authors x 20 consecutive QA: author i is rows 20i .. 20i + 19
FORGET_SPLITS = ("forget01", "forget05", "forget10")
SHIPPED = (
    "full",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
)
DERIVED = (*FORGET_SPLITS, "retain99", "retain95", "retain90")  # slices of full, as TOFU cuts them
NAMES = SHIPPED + DERIVED
# uld-eval's four splits (the keys of uld_vllm.eval.data.SPLIT_FILES, in its order) -> TOFU's file; the forget
# split's file depends on the forget set, the others are the same for every forget set (as in TOFU's eval config).
EVAL_FILES = {
    "forget": "{forget_split}_perturbed",
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
}


def is_tofu_spec(value: str | Path | None) -> bool:
    """Whether a data argument is `tofu:NAME` rather than a file: the one test every path check must make first,
    since such a spec is not a file (is_file() is False, resolve() would glue the working directory onto it)."""
    return value is not None and str(value).startswith(SPEC_PREFIX)


def spec_name(spec: str | Path) -> str:
    """NAME of a `tofu:NAME` spec."""
    return str(spec)[len(SPEC_PREFIX) :]


def rows(name: str) -> list[dict]:
    """TOFU's file `name` as dicts with TOFU's fields: a shipped file's stem, forget01/05/10 (the last 1/5/10% of
    full) or retain99/95/90 (the rest of full). Fresh dicts on every call, so callers may edit them."""
    if name in SHIPPED:
        return read_file(DATA_DIR / f"{name}.jsonl", f"TOFU file {name}")
    if name not in DERIVED:
        raise DataError(f"unknown TOFU file {name!r} (valid: {', '.join(NAMES)})")
    full = rows("full")
    percent = int(name[-2:])
    if name.startswith("forget"):
        return full[len(full) - len(full) * percent // 100 :]
    return full[: len(full) * percent // 100]


def authors(qa_rows: Iterable[dict]) -> list[int]:
    """Indices of the `full` authors these rows' QA belong to, sorted: which authors a split covers, so subsets can be
    built from TOFU's own splits. Matched on question and answer, because full asks one question of two authors."""
    index = {(row["question"], row["answer"]): number for number, row in enumerate(rows("full"))}
    found = set()
    for number, row in enumerate(qa_rows):
        where = index.get((row.get("question"), row.get("answer")))
        if where is None:
            raise DataError(f"row {number} ({row.get('question')!r}) is not a question-answer pair of TOFU's full")
        found.add(where // QA_PER_AUTHOR)
    return sorted(found)


def subset(authors: Iterable[int], name: str = "full") -> list[dict]:
    """Every row of the given authors in TOFU's file `name` (full, or retain_perturbed: full's authors 0-19 with
    their paraphrased and perturbed answers), in the file's order, each author once: a smaller TOFU with whole
    authors, e.g. authors 0..19 (retain_perturbed's) plus 190..199 (forget05's) for a CPU-sized run."""
    if name not in ("full", "retain_perturbed"):
        raise DataError(f"subset takes authors of full or retain_perturbed, not {name!r}")
    source = rows(name)
    count = len(source) // QA_PER_AUTHOR
    chosen = sorted(set(authors))
    outside = [a for a in chosen if not 0 <= a < count]
    if outside:
        raise DataError(f"TOFU author indices {outside} out of range ({name} has authors 0..{count - 1})")
    return [row for a in chosen for row in source[a * QA_PER_AUTHOR : (a + 1) * QA_PER_AUTHOR]]


def eval_rows(forget_split: str) -> dict[str, list[dict]]:
    """uld-eval's four splits for one forget set, from TOFU's own evaluation files (keys as eval.data.SPLIT_FILES)."""
    if forget_split not in FORGET_SPLITS:
        raise DataError(f"unknown TOFU forget split {forget_split!r} (valid: {', '.join(FORGET_SPLITS)})")
    return {split: rows(name.format(forget_split=forget_split)) for split, name in EVAL_FILES.items()}
