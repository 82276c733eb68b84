"""The quality study's report: the JSON's logs beside it, the markdown tables, the paper's claims, the plots."""

from __future__ import annotations

import shutil
from pathlib import Path

LABELS = {"uld": "ULD", "ga": "GA", "ga_gd": "GA+GD", "ga_kl": "GA+KL", "npo": "NPO", "npo_gd": "NPO+GD"}


def fmt_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def median_range(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return median, ordered[0], ordered[-1]


def keep_logs(row: dict, destination: Path, results: Path) -> dict:
    """Copy a row's TOFU logs next to the JSON (so anyone can recompute its numbers) and point `logs` at them."""
    source = Path(row.pop("logs_dir"))
    destination.mkdir(parents=True, exist_ok=True)
    for log in source.glob("eval_*.json"):  # TOFU's four logs (forget, retain, real authors, world facts)
        shutil.copy2(log, destination / log.name)
    return row | {"logs": str(destination.relative_to(results))}


def finish(result: dict, results: Path, name: str) -> dict:
    """The JSON as tools read it: the test rows' logs copied beside it (results/name/<split>/...)."""
    logs_root = results / name
    shutil.rmtree(logs_root, ignore_errors=True)
    for split, entry in result["splits"].items():
        for name in ("target", "retain"):
            if name in entry:
                entry[name] = keep_logs(entry[name], logs_root / split / name, results)
        for method, record in entry["methods"].items():
            if "seeds" in record:
                record["seeds"] = [
                    keep_logs(row, logs_root / split / f"{method}-seed{row['seed']}", results)
                    for row in record["seeds"]
                ]
    return result


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:.3f}"


