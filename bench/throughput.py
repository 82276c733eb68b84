"""Decode throughput of ULD vs plain vLLM on the target vs the HF reference decoder, side by side in one run.

    .venv/bin/python bench/throughput.py [--hidden 1024 --layers 8 --assistant-layers 2 --vocab 32000] [--quick]

What bounds ULD: per decoded token it runs the target, the assistant's K extra layers and a second LM-head GEMM
(the embedding lookup, and the LM head's weight read, are shared). So against plain decoding
    compute-bound (large batches) limit = FLOPs(target) / (FLOPs(target) + FLOPs(K layers) + FLOPs(LM head))
    memory-bound  (batch 1)       limit = bytes(target weights) / (bytes(target) + bytes(K layers))
The benchmark prints both limits beside the measured ratio. Writes bench/results/throughput.{json,md,png}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

RESULTS = Path(__file__).parent / "results"

from uld_vllm.engine import DTYPES, resolve_dtype  # noqa: E402  (after the vLLM environment above)
from uld_vllm.machine import machine_info  # noqa: E402


def model_costs(config, layers: int) -> dict[str, float]:
    """Weight parameters of one decoder layer, the LM head, and the FLOP/byte limits of ULD vs plain decoding."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    layer = h * h * 2 + h * kv * 2 + 3 * h * i  # q, o + k, v + gate, up, down
    head = h * v
    target = config.num_hidden_layers * layer + head  # weights read per step (embedding rows: negligible)
    uld_flops = target + layers * layer + head  # 2 FLOPs per weight per token, both sides: ratio needs no factor 2
    uld_bytes = target + layers * layer  # one read of the shared LM head serves both streams
    return {
        "layer_params": layer,
        "lm_head_params": head,
        "compute_bound_limit": target / uld_flops,
        "memory_bound_limit": target / uld_bytes,
    }


def prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(4, vocab) for _ in range(length - 1)] for _ in range(count)]


def time_vllm(llm, batch: list[list[int]], new_tokens: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == new_tokens for o in outputs)
    return len(batch) * new_tokens / seconds


def time_reference(reference, batch: list[list[int]], new_tokens: int) -> float:
    start = time.perf_counter()
    reference.generate(batch, new_tokens)
    return len(batch) * new_tokens / (time.perf_counter() - start)


def run_engine(model_dir: Path, batch_sizes: list[int], new_tokens: int, args, uld: bool) -> dict[int, float]:
    from tqdm import tqdm

    from uld_vllm.engine import default_llm_kwargs, make_llm, shutdown_llm

    kwargs = default_llm_kwargs() | {
        "dtype": args.dtype,
        "max_model_len": args.prompt_len + new_tokens + 8,
        "skip_tokenizer_init": True,
        "kv_cache_memory_bytes": 1 << 30,
        "max_num_seqs": max(batch_sizes),
        "enable_prefix_caching": False,
        "seed": 0,
    }
    if uld:
        llm = make_llm(model_dir, **kwargs)
    else:
        from vllm import LLM

        llm = LLM(model=str(model_dir), **kwargs)
    rates = {}
    try:
        time_vllm(llm, prompts(2, args.prompt_len, args.vocab, seed=99), 4)  # warm-up
        for size in tqdm(batch_sizes, desc="uld engine" if uld else "plain vLLM", unit="batch"):
            # Best of two: the first pass at a new batch shape pays one-off kernel selection and allocation.
            batch = prompts(size, args.prompt_len, args.vocab, seed=size)
            rates[size] = max(time_vllm(llm, batch, new_tokens) for _ in range(2))
    finally:
        shutdown_llm(llm)
        gc.collect()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--assistant-layers", type=int, default=2, help="K (default L/4)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--reference-batch-sizes", default="1,8,32", help="HF reference (slow): a subset")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="default: $ULD_DTYPE, else by CPU flags (uld_vllm.engine)"
    )
    parser.add_argument("--work", default="out/bench-models", help="where the random bench models are built")
    parser.add_argument("--quick", action="store_true", help="small shape and sizes: checks the script, not speed")
    args = parser.parse_args(argv)
    args.dtype = resolve_dtype(args.dtype)
    if args.dtype == "auto":  # CUDA: the HF reference needs a concrete dtype too
        args.dtype = "bfloat16"
    if args.quick:
        args.hidden, args.layers, args.assistant_layers, args.vocab, args.heads, args.kv_heads = 128, 4, 1, 2048, 4, 2
        args.batch_sizes, args.reference_batch_sizes, args.new_tokens = "1,4", "1", 8

    from transformers import AutoConfig

    from uld_vllm.reference import ReferenceDecoder
    from uld_vllm.testing import build_test_bundle

    work = Path(args.work) / f"h{args.hidden}-L{args.layers}-K{args.assistant_layers}-V{args.vocab}"
    bundle = work / "bundle"
    if not (bundle / "config.json").exists():
        build_test_bundle(
            work,
            layers=args.layers,
            assistant_layers=args.assistant_layers,
            hidden=args.hidden,
            filter=0.1,
            target_kwargs={"vocab_size": args.vocab, "heads": args.heads, "kv_heads": args.kv_heads},
        )
    config = AutoConfig.from_pretrained(bundle)
    costs = model_costs(config, args.assistant_layers)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    reference_sizes = [int(b) for b in args.reference_batch_sizes.split(",")]

    plain = run_engine(work / "target", batch_sizes, args.new_tokens, args, uld=False)
    uld = run_engine(bundle, batch_sizes, args.new_tokens, args, uld=True)
    import torch

    reference = ReferenceDecoder.from_bundle(bundle, dtype=getattr(torch, args.dtype))
    hf = {}
    for size in reference_sizes:
        batch = prompts(size, args.prompt_len, args.vocab, seed=size)
        hf[size] = max(time_reference(reference, batch, args.new_tokens) for _ in range(2))

    rows = [
        {
            "batch": size,
            "plain_tok_s": plain[size],
            "uld_tok_s": uld[size],
            "hf_reference_tok_s": hf.get(size),
            "uld_over_plain": uld[size] / plain[size],
            # ULD / plain can at best reach the memory-bound limit (batch 1) and drops toward the compute-bound one as
            # batches grow: measured against the upper bound, 100% means the engine adds nothing but the assistant.
            "of_upper_bound": uld[size] / plain[size] / costs["memory_bound_limit"],
            "uld_over_hf_reference": uld[size] / hf[size] if size in hf else None,
        }
        for size in batch_sizes
    ]
    result = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in ["bench/throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(args.dtype),
        "shape": {
            k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
        },
        "assistant_layers": args.assistant_layers,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "costs": costs,
        "rows": rows,
    }
    write_results(result, "quick" if args.quick else "throughput")
    return 0


