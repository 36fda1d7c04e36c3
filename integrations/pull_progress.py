"""Terminal progress for ``axisguard models pull``: byte bars for hashing/assembly, spinners otherwise (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class PullProgress:
    """Rich progress for the pull steps (byte bars for hashing/assembly, spinners otherwise)."""

    def __init__(self, title: str, quiet: bool) -> None:
        self.quiet = quiet
        self.title = title
        self._progress: Any = None

    def __enter__(self) -> PullProgress:
        if not self.quiet:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            class _BytesOnly(DownloadColumn):
                def render(self, task: Any) -> Any:
                    return super().render(task) if task.fields.get("counts_bytes") else ""

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                _BytesOnly(),
                TimeElapsedColumn(),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    @contextmanager
    def step(self, description: str, total_bytes: int | None = None) -> Iterator[Callable[[int], None]]:
        """A step; yields ``advance(n_bytes)`` for byte-counted steps."""
        if self._progress is None:
            yield lambda n: None
            return
        task = self._progress.add_task(
            f"{self.title}: {description}", total=total_bytes, counts_bytes=total_bytes is not None
        )
        yield lambda n: self._progress.advance(task, n)
        self._progress.update(task, total=total_bytes or 1, completed=total_bytes or 1)
