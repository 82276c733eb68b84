"""Write a directory beside its final place, then move it in: a crash never leaves a half-written "finished" one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
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
