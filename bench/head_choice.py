"""The cost-based head choice against the dense head, in pairs of runs: one ULD engine (filter 0.01) on the bench
model, its assistant head switched on and off run by run over the same requests.

    .venv/bin/python bench/head_choice.py --batch-sizes 1,8,32,64,128 --pairs 4 --tag avx2

Why pairs: on these 2-core machines one run of identical code varies by about +-10%, and a best of 6 runs of the same
engine and path differed by 7% between two series (AMD EPYC, AVX2, fp32, batch 1), more than the choice moves where it
is close. Two adjacent runs share the machine's slow drift, so each pair's ratio cancels it, and the median over pairs
drops the spikes. The order alternates (on then off, off then on): neither path always runs second. A pair's ratio is
given three ways: the whole run, the model's time (forward + compute_logits, `bench/steps.py`), and compute_logits
alone (where the choice acts; the forward is the same code on both paths). Below the rule's row minimum (8) both
paths run the same code: there the ratios show what the measurement itself spreads.
Writes bench/results/head-choice[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from functools import partial
from pathlib import Path
from statistics import median

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.steps import clock_steps  # noqa: E402
from bench.throughput_parts.engine import start_engine, switch_head, timed_generate  # noqa: E402
from bench.throughput_parts.models import engine_spec  # noqa: E402
from bench.throughput_parts.settings import RESULTS  # noqa: E402
from bench.throughput_parts.workloads import spec_requests  # noqa: E402

PARTS = ("run", "model", "logits")  # whole run, forward + compute_logits, compute_logits alone


def timed_run(llm, inputs: list[dict], params: list, head_on: bool) -> dict[str, float]:
    """Seconds of one generate call with the head on or off, and of its model parts."""
    llm.apply_model(partial(switch_head, on=head_on))
    seconds, steps, _ = timed_generate(llm, inputs, params)
    return {
        "run": seconds,
        "model": sum(step[2] + step[3] for step in steps),
        "logits": sum(step[3] for step in steps),
    }


def paired_ratios(llm, requests, size: int, pairs: int) -> dict:
    """Per pair, dense seconds / chosen seconds (above 1: the choice is faster) for each part; one warm-up pair first
    (the timed rule times both paths on the first calls of each size)."""
    from vllm import SamplingParams

    inputs = [{"prompt_token_ids": p} for p, _ in requests[:size]]
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for _, m in requests[:size]]
    for head_on in (True, False):
        timed_run(llm, inputs, params, head_on)
    ratios: dict[str, list[float]] = {part: [] for part in PARTS}
    for pair in tqdm(range(pairs), desc=f"batch {size}", unit="pair", leave=False):
        order = (True, False) if pair % 2 == 0 else (False, True)
        runs = {head_on: timed_run(llm, inputs, params, head_on) for head_on in order}
        for part in PARTS:
            ratios[part].append(runs[False][part] / runs[True][part])
    return {"output_tokens": sum(m for _, m in requests[:size]), "ratios": ratios}


def write_report(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    lines = [
        "# The cost-based head choice / the dense head, in pairs of runs on one engine (filter 0.01)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or '(none of the speed flags)'}; "
        f"dtype {m['dtype']}; huge pages: {m['huge_pages']}. One ULD engine on the bench model, its assistant head "
        f"switched on (the cost-based choice) and off (the dense head) run by run, {report['pairs']} pairs per batch "
        "size in alternating order after a warm-up pair; decode workload of bench/throughput.py (prompts 16-256 tokens, "
        "16-128 new tokens each, EOS ignored, greedy). Each cell: the median of the pairs' dense / chosen time "
        "(above 1: the choice is faster), then the lowest and highest pair. Below 8 rows both paths run the same code.",
        "",
        "| batch | output tokens | whole run | model (forward + compute_logits) | compute_logits alone |",
        "|---|---|---|---|---|",
    ]
    for size, result in report["results"].items():
        cells = [f"{median(r):.3f} ({min(r):.3f}-{max(r):.3f})" for r in (result["ratios"][part] for part in PARTS)]
        lines.append(f"| {size} | {result['output_tokens']} | " + " | ".join(cells) + " |")
    worst = min(median(result["ratios"]["run"]) for result in report["results"].values())
    lines += ["", f"Worst batch size, whole runs, median pair: {worst:.3f} (goal: >= 1.00, never slower than dense)."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    from uld_vllm.engine import shutdown_llm
    from uld_vllm.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,8,32,64,128")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--work", default="out/bench-models")
    parser.add_argument("--tag", help="results as head-choice-TAG.*")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    # The requests of bench/throughput.py's decode workload (its largest batch is 128: the same first B requests).
    _, spec = engine_spec(Path(args.work), "bench", None, [*sizes, 128])
    requests = spec_requests(spec)
    llm = start_engine("uld-f0.01", spec)
    llm.apply_model(clock_steps)
    try:
        results = {str(size): paired_ratios(llm, requests, size, args.pairs) for size in tqdm(sizes, unit="size")}
    finally:
        shutdown_llm(llm)
    report = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in ["bench/head_choice.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(spec["dtype"]),
        "pairs": args.pairs,
        "results": results,
    }
    write_report(report, "head-choice" + (f"-{args.tag}" if args.tag else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
