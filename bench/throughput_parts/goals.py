"""The issue's goals, each with its measured value and whether it is met."""

from __future__ import annotations

from statistics import median

from bench.throughput_parts.ratios import free_head_ceiling, ratio, split_speedup, step_ratio
from bench.throughput_parts.settings import STEP_NOTE


def goals(report: dict) -> list[dict]:
    """The issue's goals, each with its measured value and whether it is met."""
    r, c = report["results"], report["costs"]
    sizes = report["spec"]["batch_sizes"]
    big = 64 if 64 in sizes else sizes[-1]
    out = []

    def goal(name: str, value: float | None, target: float, unit: str = "x") -> None:
        out.append(
            {"goal": name, "value": value, "target": target, "met": value is not None and value >= target, "unit": unit}
        )

    goal("batch 1 decode, filter 0: ULD / plain", ratio(r, "uld-f0", "plain", 1), 0.90)
    sparse, limits = ratio(r, "uld-f0.01", "plain", big), report["decode_limits"][str(big)]
    goal(
        f"batch {big} decode, filter 0.01: ULD / plain, as a share of its FLOP limit ({limits['flop_limit_sparse']:.3f})",
        sparse / limits["flop_limit_sparse"] if sparse else None,
        0.95,
        "of limit",
    )

    def bounds(flop_limit: float, ceiling: float | None) -> str:
        free = "" if ceiling is None else f"; measured, a free assistant head: {ceiling:.3f}"
        return f" (FLOP limit {flop_limit:.3f}{free})"

    goal(
        f"batch {big} decode, filter 0.01: sparse head / dense head"
        + bounds(limits["sparse_over_dense"], free_head_ceiling(r, big)),
        ratio(r, "uld-f0.01", "uld-f0.01-dense", big),
        1.05,
    )
    scoring = ratio(r, "uld-f0.01", "plain", big, "scoring")
    goal(
        f"scoring, filter 0.01: ULD / plain, as a share of its FLOP limit ({c['flop_limit_sparse']:.3f})",
        scoring / c["flop_limit_sparse"] if scoring else None,
        0.90,
        "of limit",
    )
    goal(
        "scoring, filter 0.01: sparse head / dense head"
        + bounds(c["flop_limit_sparse"] / c["flop_limit_dense"], free_head_ceiling(r, big, "scoring")),
        ratio(r, "uld-f0.01", "uld-f0.01-dense", big, "scoring"),
        1.05,
    )
    # The same goals on model time rebuilt step by step (best_steps): identical engines land closer this way than in
    # whole rounds (bench/results/README.md).
    by_step = f"model time step by step ({STEP_NOTE})"
    has_steps = any("steps" in res.get("scoring", {}) for res in r.values())  # runs from before step clocks: none
    if has_steps:
        goal(f"batch 1 decode, filter 0: ULD / plain, {by_step}", step_ratio(r, "uld-f0", "plain", 1), 0.90)
        sparse_steps = step_ratio(r, "uld-f0.01", "plain", big)
        goal(
            f"batch {big} decode, filter 0.01: ULD / plain as a share of its FLOP limit, {by_step}",
            sparse_steps / limits["flop_limit_sparse"] if sparse_steps else None,
            0.95,
            "of limit",
        )
        for workload in ("decode", "scoring"):
            what = f"batch {big} decode" if workload == "decode" else "scoring"
            goal(
                f"{what}, filter 0.01: sparse head / dense head, {by_step}",
                step_ratio(r, "uld-f0.01", "uld-f0.01-dense", big, workload),
                1.05,
            )
    chosen = {s: x for s in sizes if (x := ratio(r, "uld-f0.01", "uld-f0.01-dense", s)) is not None}
    goal("cost-based head choice vs dense, worst batch size", min(chosen.values(), default=None), 1.0)
    # Below the rule's row minimum both systems run the same code: there the ratio is the measurement's spread.
    from uld_vllm.head import DEFAULT_RULES

    min_rows = DEFAULT_RULES["cuda" if "gpu" in report["machine"] else "cpu"].min_rows
    looked_at = [x for s, x in chosen.items() if s >= min_rows]
    goal(
        "the same, batch sizes the rule looks at (below them both run the same code)",
        min(looked_at, default=None),
        1.0,
    )
    inside = [x for s in sizes if s >= min_rows and (x := split_speedup(r, s, inside=True)) is not None]
    if inside:
        goal("the same, compute_logits alone (where the choice acts; the rest runs the same code)", min(inside), 1.0)
    stepped = [x for s in sizes if s >= min_rows and (x := step_ratio(r, "uld-f0.01", "uld-f0.01-dense", s))]
    if stepped:
        goal(f"the same, batch sizes the rule looks at, {by_step}", min(stepped), 1.0)
    for size in (1, big):
        plain = ratio(r, "plain", "hf-reference", size)  # ULD's ceiling: it runs plain vLLM's work and more
        ceiling = "" if plain is None else f" (plain vLLM / HF reference: {plain:.2f})"
        goal(
            f"batch {size} decode: ULD (filter 0.01) / HF reference{ceiling}",
            ratio(r, "uld-f0.01", "hf-reference", size),
            2.0,
        )
    if "uld-f0" in r and "plain" in r:
        overhead = r["uld-f0"]["weight_bytes"] / r["plain"]["weight_bytes"] - 1
        out.append(
            {
                "goal": "weight-memory overhead of ULD (shared weights)",
                "value": overhead,
                "target": 0.02,
                "met": overhead < 0.02,
                "unit": "fraction",
            }
        )
        for cache, kind, key in (
            ("warm compile cache", "warm", "start_seconds"),
            ("cold: compiles", "cold", "start_cold_seconds"),
        ):
            if key in r["uld-f0"] and key in r["plain"]:
                start = r["uld-f0"][key] / r["plain"][key]
                samples = [r[s].get(f"{kind}_start_samples", []) for s in ("uld-f0", "plain")]
                medians = f" (best of {len(samples[0])}; medians {median(samples[0]) / median(samples[1]):.3f})"
                out.append(
                    {
                        "goal": f"engine start ({cache}), ULD / plain" + (medians if all(samples) else ""),
                        "value": start,
                        "target": 1.15,
                        "met": start <= 1.15,
                        "unit": "x at most",
                    }
                )
    return out
