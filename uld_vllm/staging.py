"""Write beside the final place, then move in: a crash never leaves a half-written "finished" directory or file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(output: Path) -> Iterator[Path]:
    """Yields an empty OUTPUT.partial; on success it replaces OUTPUT, on error it is removed."""
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)


def staged_file(path: Path, write: Callable[[Path], None]) -> Path:
    """`write(partial)` writes PATH.partial, which then replaces PATH (os.replace: atomic on one filesystem)."""
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return staged_file(path, lambda partial: partial.write_text(text))