def write_results(result: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# ULD decode throughput ({result['shape']}, K={result['assistant_layers']}, {result['machine']['dtype']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. Prompt {result['prompt_len']} tokens, "
        f"{result['new_tokens']} new tokens per sequence, greedy.",
        "",
        "| batch | plain vLLM tok/s | ULD tok/s | HF reference tok/s | ULD / plain | of upper bound | ULD / HF ref |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        hf = f"{r['hf_reference_tok_s']:.1f}" if r["hf_reference_tok_s"] else "-"
        vs_hf = f"{r['uld_over_hf_reference']:.2f}x" if r["uld_over_hf_reference"] else "-"
        lines.append(
            f"| {r['batch']} | {r['plain_tok_s']:.1f} | {r['uld_tok_s']:.1f} | {hf} | {r['uld_over_plain']:.2f} | "
            f"{r['of_upper_bound']:.0%} | {vs_hf} |"
        )
    c = result["costs"]
    lines += [
        "",
        f"Physical limits of ULD / plain for this shape: {c['memory_bound_limit']:.3f} where decoding is bound by reading "
        f"weights (batch 1: the K extra layers are the only extra bytes; the LM head is read once for both streams), "
        f"{c['compute_bound_limit']:.3f} where it is bound by FLOPs (large batches: K extra layers plus a second LM-head "
        f"GEMM). One decoder layer holds {c['layer_params'] / 1e6:.2f}M weights, the LM head {c['lm_head_params'] / 1e6:.2f}M. "
        "Measured ratios between the two limits mean the engine costs nothing beyond the assistant's own work.",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(result, RESULTS / f"{name}.png")
    print("\n".join(lines))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    batches = [r["batch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(batches, [r["plain_tok_s"] for r in rows], "o-", label="plain vLLM (target)")
    left.plot(batches, [r["uld_tok_s"] for r in rows], "o-", label="ULD engine")
    hf = [(r["batch"], r["hf_reference_tok_s"]) for r in rows if r["hf_reference_tok_s"]]
    left.plot([b for b, _ in hf], [t for _, t in hf], "o-", label="HF reference (2 KV caches)")
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="output tokens/s", title="decode throughput")
    left.legend()
    right.plot(batches, [r["uld_over_plain"] for r in rows], "o-", label="ULD / plain (measured)")
    costs = result["costs"]
    right.axhline(costs["memory_bound_limit"], color="k", linestyle="--", label="memory-bound limit")
    right.axhline(costs["compute_bound_limit"], color="k", linestyle=":", label="compute-bound limit")
    right.set(xscale="log", ylim=(0, 1.05), xlabel="batch size", ylabel="ratio", title="ULD cost vs plain decoding")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
