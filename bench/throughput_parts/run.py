"""One whole run: its spec from the flags, every phase in turn, and the report assembled and written."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from bench.throughput_parts.goals import goals
from bench.throughput_parts.limits import decode_limits, model_costs
from bench.throughput_parts.models import engine_spec
from bench.throughput_parts.phases import Phases, measure, measure_start, measure_start_rounds, start_key
from bench.throughput_parts.report import write_report
from bench.throughput_parts.settings import HEAD_OFF_ON, LORA_RANK, SHAPES
from bench.throughput_parts.workloads import spec_requests


def run(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Measure every system the flags name and write bench/results/throughput[-shape][-TAG].{json,md,png}."""
    shape_name = "quick" if args.quick else args.shape
    systems = args.systems.split(",")
    work, spec = run_spec(args, shape_name, systems)
    results, start_rounds = measure_systems(args, work, spec, systems)
    report = build_report(work, spec, SHAPES[shape_name], results, start_rounds, argv)
    name = "throughput-quick" if args.quick else ("throughput" if shape_name == "bench" else f"throughput-{shape_name}")
    name += f"-{args.tag}" if args.tag else ""
    write_report(report, name)


def run_spec(args: argparse.Namespace, shape_name: str, systems: list[str]) -> tuple[Path, dict]:
    """(work folder, spec): the bench model built, and what the flags ask of every phase."""
    work, spec = engine_spec(
        Path(args.work), shape_name, args.dtype, [1, 4] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    )
    spec |= {
        "reference_batch_sizes": [1] if args.quick else [int(b) for b in args.reference_batch_sizes.split(",")],
        "scoring_texts": 8 if args.quick else args.scoring_texts,
        "repeats": 1 if args.quick else args.repeats,
    }
    engine_systems = [s for s in systems if s != "hf-reference"]
    spec["head_off_on"] = {s: host for s, host in HEAD_OFF_ON.items() if {s, host} <= set(engine_systems)}
    return work, spec


def measure_systems(
    args: argparse.Namespace, work: Path, spec: dict, systems: list[str]
) -> tuple[dict, dict[str, int]]:
    """(results per system, start rounds per kind): engine starts, then throughput, each phase saved as it ends."""
    engine_systems = [s for s in systems if s != "hf-reference"]
    # "clocks": what the engines worker records beside each round (a new digest: runs from before keep their phases).
    engines_spec = spec | {"engine_systems": engine_systems, "clocks": "steps"}
    phases = Phases(work, engines_spec, args.resume)
    starts = Phases(work, start_key(spec), args.resume)  # a start does not depend on the systems measured beside it
    results = {}
    for system in tqdm(engine_systems, desc="engine starts", unit="system"):
        results[system] = starts.run(f"start-{system}", measure_start, system, spec, work)
    start_rounds = {}
    for kind, key in (("warm", "start_seconds"), ("cold", "start_cold_seconds")):
        count = getattr(args, f"{kind}_start_rounds")
        start_rounds[kind] = count = spec["repeats"] if count is None else count
        phase = f"{kind}-starts-{'+'.join(engine_systems)}-x{count}"
        rounds = starts.run(phase, measure_start_rounds, engine_systems, spec, work, kind == "cold", count)
        for system in engine_systems:  # best of measure_start's and the interleaved rounds'
            results[system][f"{kind}_start_samples"] = [results[system][key], *rounds[system]]
            results[system][key] = min(results[system][f"{kind}_start_samples"])
    print("throughput: every vLLM system in one process, interleaved ...", flush=True)
    throughput = phases.run("engines", measure, "engines", engines_spec, work / "vllm-cache" / "engines")
    for system in engine_systems:
        results[system] |= throughput[system]
    if "hf-reference" in systems:
        print("throughput: the HF reference ...", flush=True)
        results["hf-reference"] = phases.run("hf-reference", measure, "hf-reference", spec)
    return results, start_rounds


def build_report(
    work: Path, spec: dict, shape: dict, results: dict, start_rounds: dict[str, int], argv: list[str] | None
) -> dict:
    """The report: the command, the machine, the model, its limits, every result and the goals."""
    from transformers import AutoConfig

    from uld_vllm.machine import machine_info

    config = AutoConfig.from_pretrained(spec["bundle"])
    head = json.loads((work / "head.json").read_text())
    costs = model_costs(config, LORA_RANK, results.get("uld-f0.01", {}).get("head"))
    requests = spec_requests(spec)
    report = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in ["bench/throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(spec["dtype"]),
        "shape": shape | {"assistant_layers": config.uld["assistant_layers"], "lora_rank": LORA_RANK},
        "head_realism": head,
        "costs": costs,
        "start_rounds": start_rounds,
        "decode_limits": {str(b): decode_limits(costs, requests[:b]) for b in spec["batch_sizes"]},
        "spec": spec,
        "results": results,
    }
    report["goals"] = goals(report)
    return report
