"""Stamps: a JSON record beside a built artifact naming what made it (inputs' hashes, recipe), so a rebuild is
skipped exactly when the same inputs would make the same artifact again; and the content hash they hold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

BLOCK = 1 << 20  # files are hashed in 1 MiB blocks: a multi-GB checkpoint never sits in memory whole


def update(digest: Any, path: Path) -> None:
    """Feed one file's bytes to a hashlib digest."""
    with path.open("rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    update(digest, path)
    return digest.hexdigest()


def matching(marker: Path, record: dict, subset: bool = False) -> dict | None:
    """The stamp at `marker` when it equals `record` (subset: when it holds each of `record`'s items, beside what
    the build added, e.g. its losses and time); None when missing, unreadable or different."""
    try:
        saved = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if subset:
        return saved if all(saved.get(key) == value for key, value in record.items()) else None
    return saved if saved == record else None


def write(marker: Path, record: dict) -> None:
    marker.write_text(json.dumps(record, indent=2) + "\n")
