"""`uld-demo`: what ULD forgets and what it keeps, on a real LLM and TOFU's own questions.

The default model is the SmolLM2 TOFU study (uld_vllm.smollm2_tofu): SmolLM2-135M-Instruct fine-tuned on 30 TOFU
authors, the retain model that never saw forget05's 10 authors, and a ULD bundle whose assistant forgets them.
Questions are drawn by a seeded rule from forget05's authors, the retain authors and real-world facts; for each the
demo prints the true answer, the target's, the retain model's and ULD's. Each model answers through uld-batch (the
target is the bundle at weight 0: exactly the target, tested token for token against plain vLLM).
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from uld_vllm import tofu
from uld_vllm.batch import BatchConfig, run
from uld_vllm.engine import DTYPE_ENV, DTYPES, in_process_engine_core, quiet_vllm
from uld_vllm.errors import UldError, command

# group -> (TOFU files it draws from, label). The forget group is the bundle's forget set (forget05).
GROUPS = {
    "forget": (("forget05_perturbed",), "forget05 author: ULD should forget"),
    "retain": (("retain_perturbed",), "retain author: ULD should keep"),
    "world": (("real_authors_perturbed", "world_facts_perturbed"), "real world: ULD should keep"),
}
# An answer "states the true answer" when its ROUGE-L recall against it reaches this (TOFU's metric, per answer).
STATES_TRUE = 0.7
ANSWERS = ("target", "retain", "uld")


def draw_questions(per_group: int, seed: int) -> list[dict]:
    """per_group questions of each group, drawn with random.Random(seed) (spread evenly over a group's files)."""
    rng = random.Random(seed)
    rows = []
    for group, (names, _) in GROUPS.items():
        for i, name in enumerate(names):
            count = per_group // len(names) + (i < per_group % len(names))
            for row in rng.sample(tofu.rows(name), count):
                rows.append({"set": group, "question": row["question"], "answer": row["answer"]})
    return rows


def write_prompts(rows: list[dict], path: Path) -> Path:
    messages = [[{"role": "user", "content": row["question"]}] for row in rows]
    table = pa.table({"id": [f"{r['set']}-{i}" for i, r in enumerate(rows)], "messages": messages})
    pq.write_table(table, path)
    return path


def answers(model: Path, prompts: Path, output: Path, weight: float | None, options: dict) -> list[str]:
    """uld-batch over the prompts: the generated texts in input order."""
    run(BatchConfig(input=str(prompts), output=str(output), model=str(model), weight=weight, **options))
    return [text.strip() for text in pq.read_table(output).column("generated_text").to_pylist()]


def judge(rows: list[dict], dtype: str | None) -> float:
    """Each answer's fluency (`{model}_nll`: the pretrained SmolLM2's mean NLL per token of it after its question, as
    uld-eval --judge scores it), in one pass of the judge; returns the gibberish threshold: the 95th percentile of the
    retain model's answers' NLL on these questions."""
    from uld_vllm.engine import check_model, resolve_dtype
    from uld_vllm.eval.metrics import gibberish_threshold
    from uld_vllm.eval.run import EvalSettings, judge_nll
    from uld_vllm.smollm2_tofu import base_dir

    settings = EvalSettings("", "", dtype=resolve_dtype(dtype), engine_args={"enforce_eager": True}, progress=False)
    questions = [row["question"] for row in rows] * len(ANSWERS)
    values = judge_nll(settings, check_model(base_dir()), questions, [row[k] for k in ANSWERS for row in rows])
    for i, value in enumerate(values):
        rows[i % len(rows)][f"{ANSWERS[i // len(rows)]}_nll"] = value
    return gibberish_threshold([row["retain_nll"] for row in rows if row["retain_nll"] is not None])


def degenerate(row: dict, model: str, threshold: float) -> bool:
    return row[f"{model}_nll"] is not None and row[f"{model}_nll"] > threshold


def summary_line(group: str, rows: list[dict], threshold: float) -> str:
    """Per model, how many answers still state the true answer and how many are degenerate; how many ULD answers
    equal the target's."""
    from uld_vllm.eval.metrics import rouge_l_recall

    n = len(rows)
    states = {k: sum(rouge_l_recall(r[k], r["answer"]) >= STATES_TRUE for r in rows) for k in ANSWERS}
    bad = {k: sum(degenerate(r, k, threshold) for r in rows) for k in ANSWERS}
    unchanged = sum(r["uld"] == r["target"] for r in rows)
    return (
        f"[{group}] states the true answer (ROUGE-L recall >= {STATES_TRUE}): target {states['target']}/{n}, "
        f"retain {states['retain']}/{n}, ULD {states['uld']}/{n}; degenerate: target {bad['target']}/{n}, "
        f"retain {bad['retain']}/{n}, ULD {bad['uld']}/{n}; ULD unchanged from the target: {unchanged}/{n}"
    )


def show(rows: list[dict], threshold: float, width: int = 110) -> None:
    def wrap(label: str, row: dict, model: str | None = None) -> str:
        text = (row[model] if model else row["answer"]) or "(empty)"
        if model and degenerate(row, model, threshold):
            text += f" [degenerate: judge NLL {row[f'{model}_nll']:.2f} > {threshold:.2f}]"
        return textwrap.fill(text, width, initial_indent=label, subsequent_indent=" " * len(label))

    for row in rows:
        print(f"[{GROUPS[row['set']][1]}] {row['question']}")
        print(wrap("    true:   ", row))
        print(wrap("    target: ", row, "target"))
        print(wrap("    retain: ", row, "retain"))
        print(wrap("    ULD:    ", row, "uld"))
        print()
    for group in GROUPS:
        print(summary_line(group, [r for r in rows if r["set"] == group], threshold))


@command("uld-demo")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uld-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--per-group", type=int, default=4, help="questions per group (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question draw (default 0)")
    parser.add_argument("--output-dir", default="out/demo", help="where the prompts and each model's answers go")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtype", choices=DTYPES, default=None, help=f"default: ${DTYPE_ENV}, else by CPU flags")
    parser.add_argument("--verbose", action="store_true", help="show vLLM's own logs")
    args = parser.parse_args(argv)
    quiet_vllm(args.verbose)
    in_process_engine_core()  # three engine starts in seconds each instead of a subprocess per engine
    if args.per_group < 1:
        raise UldError(f"--per-group must be >= 1, got {args.per_group}")
    from uld_vllm.smollm2_tofu import assemble

    models = assemble(("retain_forget05", "uld"))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = draw_questions(args.per_group, args.seed)
    prompts = write_prompts(rows, out / "prompts.parquet")
    options = {"max_tokens": args.max_tokens, "dtype": args.dtype, "engine_args": {"enforce_eager": True}}
    runs = {
        "target": (models["uld"], 0.0),
        "retain": (models["retain_forget05"], None),
        "uld": (models["uld"], None),
    }
    for name, (model, weight) in runs.items():
        for row, text in zip(rows, answers(model, prompts, out / f"{name}.parquet", weight, options), strict=True):
            row[name] = text
    show(rows, judge(rows, args.dtype))
    print(f"uld-demo: {len(rows)} questions (seed {args.seed}); answers in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
