"""User-facing errors: what is wrong and how to fix it, reported by the CLI with exit code 2."""

from __future__ import annotations


class AxisguardError(Exception):
    """An error caused by the user's input (a file, a model, a flag), not by a bug.

    ``hint`` says how to fix it; the CLI prints both and exits with code 2, without a traceback.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class IntegrityError(AxisguardError):
    """A stored artifact's content does not match its recorded hash (tampered or corrupted)."""


class MismatchError(AxisguardError):
    """Two artifacts that must agree (pack vs model, bundle vs anchors) do not."""
