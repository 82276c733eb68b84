"""The one error type users see: every uld command catches `UldError`, prints its one-line message and exits 2.

Each area keeps its own subclass (BundleError, AssistantError, BatchError, TrainError, EvalError) so callers can
tell them apart, but no command needs to know the list.
"""

from __future__ import annotations


class UldError(ValueError):
    """Bad input or an unusable setting; the message is one line naming the problem (no traceback for users)."""