def seed_cell(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    median, low, high = median_range(values)
    return f"{fmt(median)} [{fmt(low)}, {fmt(high)}]"


def claims(result: dict) -> list[str]:
    """The paper's claims on this study's test numbers (medians over seeds), met or not."""
    lines = []
    for split, entry in result["splits"].items():
        methods = {m: r for m, r in entry["methods"].items() if "seeds" in r}
        if "uld" not in methods or "target" not in entry:
            continue
        med = {m: {k: median_range([s[k] for s in r["seeds"]])[0] for k in ("forget_quality", "model_utility")}
               for m, r in methods.items()}  # fmt: skip
        loss = entry["target"]["model_utility"] - med["uld"]["model_utility"]
        lines.append(f"- {split}: ULD loses {loss:+.4f} Model Utility against the target "
                     f"({'within' if loss <= 0.01 else 'more than'} the paper's ~0.01).")  # fmt: skip
        # comparable utility on the test authors themselves: the validation flag selected, the test numbers report
        utility_floor = result["protocol"]["utility_floor"] * entry["target"]["model_utility"]
        floor = [m for m in methods if med[m]["model_utility"] >= utility_floor]
        best = max(floor, key=lambda m: med[m]["forget_quality"]) if floor else None
        ranking = ", ".join(
            f"{LABELS[m]} {fmt(med[m]['forget_quality'])}"
            for m in sorted(floor, key=lambda m: -med[m]["forget_quality"])
        )
        lines.append(f"- {split}: at test Model Utility (median over seeds) >= {result['protocol']['utility_floor']} x "
                     f"the target's, the best Forget Quality is {LABELS[best] if best else 'none'}'s "
                     f"({ranking or 'no method passed'}).")  # fmt: skip
        slipped = [LABELS[m] for m, r in methods.items() if r["selected"]["passed_utility_floor"] and m not in floor]
        if slipped:
            lines.append(f"- {split}: passed the utility floor on validation but not on test: {', '.join(slipped)}.")
        uld_time = median_range([s["train_seconds"] for s in methods["uld"]["seeds"]])[0]
        for m in methods:
            if m != "uld":
                theirs = median_range([s["train_seconds"] for s in methods[m]["seeds"]])[0]
                lines.append(f"- {split}: training to the selected snapshot, ULD {uld_time:.0f} s vs {LABELS[m]} "
                             f"{theirs:.0f} s: {theirs / uld_time:.2f}x ({'>= 3x: met' if theirs >= 3 * uld_time else 'the paper claims >3x: not met'}).")  # fmt: skip
    return lines


TABLE_KEYS = ("forget_quality", "model_utility", "ks_d", "rouge_forget", "rouge_retain", "gibberish_forget",
              "gibberish_retain", "repetitive_forget", "empty_forget", "extraction_strength", "exact_memorization", "facts_stated", "train_seconds")  # fmt: skip


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        f"# {result['title']}",
        "",
        f"Command: `{result['command']}` at commit {result['commit']}. Machine: {machine['cpu']}, {machine['cores']} "
        f"cores, flags {' '.join(machine['flags']) or '-'}, dtype {machine['dtype']}. Runs trained at "
        f"{', '.join(c[:12] for c in result.get('run_commits', [])) or '-'} (cached runs keep the commit that trained "
        "them). Training seconds: the optimizer loop's, as uld-train's log clocks it.",
        "",
        "Protocol: " + "; ".join(f"{k}: {v}" for k, v in result["protocol"].items() if k != "uld_decoding") + ".",
        f"ULD's decoding grid (evaluated on each snapshot, part of its search): {result['protocol']['uld_decoding']}.",
        "",
        "Test authors, selected configuration, median [min, max] over seeds "
        f"{result['protocol']['seeds']}. Gibberish: share of greedy answers whose NLL under the judge "
        f"({result['protocol']['judge']}) exceeds the 95th percentile of the retain model's own answers' NLL.",
        "",
    ]
    for split, entry in result["splits"].items():
        lines += [f"## {split}", ""]
        if "target" not in entry:
            lines += ["(test phase not run yet)", ""]
        header = (
            "| method | selected (validation) | F.Q. | M.U. | KS D | R-L forget | R-L retain | gibberish forget | "
            "gibberish retain | loops forget | empty forget | ES forget | EM forget | facts stated forget | train s |"
        )
        lines += [header, "|---" * 15 + "|"]
        for name in ("target", "retain"):
            if name in entry:
                row = entry[name]
                cells = [fmt(row.get(k)) for k in TABLE_KEYS]
                lines.append(f"| {name} | - | " + " | ".join(cells) + " |")
        for method, record in entry["methods"].items():
            chosen = record["selected"]
            edge = chosen["lr"] in (min(record["grid"]["lr_grid"]), max(record["grid"]["lr_grid"]))
            what = (
                f"lr {fmt_lr(chosen['lr'])}{' (grid edge)' if edge else ''}, epoch {chosen['epoch']}"
                + (f", w {chosen['weight']}, r {chosen['filter']}" if "weight" in chosen else "")
                + ("" if chosen["passed_utility_floor"] else " (no snapshot passed the utility floor)")
            )
            seeds = record.get("seeds", [])
            lines.append(f"| {LABELS[method]} | {what} | " + " | ".join(seed_cell(seeds, k) for k in TABLE_KEYS) + " |")
        if "noise" in entry:
            d = median_range([p["ks_d"] for p in entry["noise"]])
            p = median_range([p["forget_quality"] for p in entry["noise"]])
            models = sorted({m for pair in entry["noise"] for m in pair["models"]})
            lines += ["", f"Noise floor, {len(entry['noise'])} pairs of {len(models)} retain models that differ in "
                      "seed and never saw this split's authors: KS D "
                      f"median {fmt(d[0])} [{fmt(d[1])}, {fmt(d[2])}], Forget Quality median {fmt(p[0])} [{fmt(p[1])}, {fmt(p[2])}]."]  # fmt: skip
        lines.append("")
    lines += ["## The paper's claims, on these numbers", ""] + (claims(result) or ["(no test results yet)"])
    return "\n".join(lines) + "\n"


def plots(result: dict, path: Path) -> None:
    """Per split: the selected learning rate's validation trajectory, Model Utility vs Forget Quality (the paper's
    figure), and Forget Quality against training time."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(result["splits"])
    fig, axes = plt.subplots(2, len(splits), figsize=(5 * len(splits), 8), squeeze=False)
    for column, split in enumerate(splits):
        entry = result["splits"][split]
        for method, record in entry["methods"].items():
            chosen = record["selected"]
            trajectory = [p for p in record["grid"]["points"] if p["lr"] == chosen["lr"]
                    and all(p.get(k) == chosen.get(k) for k in ("weight", "filter"))]  # fmt: skip
            fq = [math.log10(max(p["forget_quality"], 1e-30)) for p in trajectory]
            axes[0][column].plot(fq, [p["model_utility"] for p in trajectory], marker="o", label=LABELS[method])
            axes[1][column].plot([p["train_seconds"] for p in trajectory], fq, marker="o", label=LABELS[method])
        target = entry["validation_target"]
        axes[0][column].scatter([math.log10(max(target["forget_quality"], 1e-30))], [target["model_utility"]],
                                marker="s", color="black", label="target")  # fmt: skip
        axes[0][column].set(xlabel="log10 Forget Quality (validation)", ylabel="Model Utility", title=split)
        axes[1][column].set(xlabel="training seconds", ylabel="log10 Forget Quality (validation)", title=split)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
