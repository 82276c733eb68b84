"""Small TOFU-style evaluation directories written per test (the real mini-TOFU is too big for engine tests)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "author book born wrote city award genre father mother novel name year".split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))).capitalize() + "."


def write_eval_dir(directory: Path, sizes: dict[str, int] | None = None, perturbed: int = 3, seed: int = 0) -> Path:
    """forget/retain/real_authors/world_facts.jsonl with random sentences (forget rows list facts, as mini-TOFU's
    do); the same seed gives the same files."""
    rng = random.Random(seed)
    sizes = sizes or {"forget": 6, "retain": 8, "real_authors": 5, "world_facts": 5}
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in sizes.items():
        rows = []
        for _ in range(count):
            row = {"question": "Who " + _sentence(rng)[:-1].lower() + "?", "answer": _sentence(rng)}
            if split in ("forget", "retain"):
                row["paraphrased_answer"] = _sentence(rng)
            if split == "forget":  # two words a correct answer states (uld-eval's facts-stated check)
                row["facts"] = rng.sample(row["answer"][:-1].lower().split(), 2)
            row["perturbed_answer"] = [_sentence(rng) for _ in range(perturbed)]
            rows.append(row)
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory
