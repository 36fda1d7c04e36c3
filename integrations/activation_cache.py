"""On-disk cache of pooled activations, so a rerun on the same prompts does no forward pass.

Layout under ``root`` (default ``$AXISGUARD_HOME/activations``)::

    <model fingerprint>/<pooling>-<chat|raw>/layer<L>/<shard>.safetensors

A shard holds ``keys`` [n, 32] uint8 (sha256 of each prompt's exact model-input text) and
``acts`` [n, d] float32, plus metadata naming the key it belongs to. Shards are immutable and
appear by atomic rename, named by the hash of their content, so any number of processes can
read and write the same cache: a reader sees whole shards or none, and two writers of the same
rows write the same file. Only safetensors and JSON are ever read back (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from integrations.model_zoo import axisguard_home

FORMAT = "axisguard-activations-1"
_SHARD_SUFFIX = ".safetensors"


def prompt_hash(text: str) -> str:
    """The cache key of one prompt: sha256 of the exact (formatted) text the model reads."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything besides the prompt that determines a pooled activation."""

    fingerprint: str
    layer: int
    pooling: str
    chat_template: bool

    def relative_dir(self) -> Path:
        mode = "chat" if self.chat_template else "raw"
        return Path(self.fingerprint) / f"{self.pooling}-{mode}" / f"layer{self.layer:03d}"


@dataclass
class _Index:
    loaded: set[str] = field(default_factory=set)
    rows: dict[bytes, np.ndarray] = field(default_factory=dict)


class ActivationCache:
    """Pooled activations keyed by (model fingerprint, layer, pooling, chat flag, prompt sha256).

    ``hits``/``misses`` count prompt-rows served from / missing in the cache since creation.
    Once a key has more than ``compact_after`` shards, ``store`` merges them into one.
    """

    def __init__(self, root: str | Path | None = None, compact_after: int = 32) -> None:
        self.root = Path(root) if root is not None else axisguard_home() / "activations"
        self.compact_after = compact_after
        self.hits = 0
        self.misses = 0
        self._indexes: dict[CacheKey, _Index] = {}

    def _dir(self, key: CacheKey) -> Path:
        return self.root / key.relative_dir()

    def _refresh(self, key: CacheKey) -> _Index:
        """Load shards that appeared since the last look (possibly written by other processes)."""
        index = self._indexes.setdefault(key, _Index())
        folder = self._dir(key)
        if not folder.is_dir():
            return index
        for path in sorted(folder.glob(f"*{_SHARD_SUFFIX}")):
            if path.name.startswith(".") or path.name in index.loaded:
                continue
            try:
                tensors = load_file(str(path))
            except FileNotFoundError:  # merged away by a concurrent compaction; its rows live on
                continue
            except (SafetensorError, OSError) as exc:
                warnings.warn(f"skipping unreadable activation shard {path}: {exc}", stacklevel=2)
                continue
            keys, acts = tensors.get("keys"), tensors.get("acts")
            if keys is None or acts is None or keys.ndim != 2 or keys.shape[1] != 32 or len(keys) != len(acts):
                warnings.warn(f"skipping malformed activation shard {path}", stacklevel=2)
                continue
            index.loaded.add(path.name)
            for digest, row in zip(keys, acts, strict=True):
                index.rows[digest.tobytes()] = row
        return index

    def lookup(self, key: CacheKey, hashes: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """(rows, found): rows [n, d] float32 valid where ``found`` [n] bool; rows is None if no hit."""
        index = self._refresh(key)
        found = np.zeros(len(hashes), dtype=bool)
        rows: np.ndarray | None = None
        for i, h in enumerate(hashes):
            row = index.rows.get(bytes.fromhex(h))
            if row is None:
                continue
            if rows is None:
                rows = np.zeros((len(hashes), row.shape[0]), dtype=np.float32)
            rows[i] = row
            found[i] = True
        self.hits += int(found.sum())
        self.misses += int(len(hashes) - found.sum())
        return rows, found

    def store(self, key: CacheKey, hashes: Sequence[str], acts: np.ndarray) -> None:
        """Add rows (one per prompt hash) as a new shard, atomically; then compact if needed."""
        acts = np.ascontiguousarray(acts, dtype=np.float32)
        if acts.ndim != 2 or len(acts) != len(hashes):
            raise ValueError(f"store needs one row per hash: {len(hashes)} hashes, acts {acts.shape}")
        if not len(hashes):
            return
        keys = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8).reshape(-1, 32)
        self._write_shard(key, keys, acts)
        index = self._refresh(key)
        if len(index.loaded) > self.compact_after:
            self.compact(key)

    def _write_shard(self, key: CacheKey, keys: np.ndarray, acts: np.ndarray) -> Path:
        folder = self._dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(keys.tobytes() + acts.tobytes()).hexdigest()[:32]
        final = folder / f"{digest}{_SHARD_SUFFIX}"
        tmp = folder / f".{uuid.uuid4().hex}.tmp"
        meta = {
            "format": FORMAT,
            "fingerprint": key.fingerprint,
            "layer": str(key.layer),
            "pooling": key.pooling,
            "chat_template": json.dumps(key.chat_template),
        }
        try:
            save_file({"keys": keys, "acts": acts}, str(tmp), metadata=meta)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def compact(self, key: CacheKey) -> None:
        """Merge a key's shards into one. Safe alongside other processes: the merged shard lands
        before the old ones go, and shards written meanwhile are left alone."""
        index = self._refresh(key)
        merged_from = set(index.loaded)
        if len(merged_from) <= 1:
            return
        digests = sorted(index.rows)
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32)
        acts = np.stack([index.rows[d] for d in digests]).astype(np.float32)
        merged = self._write_shard(key, keys, acts)
        for name in merged_from - {merged.name}:
            (self._dir(key) / name).unlink(missing_ok=True)
        index.loaded = {merged.name}

    def shard_count(self, key: CacheKey) -> int:
        folder = self._dir(key)
        return len([p for p in folder.glob(f"*{_SHARD_SUFFIX}") if not p.name.startswith(".")]) if folder.is_dir() else 0
