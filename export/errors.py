"""The one exception type of the export stage: expected failures (a model that cannot be
folded, a file that fails its checks) raise it with a message that says what was wrong and
what to do; the CLI prints it and exits 2, without a traceback."""

from __future__ import annotations


class ExportError(Exception):
    """Export, folding or verification failed for a reason the user can act on."""


class FoldError(ExportError):
    """A BatchNorm could not be folded or replaced exactly."""
