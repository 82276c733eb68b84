"""How much identical engines differ on this machine: the floor under every ratio bench/throughput.py reports.

    .venv/bin/python bench/spread.py                              # torch's tensors on huge pages (as throughput.py)
    THP_MEM_ALLOC_ENABLE=0 .venv/bin/python bench/spread.py       # without them

Two engines of each system (the same bundle, the same settings) in one process, measured exactly as throughput.py
measures (its engines, decode requests and interleaving: the systems taking turns, the order rotating each round).
Their ratio would be 1 on a quiet machine; what it is here is how far apart two rounds of identical work land, and so
how small a difference a ratio in throughput.py can resolve. Run with and without huge pages, it also says whether
they narrow that spread (on the AMD EPYC with AVX2 they did not). Each ratio comes three ways: best round, median
round, and model time rebuilt from each engine step's best round (bench/steps.py, as throughput.py's step-by-step
tables): on that machine the last kept identical engines within 4%, where whole rounds had spread up to 10%.
Writes bench/results/spread[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from statistics import median

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Importing bench/throughput.py's parts sets the process's environment, huge pages included, before torch loads.
from bench.steps import best_steps, clock_steps, steps_speedup, take_steps  # noqa: E402
from bench.throughput_parts.engine import start_engine  # noqa: E402
from bench.throughput_parts.models import engine_spec  # noqa: E402
from bench.throughput_parts.settings import RESULTS, SYSTEMS  # noqa: E402
from bench.throughput_parts.workers import rotated  # noqa: E402
from bench.throughput_parts.workloads import spec_requests  # noqa: E402


def measure(systems: list[str], spec: dict, sizes: list[int], rounds: int) -> dict:
    """Per system and batch size: seconds of every round for copy A and copy B."""
    from vllm import SamplingParams

    from uld_vllm.engine import shutdown_llm

    copies = [(system, copy) for system in systems for copy in "AB"]
    engines = {key: start_engine(key[0], spec) for key in copies}
    for llm in engines.values():
        llm.apply_model(clock_steps)
    requests = spec_requests(spec)
    seconds: dict = {system: {} for system in systems}
    try:
        for size in sizes:
            inputs = [{"prompt_token_ids": p} for p, _ in requests[:size]]
            params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for _, m in requests[:size]]
            for llm in engines.values():  # warm-up: this size's shapes
                llm.generate(inputs, params, use_tqdm=False)
            times: dict = {key: [] for key in copies}
            steps: dict = {key: [] for key in copies}
            for round in tqdm(range(rounds), desc=f"batch {size}", unit="round"):
                for key in rotated(copies, round):
                    engines[key].apply_model(take_steps)
                    begin = time.perf_counter()
                    engines[key].generate(inputs, params, use_tqdm=False)
                    times[key].append(time.perf_counter() - begin)
                    steps[key].append(engines[key].apply_model(take_steps)[0])
            for system in systems:
                seconds[system][str(size)] = {"tokens": sum(m for _, m in requests[:size])} | {
                    copy: times[(system, copy)] for copy in "AB"
                }
                seconds[system][str(size)]["steps"] = {copy: best_steps(steps[(system, copy)]) for copy in "AB"}
    finally:
        for llm in engines.values():
            shutdown_llm(llm)
    return seconds


def write_report(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    lines = [
        "# Identical engines side by side: how far apart two copies of the same system land",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; dtype {m['dtype']}; huge pages: "
        f"{m['huge_pages']}. Decode (throughput.py's requests: prompts 16-256 tokens, 16-128 new tokens), "
        f"{report['rounds']} rounds, every copy in one process, the order rotating each round.",
        "",
        "| system | batch | copy A tok/s, best / median | copy B tok/s, best / median | B / A, best of rounds | B / A, "
        "medians | B / A, model time step by step |",
        "|---|---|---|---|---|---|---|",
    ]
    for system, by_size in report["seconds"].items():
        for size, run in by_size.items():
            a, b = run["A"], run["B"]
            lines.append(
                f"| {system} | {size} | {run['tokens'] / min(a):.1f} / {run['tokens'] / median(a):.1f} | "
                f"{run['tokens'] / min(b):.1f} / {run['tokens'] / median(b):.1f} | {min(a) / min(b):.3f} | "
                f"{median(a) / median(b):.3f} | {copies_step_ratio(run.get('steps'))} |"
            )
    lines += [
        "",
        "Model time step by step: each copy's rounds rebuilt from every engine step's fastest round (its forward and "
        "compute_logits, bench/steps.py), the sum over the round's steps compared.",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def copies_step_ratio(steps: dict | None) -> str:
    """B / A speed from each copy's `best_steps` ("-" for runs from before step clocks, or differing schedules)."""
    speedup = steps_speedup(steps["B"], steps["A"]) if steps else None
    return "-" if speedup is None else f"{speedup:.3f}"


def main(argv: list[str] | None = None) -> int:
    from uld_vllm.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", default="plain,uld-f0.01-dense", help="of bench/throughput.py's vLLM systems")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--rounds", type=int, default=8, help="throughput.py's rounds at these sizes: 4 x --repeats")
    parser.add_argument("--work", default="out/bench-models")
    parser.add_argument("--tag", help="results as spread-TAG.*")
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    unknown = [s for s in systems if s not in SYSTEMS or s == "hf-reference"]
    if unknown:
        parser.error(f"not a vLLM system of bench/throughput.py: {', '.join(unknown)}")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    work, spec = engine_spec(Path(args.work), "bench", None, sizes)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(work / "vllm-cache" / "engines"))  # throughput.py's compiled graphs
    report = {
        "command": " ".join(
            [f"THP_MEM_ALLOC_ENABLE={os.environ['THP_MEM_ALLOC_ENABLE']}", "python"]
            + [shlex.quote(a) for a in ["bench/spread.py", *(argv if argv is not None else sys.argv[1:])]]
        ),
        "machine": machine_info(spec["dtype"]),
        "rounds": args.rounds,
        "seconds": measure(systems, spec, sizes, args.rounds),
    }
    write_report(report, "spread" + (f"-{args.tag}" if args.tag else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
