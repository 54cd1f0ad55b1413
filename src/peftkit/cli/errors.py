"""The command line's own error: a problem with the user's arguments or files, shown as one line (exit 2)."""

from __future__ import annotations

from peftkit.errors import PeftkitError


class CliError(PeftkitError, ValueError):
    """A bad argument or input file; the message is printed as ``peftkit: error: <message>``."""
