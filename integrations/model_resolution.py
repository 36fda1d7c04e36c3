"""Resolution: a model spec (zoo name, local folder or an already-cached HF hub id) -> a local HF folder.

Zoo models are pulled on first use (``integrations.model_pull``); a folder's zoo card
(``axisguard_model.json``) supplies its name and chat-template default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import AxisguardError
from integrations.model_zoo import MODEL_CARD, ZOO, ZooEntry, is_pulled, model_dir


def _unknown_model_error(spec: str) -> AxisguardError:
    return AxisguardError(
        f"unknown model {spec!r}: not a zoo name and not a local model folder",
        f"use one of the zoo names ({', '.join(ZOO)}) or the path of a folder with config.json",
    )



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
            from integrations.model_pull import pull

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
