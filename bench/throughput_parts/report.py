"""The run's report: its JSON, a markdown summary of every table, and the figure, under bench/results/."""

from __future__ import annotations

import json

from bench.throughput_parts.plot import plot
from bench.throughput_parts.ratios import free_head_ceiling, ratio, split_speedup, step_ratio
from bench.throughput_parts.settings import RESULTS, STEP_NOTE


def write_report(report: dict, name: str) -> None:
    """bench/results/NAME.{json,md,png}; the markdown printed too."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = report_lines(report)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(report, RESULTS / f"{name}.png")
    print("\n".join(lines))


def report_lines(report: dict) -> list[str]:
    """The markdown summary, section by section."""
    return [
        *header_lines(report),
        *decode_lines(report),
        *ttft_lines(report),
        *start_memory_lines(report),
        *head_lines(report),
        *goal_lines(report),
    ]


def header_lines(report: dict) -> list[str]:
    """Title, command, machine, and how the run measured."""
    m, s = report["machine"], report["shape"]
    return [
        f"# ULD throughput: hidden {s['hidden']}, {s['layers']} layers, K = {s['assistant_layers']}, vocab {s['vocab']}, {m['dtype']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or '(none of the speed flags)'}; dtype {m['dtype']}; "
        f"huge pages: {m.get('huge_pages', 'not recorded')}. "
        "Throughput: every vLLM system in one process, each measurement interleaved across systems (the order rotating "
        "each round), best of "
        f"{report['spec']['repeats']} rounds (ratios between processes vary by +-10-30% here; side by side they do not). "
        "Engine starts and peak memory: each system in its own processes; cold starts best of "
        f"{report['start_rounds']['cold'] + 1} and warm ones of {report['start_rounds']['warm'] + 1}, the systems taking "
        "turns (every sample in the JSON). The HF reference: its own process."
        + "".join(
            f" {system}'s throughput: {host}'s engine with its assistant head switched off for its turns (the same "
            "weights and memory; identical code still drifts 4-7% over minutes here, so its best rounds can land that "
            "far apart: bench/head_choice.py pairs adjacent runs instead)."
            for system, host in report["spec"].get("head_off_on", {}).items()
        ),
    ]


def decode_lines(report: dict) -> list[str]:
    """Decode throughput per system, the ratios beside their limits, and where the time goes."""
    r, c = report["results"], report["costs"]
    sizes = report["spec"]["batch_sizes"]
    lines = [
        "",
        "## Decode: output tokens/s (prompts 16-256 tokens, 16-128 new tokens each, EOS ignored, greedy)",
        "",
        *per_batch_table(r, sizes, "tok_s", ".1f"),
        "",
        *batch_table_head("ratio", sizes, "limit per token (one decode step)"),
    ]
    for system, base, limit in (
        ("uld-f0", "plain", f"bytes {c['byte_limit_shared']:.3f} / FLOPs {c['flop_limit_dense']:.3f}"),
        ("uld-f0.01", "plain", f"bytes {c['byte_limit_shared']:.3f} / FLOPs {c['flop_limit_sparse']:.3f}"),
        ("uld-f0.01-dense", "plain", f"bytes {c['byte_limit_shared']:.3f} / FLOPs {c['flop_limit_dense']:.3f}"),
        ("uld-merged-f0", "plain", f"bytes {c['byte_limit_merged']:.3f} / FLOPs {c['flop_limit_dense']:.3f}"),
        (
            "uld-f0.01",
            "uld-f0.01-dense",
            f"FLOPs {c['flop_limit_sparse'] / c['flop_limit_dense']:.3f} (sparse / dense head)",
        ),
        ("uld-f0.01", "hf-reference", "ULD / paper's decoder"),
    ):
        cells = [f"{v:.2f}" if (v := ratio(r, system, base, b)) else "-" for b in sizes]
        lines.append(f"| {system} / {base} | " + " | ".join(cells) + f" | {limit} |")
    limits = report["decode_limits"]
    for key, label in (
        ("flop_limit_dense", "FLOP limit, ULD dense head / plain"),
        ("flop_limit_sparse", "FLOP limit, ULD sparse head / plain"),
        ("sparse_over_dense", "FLOP limit, sparse / dense head"),
    ):
        cells = [f"{limits[str(b)][key]:.3f}" for b in sizes]
        lines.append(f"| {label}, this batch's work | " + " | ".join(cells) + " | |")
    return lines + [
        "",
        "FLOP limits for a batch's work count every prompt token through the layers and the heads once per output "
        "token (vLLM computes logits only where it samples); the per-token limits hold for one decode step and for "
        "scoring, where every token gets logits.",
        *logits_share_lines(r, sizes),
        *step_lines(r, c, limits, sizes),
    ]


def ttft_lines(report: dict) -> list[str]:
    """Time to first token per system."""
    return [
        "",
        "## Time to first token (s; the same B prompts, max_tokens 1)",
        "",
        *per_batch_table(report["results"], report["spec"]["batch_sizes"], "ttft_s", ".3f"),
    ]


def start_memory_lines(report: dict) -> list[str]:
    """Scoring throughput, engine starts, weights, KV blocks, peak memory and the head's keep sets per system."""
    lines = [
        "",
        "## Scoring, engine start, memory",
        "",
        "| system | scored tok/s | start s, cold / warm cache | weight MB | KV blocks | peak RSS GiB | mean kept/row | "
        "mean union |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, res in report["results"].items():
        head = res.get("head") or {}
        kept = f"{head['mean_kept_per_row']:.0f}" if head.get("calls") else "-"
        union = f"{head['mean_union']:.0f}" if head.get("calls") else "-"
        cold = res.get("start_cold_seconds")
        starts = f"{res['start_seconds']:.1f}" if cold is None else f"{cold:.1f} / {res['start_seconds']:.1f}"
        lines.append(
            f"| {system} | {res['scoring']['tok_s']:.1f} | {starts} | {res['weight_bytes'] / 1e6:.1f} | "
            f"{res.get('kv_blocks', '-')} | {res['peak_rss_gib']:.2f} | {kept} | {union} |"
        )
    return lines


FITTED_HEAD_RUN = "throughput-avx512-mask.json"  # the latest committed run on the random bench shape's fitted head


def head_lines(report: dict) -> list[str]:
    """The engine's head statistics explained, the timed rule's clocks, and the keep sets: the real model's on TOFU's
    text beside the fitted bench head's, or the fitted head's beside unrelated rows'."""
    h = report["head_realism"]
    lines = [
        "",
        "The engine's own head statistics (mean kept/row, mean union) count the logits calls the sparse head's rule"
        " looks at (on CPU 8 rows or more, on CUDA 256; decode and scoring); the table below is the head on contexts"
        " outside the measured runs.",
        *head_clock_lines(report["results"].get("uld-f0.01", {}).get("head") or {}),
        "",
        f"## Keep sets (filter {h['filter']}, unions over {h['rows_per_union']} rows)",
        "",
        "| head | vocab | entropy (nats) | kept per row | union of 64 rows |",
        "|---|---|---|---|---|",
    ]
    rows = [("realistic", "the fitted bench head (Zipf prior + random part), 256 random contexts")]
    rows.append(("random_same_entropy", "context parts only (unrelated rows), same entropy"))
    fitted_vocab = report["shape"]["vocab"]
    if "real" in h:
        rows = [("real", f"the real model: {h['contexts']}")]
        fitted_path = RESULTS / FITTED_HEAD_RUN
        if fitted_path.exists():
            fitted = json.loads(fitted_path.read_text())
            h = h | {"realistic": fitted["head_realism"]["realistic"]}
            rows.append(("realistic", f"the fitted bench head ({FITTED_HEAD_RUN}), 256 random contexts"))
            fitted_vocab = fitted["shape"]["vocab"]
    for key, label in rows:
        vocab = report["shape"]["vocab"] if key != "realistic" else fitted_vocab
        r = h[key]
        lines.append(
            f"| {label} | {vocab} | {r['entropy_nats']:.2f} | {r['mean_kept_per_row']:.0f} | {r['union']:.0f} |"
        )
    return lines


def goal_lines(report: dict) -> list[str]:
    """The goals table."""
    lines = [
        "",
        "## Goals",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for g in report["goals"]:
        value = "-" if g["value"] is None else (f"{g['value']:.1%}" if g["unit"] == "fraction" else f"{g['value']:.3f}")
        target = f"{g['target']:.0%}" if g["unit"] == "fraction" else f"{g['target']:.2f}"
        bound = {"fraction": "<", "x at most": "<="}.get(g["unit"], ">=")
        lines.append(f"| {g['goal']} | {value} | {bound} {target} | {'yes' if g['met'] else 'no'} |")
    return lines


def batch_table_head(first: str, sizes: list[int], *after: str) -> list[str]:
    """A markdown table's header and rule: `first`, one column per batch size, then the columns `after`."""
    columns = [first, *(f"B={b}" for b in sizes), *after]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def per_batch_table(results: dict, sizes: list[int], key: str, fmt: str) -> list[str]:
    """Markdown rows: one per system, one column per batch size, the decode measurement `key`."""
    lines = batch_table_head("system", sizes)
    for system, res in results.items():
        cells = [format(res["decode"][str(b)][key], fmt) if str(b) in res["decode"] else "-" for b in sizes]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return lines


def logits_share_lines(results: dict, sizes: list[int]) -> list[str]:
    """compute_logits' share of each round (absent in runs from before its clock): what the heads can save at most."""
    shared = [s for s, res in results.items() if "logits_share" in res.get("scoring", {})]
    if not shared:
        return []
    lines = [
        "",
        "## Where the time goes: compute_logits' share of each round",
        "",
        "The LM heads, ULD's mask and combination (not the sampler), timed around the model's compute_logits in the "
        "same rounds as the throughput above. Any assistant head saves only inside it, and the sparse path still "
        "computes the target's logits in full. 'A free assistant head': sparse / dense if the dense system's "
        "compute_logits cost only plain's; the last two rows split sparse / dense into compute_logits and the rest.",
        "",
        *batch_table_head("system", sizes, "scoring"),
    ]
    for system in shared:
        decode = results[system]["decode"]
        cells = [f"{decode[str(b)]['logits_share']:.1%}" if str(b) in decode else "-" for b in sizes]
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {results[system]['scoring']['logits_share']:.1%} |")
    ceilings = [free_head_ceiling(results, b) for b in sizes] + [free_head_ceiling(results, 0, "scoring")]
    if any(ceilings):
        cells = [f"{x:.3f}" if x else "-" for x in ceilings]
        lines.append("| sparse / dense, a free assistant head | " + " | ".join(cells) + " |")
    for inside, label in ((True, "compute_logits alone"), (False, "the rest of the round (the same code in both)")):
        splits = [split_speedup(results, b, inside) for b in sizes] + [split_speedup(results, 0, inside, "scoring")]
        if any(splits):
            cells = [f"{x:.3f}" if x else "-" for x in splits]
            lines.append(f"| sparse / dense, {label} | " + " | ".join(cells) + " |")
    return lines


def step_lines(results: dict, costs: dict, limits: dict, sizes: list[int]) -> list[str]:
    """The ratios again on model time rebuilt step by step (absent in runs from before step clocks)."""
    dense, sparse = costs["flop_limit_dense"], costs["flop_limit_sparse"]
    rows = [
        ("uld-f0", "plain", dense),
        ("uld-f0.01", "plain", sparse),
        ("uld-f0.01-dense", "plain", dense),
        ("uld-f0.01", "uld-f0.01-dense", sparse / dense),
    ]
    if not any(step_ratio(results, system, base, b) for system, base, _ in rows for b in sizes):
        return []
    lines = [
        "",
        f"## The same ratios, {STEP_NOTE}",
        "",
        "Model time: the model's forward and compute_logits, clocked per engine step (not vLLM's scheduler and "
        "sampler, the same code in every system, which whole rounds include). Every system runs the same schedule on "
        "the same requests (checked: '-' where it did not), so each step's fastest round can be kept and the round "
        "rebuilt from them: whole rounds keep every spike that hit them. bench/spread.py measured how far identical "
        "engines land apart this way: up to 4% (whole rounds: up to 8-10%). Limits: the FLOP limit of each batch's "
        "work for every step; per token (one decode step) for decode-only steps (every row decoding) and scoring.",
        "",
        *batch_table_head("ratio", sizes, "scoring", "FLOP limit per token"),
    ]
    for part, label in (("model_s", "every step"), ("decode_s", "decode-only steps"), ("logits_s", "compute_logits")):
        for system, base, per_token in rows:
            if part == "logits_s" and base == "plain":
                continue  # plain's compute_logits has no assistant head: only sparse / dense compares there
            cells = [f"{x:.3f}" if (x := step_ratio(results, system, base, b, part=part)) else "-" for b in sizes]
            scoring = step_ratio(results, system, base, 0, "scoring", part) if part != "decode_s" else None
            cells.append(f"{scoring:.3f}" if scoring else "-")
            lines.append(f"| {system} / {base}, {label} | " + " | ".join(cells) + f" | {per_token:.3f} |")
        if part == "model_s":
            for key, name in (
                ("flop_limit_sparse", "ULD sparse head / plain"),
                ("sparse_over_dense", "sparse / dense"),
            ):
                cells = [f"{limits[str(b)][key]:.3f}" for b in sizes]
                lines.append(f"| FLOP limit, {name}, this batch's work | " + " | ".join(cells) + " | | |")
    return lines


def head_clock_lines(head: dict) -> list[str]:
    """The timed rule's own clocks in uld-f0.01: the logits path of each head, per call size, in one process."""
    clocks = {rows: c for rows, c in head.get("logits_ms_by_rows", {}).items() if c["stacked"] and c["union"]}
    if not clocks:
        return []
    lines = [
        "",
        "The timed rule's clocks in uld-f0.01 (ms per compute_logits call, moving averages over the whole run): the"
        " head's own saving, without the noise of comparing whole rounds.",
        "",
        "| logits rows | calls | stacked dense head | union head | stacked / union |",
        "|---|---|---|---|---|",
    ]
    for rows, c in clocks.items():
        lines.append(
            f"| {rows} | {c['calls']} | {c['stacked']:.1f} | {c['union']:.1f} | {c['stacked'] / c['union']:.2f} |"
        )
    return lines
