"""The fused combine + sample kernel vs the unfused torch chain, on CUDA, beside the device's copy bandwidth.

    .venv/bin/python bench/kernel.py [--dtype bfloat16 --filter 0.1 --weight -0.8] [--quick]

Both sides get the same prepared per-row parameters (uld_kernels.row_params) and the same logits; the time is the
call alone. Unfused: uld_kernels.reference (combine -> logits / T -> top-k -> top-p -> Gumbel-max), which writes
float32 (B, V) rows and sorts them. Fused: uld_kernels.combine_sample, which only reads the inputs (several passes).
Bandwidth is the unique bytes the op must read (target and assistant logits, once) over the time, next to a plain
device copy's (bytes read + written over its time): the ratio is how close to the memory limit each side gets.
Writes bench/results/kernel.{json,md}. Exits 0 with one line where there is no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 8, 64, 256, 1024)
VOCABS = (32000, 128256, 262144)
CONFIGS = {  # name -> (temperature, top_k, top_p)
    "greedy": (0.0, 0, 1.0),
    "T=1 top-k 50 top-p 0.9": (1.0, 50, 0.9),
}


def copy_bandwidth(gib: int = 2) -> float:
    """GB/s of a device-to-device copy of a large tensor: bytes read + bytes written over the time."""
    from triton.testing import do_bench

    src = torch.empty(gib << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=200, return_mode="median")
    return 2 * (gib << 30) / (ms * 1e-3) / 1e9


def time_ms(fn) -> float | None:
    """Median milliseconds of fn on the device, or None if it runs out of memory."""
    from triton.testing import do_bench

    try:
        return do_bench(fn, warmup=10, rep=100, return_mode="median")
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def run_case(batch: int, vocab: int, config: str, args: argparse.Namespace, copy_gbps: float) -> dict:
    from uld_kernels import row_params
    from uld_kernels.combine_sample import combine_and_sample_triton
    from uld_kernels.reference import combine_and_sample_native

    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device="cuda").manual_seed(batch * 7 + vocab)
    target = (torch.randn(batch, vocab, device="cuda", generator=gen) * 2).to(dtype)
    target[:, :8] += 8  # a peaked head, like a trained LM's
    assistant = (torch.randn(batch, vocab, device="cuda", generator=gen) * 2).to(dtype)
    temperature, top_k, top_p = CONFIGS[config]
    rows = row_params(
        batch, vocab, target.device, weight=args.weight, filter=args.filter, temperature=temperature,
        top_k=top_k, top_p=top_p, seeds=torch.arange(batch), steps=None,
    )  # fmt: skip
    fused = time_ms(lambda: combine_and_sample_triton(target, assistant, rows, False))
    unfused = time_ms(lambda: combine_and_sample_native(target, assistant, rows, "generate", False))
    agree = None
    if fused is not None and unfused is not None:
        a = combine_and_sample_triton(target, assistant, rows, False)[0]
        b = combine_and_sample_native(target, assistant, rows, "generate", False)[0]
        agree = (a == b).float().mean().item()
    read_bytes = 2 * batch * vocab * target.element_size()
    out = {"batch": batch, "vocab": vocab, "config": config, "fused_ms": fused, "torch_ms": unfused}
    out["same_tokens"] = agree  # fraction of rows where both pick the same token (greedy: 1.0 expected)
    for name, ms in (("fused", fused), ("torch", unfused)):
        gbps = None if ms is None else read_bytes / (ms * 1e-3) / 1e9
        out[f"{name}_gbps"] = gbps
        out[f"{name}_of_copy"] = None if gbps is None else gbps / copy_gbps
    out["speedup"] = None if fused is None or unfused is None else unfused / fused
    return out


def markdown(report: dict) -> str:
    def fmt(x: float | None, spec: str, scale: float = 1.0) -> str:
        return "oom" if x is None else format(scale * x, spec)

    lines = [
        "# Fused combine + sample vs the unfused torch chain",
        "",
        f"`{report['command']}` on {report['device']} ({report['dtype']}, filter {report['filter']}, "
        f"weight {report['weight']}). Copy bandwidth: {report['copy_gbps']:.0f} GB/s (read + write).",
        "Bandwidth = unique input bytes (target + assistant, once) / time; '% copy' is that over the copy bandwidth.",
        "",
        "| config | B | V | fused ms | torch ms | speedup (x) | fused GB/s | % copy | torch GB/s | % copy | same tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['config']} | {r['batch']} | {r['vocab']} | {fmt(r['fused_ms'], '.3f')} | "
            f"{fmt(r['torch_ms'], '.3f')} | {fmt(r['speedup'], '.1f')} | {fmt(r['fused_gbps'], '.0f')} | "
            f"{fmt(r['fused_of_copy'], '.0f', 100)} | {fmt(r['torch_gbps'], '.0f')} | "
            f"{fmt(r['torch_of_copy'], '.0f', 100)} | {fmt(r['same_tokens'], '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--filter", type=float, default=0.1, help="relative-top filter r (reference yaml: 0.1)")
    parser.add_argument("--weight", type=float, default=-0.8, help="assistant weight w (reference scripts: -0.8)")
    parser.add_argument("--quick", action="store_true", help="B in (1, 64), V in (32000, 128256) only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernel.py: no CUDA device, nothing to measure (the kernel benchmark runs on GPUs only)")
        return 0
    import triton

    from uld_vllm.machine import machine_info

    batches, vocabs = ((1, 64), (32000, 128256)) if args.quick else (BATCHES, VOCABS)
    copy_gbps = copy_bandwidth()
    torch.cuda.empty_cache()
    report = {
        "command": shlex.join(["python", "bench/kernel.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(),
        "machine": machine_info(args.dtype),
        "triton": triton.__version__,
        "dtype": args.dtype,
        "filter": args.filter,
        "weight": args.weight,
        "copy_gbps": copy_gbps,
        "rows": [],
    }
    for config in CONFIGS:
        for vocab in vocabs:
            for batch in batches:
                row = run_case(batch, vocab, config, args, copy_gbps)
                torch.cuda.empty_cache()  # the torch chain's (B, V) temporaries of the largest cases
                print(json.dumps(row), flush=True)
                report["rows"].append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kernel.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "kernel.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
