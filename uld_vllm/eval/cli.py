"""`uld-eval`: TOFU evaluation through the engine (`run`) and TOFU's aggregation of the logs (`aggregate`).

uld-eval run --model BUNDLE_OR_HF_DIR [MORE ...] --data DIR|tofu:forgetNN --output DIR [--backend vllm|reference]
    [--ray --num-replicas N]
    Several --model checkpoints of one model (uld-train's snapshots) share one engine; each writes OUTPUT/<its name>.
uld-eval aggregate --logs PATH [--retain-logs PATH] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uld_vllm.engine import DTYPE_ENV, DTYPES, in_process_engine_core, quiet_vllm
from uld_vllm.errors import command
from uld_vllm.eval.data import SPLIT_FILES
from uld_vllm.eval.metrics import EvalError, aggregate, load_eval_logs
from uld_vllm.eval.run import EvalResult, EvalSettings, evaluate_checkpoints

SUMMARY_KEYS = (
    "model_utility",
    "forget_quality",
    "rouge_forget",
    "rouge_retain",
    "facts_stated",
    "repetitive",
    "empty_forget",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uld-eval", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="evaluate a ULD bundle or an HF checkpoint on one split's data")
    run.add_argument(
        "--model",
        required=True,
        nargs="+",
        help="ULD bundle or plain HF checkpoint directory; several: checkpoints of one model through one engine",
    )
    run.add_argument(
        "--data",
        required=True,
        help="directory with forget/retain/real_authors/world_facts.jsonl, or tofu:forget01|forget05|forget10: "
        "TOFU's own evaluation files for that forget set (shipped with uld)",
    )
    run.add_argument("--output", required=True, help="directory for the four TOFU eval logs and run.json")
    run.add_argument(
        "--splits",
        default=",".join(SPLIT_FILES),
        help=f"comma-separated subset of {','.join(SPLIT_FILES)} (default: all; Model Utility needs all four)",
    )
    run.add_argument("--backend", choices=["vllm", "reference"], default="vllm", help="reference: the HF oracle")
    run.add_argument(
        "--dtype", choices=DTYPES, default=None, help=f"default: ${DTYPE_ENV}, else by CPU flags (see README)"
    )
    run.add_argument("--weight", type=float, default=None, help="ULD weight override (bundles)")
    run.add_argument("--filter", type=float, default=None, help="relative-top filter override (bundles)")
    run.add_argument("--max-new-tokens", type=int, default=64, help="greedy tokens generated for ROUGE (default 64)")
    run.add_argument("--reference-batch-size", type=int, default=32)
    run.add_argument("--ray", action="store_true", help="shard the examples across Ray engine replicas")
    run.add_argument("--num-replicas", type=int, default=1)
    run.add_argument(
        "--judge",
        default=None,
        help="plain HF checkpoint that scores each greedy answer's fluency (fluency_nll; aggregate's Gibberish rates)",
    )
    run.add_argument("--verbose", action="store_true", help="show vLLM's own logs")

    agg = commands.add_parser("aggregate", help="Model Utility and Forget Quality from eval logs (TOFU's formulas)")
    agg.add_argument("--logs", required=True, help="aggregated eval-log JSON or directory of per-split logs")
    agg.add_argument("--retain-logs", default=None, help="the retain model's logs (for Forget Quality)")
    agg.add_argument("--output", default=None, help="write the aggregate as JSON here")
    return parser


@command("uld-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return _aggregate(args)


def _run(args: argparse.Namespace) -> int:
    quiet_vllm(args.verbose)
    in_process_engine_core()
    outputs = checkpoint_outputs(args.model, args.output)
    settings = EvalSettings(
        model=args.model[0],
        data=args.data,
        splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
        output=args.output,
        backend=args.backend,
        dtype=args.dtype,
        weight=args.weight,
        filter=args.filter,
        max_new_tokens=args.max_new_tokens,
        reference_batch_size=args.reference_batch_size,
        ray=args.ray,
        num_replicas=args.num_replicas,
        judge=args.judge,
    )
    for output, result in zip(outputs, evaluate_checkpoints(settings, args.model, outputs), strict=True):
        print(f"uld-eval: wrote {output}{summary_line(result, settings.splits)}")
    return 0


def checkpoint_outputs(models: list[str], output: str) -> list[str]:
    """One model: its logs in OUTPUT. Several: each in OUTPUT/<its directory's name>, which must differ."""
    if len(models) == 1:
        return [output]
    names = [Path(model).resolve().name for model in models]
    if len(set(names)) != len(names):
        raise EvalError(f"several --model directories share a name ({', '.join(names)}): their logs would collide")
    return [str(Path(output) / name) for name in names]


def summary_line(result: EvalResult, splits: tuple[str, ...]) -> str:
    """What an evaluation printed after its output directory: its headline numbers, then where its time went."""
    t = result.timings
    timing = (
        f"{t.scored_tokens} tokens scored in {t.score_seconds:.1f} s, {t.generated_tokens} generated in "
        f"{t.generate_seconds:.1f} s, load {t.load_seconds:.1f} s"
    )
    if t.judge_seconds:
        timing += f", judged in {t.judge_seconds:.1f} s"
    if set(splits) != set(SPLIT_FILES):
        return f" ({', '.join(splits)}) | {timing}"
    summary = aggregate(result.logs, None)
    return (
        f" | Model Utility {summary['model_utility']:.4f}, ROUGE-L forget {summary['rouge_forget']:.3f}, "
        f"retain {summary['rouge_retain']:.3f} | {timing}"
    )


def _aggregate(args: argparse.Namespace) -> int:
    logs = load_eval_logs(args.logs)
    retain = load_eval_logs(args.retain_logs) if args.retain_logs else None
    result = aggregate(logs, retain)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in SUMMARY_KEYS if k in result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
