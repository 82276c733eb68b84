"""The one error type users see: every uld command catches `UldError`, prints its one-line message and exits 2.

Each area keeps its own subclass (BundleError, AssistantError, BatchError, TrainError, EvalError) so callers can
tell them apart, but no command needs to know the list: `command` is the one place the line is printed.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class UldError(ValueError):
    """Bad input or an unusable setting; the message is one line naming the problem (no traceback for users)."""


def command(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorates a command's `main`: a `UldError` it raises becomes `PROG: error: MESSAGE` on stderr and exit
    status 2, with no traceback. Other exceptions (bugs) keep theirs."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except UldError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 2

        return run

    return decorate
