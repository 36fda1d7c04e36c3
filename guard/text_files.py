"""Text files axisguard reads from users and writes for them.

Reading (``read_user_text``): a file that cannot be read or is not UTF-8 is the user's input
problem, so it is an ``AxisguardError`` naming the file, never a ``UnicodeDecodeError`` traceback.

Writing is atomic: a reader (or a crash) never sees a half-written output file.

Artifact folders (bundles, packs) are written whole into a temp folder and renamed
(``guard.tensor_folder.write_folder``); single output files (exported catalogue files, evaluation
results) go through ``write_text_atomic``: a temp file in the same directory, flushed and synced,
then renamed over the target (``os.replace`` is atomic within one file system).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from guard.errors import AxisguardError


def read_user_text(path: str | Path, what: str, hint: str) -> str:
    """The UTF-8 text of a user-supplied file; ``AxisguardError`` (naming ``what`` and the file) if unreadable."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AxisguardError(f"cannot read {what} {path}: {exc.strerror or exc}", hint) from None
    except UnicodeDecodeError as exc:
        raise AxisguardError(f"{path}: {what} is not UTF-8 text (byte {exc.start}: {exc.reason})", hint) from None


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` so that ``path`` holds either its old content or all of the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
