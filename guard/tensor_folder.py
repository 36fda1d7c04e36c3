"""Artifact folders: ``manifest.json`` + ``tensors.safetensors``, with content hashes checked on load.

Everything axisguard writes and reads back is data: JSON and safetensors, never pickles. The
manifest records the sha256 of the tensor file and of its own canonical JSON body, so an edit to
either is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from guard.errors import AxisguardError, IntegrityError
from guard.text_files import read_user_text

MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def write_folder(path: str | Path, kind: str, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    """Write an artifact folder atomically (temp dir + rename); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(arrays, str(tmp / TENSORS))
        body = {"kind": kind, **meta}
        manifest = {
            **body,
            "tensors_sha256": sha256_file(tmp / TENSORS),
            "tensor_shapes": {k: list(v.shape) for k, v in arrays.items()},
        }
        manifest["manifest_sha256"] = sha256_bytes(_canonical_json(manifest))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        # The old folder is moved aside, not deleted first: at every instant `path` is either the
        # complete old artifact or the complete new one (or, for a moment, absent; never partial).
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_folder(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify an artifact folder; raises a user-facing error on any mismatch."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise AxisguardError(
            f"{path} is not an axisguard {kind}: {MANIFEST} is missing",
            f"pass the folder written by `axisguard {'calibrate' if kind == 'canonical_bundle' else 'adapt'}`",
        )
    try:
        manifest = json.loads(read_user_text(manifest_path, "manifest", "re-create the artifact"))
    except (json.JSONDecodeError, AxisguardError) as exc:
        raise IntegrityError(f"{manifest_path}: not valid JSON ({exc})", "re-create the artifact") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{manifest_path}: not a JSON object", "re-create the artifact")
    if manifest.get("kind") != kind:
        raise AxisguardError(
            f"{path} holds a {manifest.get('kind')!r}, expected a {kind!r}",
            "canonical bundles come from `axisguard calibrate`, axis packs from `axisguard adapt`",
        )
    recorded = manifest.pop("manifest_sha256", None)
    if recorded != sha256_bytes(_canonical_json(manifest)):
        raise IntegrityError(
            f"{manifest_path} was modified after it was written (manifest hash mismatch)",
            "re-create the artifact instead of editing it by hand",
        )
    tensor_path = path / TENSORS
    if not tensor_path.is_file() or sha256_file(tensor_path) != manifest.get("tensors_sha256"):
        raise IntegrityError(
            f"{tensor_path} does not match the hash recorded in {MANIFEST} (corrupted or tampered)",
            "re-create the artifact",
        )
    tensors = load_file(str(tensor_path))
    shapes = manifest.get("tensor_shapes", {})
    if not isinstance(shapes, dict):
        raise IntegrityError(f"{manifest_path}: tensor_shapes is not a mapping", "re-create the artifact")
    for name, shape in shapes.items():
        if name not in tensors or list(tensors[name].shape) != shape:
            raise IntegrityError(f"{tensor_path}: tensor {name!r} missing or of the wrong shape")
    return manifest, tensors


@contextmanager
def manifest_fields(path: str | Path) -> Iterator[None]:
    """Turn a malformed manifest field met while building an artifact object (a missing key, a wrong
    type) into an ``IntegrityError`` naming the file, instead of a traceback. A manifest with valid
    hashes can still be malformed: written by another version, or by someone who recomputed them."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise IntegrityError(f"{Path(path) / MANIFEST}: malformed manifest ({type(exc).__name__}: {exc})",
                             "re-create the artifact with this version of axisguard") from None


def check_pinned_digest(path: str | Path, expected_sha256: str, source: str = "the pin") -> None:
    """Refuse an artifact folder whose manifest digest is not ``expected_sha256``.

    The unkeyed hashes in the manifest only catch edits made without recomputing them (corruption, a
    hand-edited file): anyone who can write the folder can write a different but self-consistent
    artifact. Pinning the manifest digest the deployer approved closes that: a swapped pack has
    another ``manifest_sha256``. ``read_folder`` then ties the tensors to this manifest.
    """
    path = Path(path)
    expected = expected_sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise AxisguardError(f"{source}: {expected_sha256!r} is not a sha256 hex digest",
                             f"use the pack's manifest_sha256 (jq -r .manifest_sha256 {path / MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path / MANIFEST}: cannot read the manifest to check {source} ({exc})",
                             "point the pack setting at a folder written by `axisguard adapt`") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path / MANIFEST}: not a JSON object", "re-create the artifact")
    recorded = manifest.pop("manifest_sha256", None)
    actual = sha256_bytes(_canonical_json(manifest))
    if recorded != actual or actual != expected:
        raise IntegrityError(
            f"{path} has manifest_sha256 {actual}, but {source} pins {expected}: not the approved pack",
            "deploy the pinned pack, or update the pin to the new pack's manifest_sha256 after reviewing it",
        )
