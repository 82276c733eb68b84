"""The run's figure: decode throughput per system, and ULD / plain beside the limits."""

from __future__ import annotations

from pathlib import Path

from bench.throughput_parts.ratios import ratio, step_ratio
from bench.throughput_parts.settings import SYSTEMS


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, c = report["results"], report["costs"]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {system: palette[i % len(palette)] for i, system in enumerate(SYSTEMS)}  # the same in both panels
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system, res in r.items():
        sizes = sorted(int(b) for b in res["decode"])
        tok_s = [res["decode"][str(b)]["tok_s"] for b in sizes]
        left.plot(sizes, tok_s, "o-", color=color[system], label=system)
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="output tokens/s", title="decode throughput")
    left.legend(fontsize=8)
    sizes = report["spec"]["batch_sizes"]
    any_stepped = False
    for system in ("uld-f0", "uld-f0.01", "uld-f0.01-dense", "uld-merged-f0"):
        values = [ratio(r, system, "plain", b) for b in sizes]
        if any(values):
            right.plot(sizes, [v or float("nan") for v in values], "o-", color=color[system], label=f"{system} / plain")
        stepped = [step_ratio(r, system, "plain", b) for b in sizes]
        if any(stepped):
            right.plot(sizes, [v or float("nan") for v in stepped], "x--", color=color[system], alpha=0.6)
            any_stepped = True
    right.axhline(c["byte_limit_shared"], color="k", linestyle="--", label="weight-bound limit (shared)")
    limits = report["decode_limits"]
    for key, color, label in (("flop_limit_dense", "k", "dense head"), ("flop_limit_sparse", "g", "sparse head")):
        right.plot(
            sizes, [limits[str(b)][key] for b in sizes], color=color, linestyle=":", label=f"FLOP limit ({label})"
        )
    if any_stepped:
        right.plot([], [], "x--", color="gray", label="the same, step by step (model time)")
    right.set(xscale="log", ylim=(0, 1.1), xlabel="batch size", ylabel="ratio", title="ULD / plain vLLM vs limits")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
