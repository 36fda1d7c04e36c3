"""Engine settings the guard needs, applied in the process that builds vLLM's config (API server / ``LLM``).

Only when axisguard is configured (see ``config``); each change is logged with its reason.

What the guard does NOT change any more (each mode is guarded correctly):

* **compilation** stays vLLM's default: the guard reads and steers the residual stream through a
  ``torch.library`` custom op after each guarded layer (``tap_op``), one opaque node that
  torch.compile keeps; on CPU vLLM compiles one inductor graph with the op inside. ``--enforce-eager``
  (``enforce_eager=True``) is the switch to force eager: the same op then runs eagerly.
* **CUDA graphs**: the op is added to vLLM's graph splitting ops and runs between piecewise graphs;
  a FULL cudagraph mode (the GPU default ``FULL_AND_PIECEWISE``) is switched to ``PIECEWISE`` with a
  logged warning, because a full graph would replay the forward without the tap (``tap_op``).
* **prefix caching** stays on (vLLM's default): the last prompt token is always computed, so prompt
  scores are unchanged by a hit; a cached prefix's tokens are not counted as scored; only blocks
  before a request's last prompt token are ever cached, so steered KV is never reused
  (``prefix_cache``).

* **model runner V1** (``VLLM_USE_V2_MODEL_RUNNER=0``, set by the plugin): the row map reads V1's
  persistent batch.
* the stop / override-validation **logits processor** (``stop``) is added to ``logits_processors``.

Refused with a clear error: pipeline parallelism (hooked layers would live on different stages),
speculative decoding (draft tokens are not request rows the guard understands), and a pack that
does not match the served model (``check_pack_matches`` below), so the server never starts with a wrong pack.

Does an axis pack belong to the model vLLM is about to serve? Checked before serving, not at the first request.

The pack records the model it was built for (``guard.model_info.ModelInfo``: name, HF ``model_type``, hidden size,
layer count). Shape and architecture must match exactly. The name must match too (a pack built for
one fine-tune is meaningless on another with the same shape), compared the way the model zoo names
models: the zoo name recorded in the folder's ``axisguard_model.json``, else the folder name. A model
served under another name can be accepted with ``AXISGUARD_ALLOW_NAME_MISMATCH=1``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import AxisguardError, MismatchError
from guard.pack import AxisPack
from integrations.vllm.config import GuardConfig
from integrations.vllm.stop import QUALNAME as STOP_PROCESSOR

log = logging.getLogger(__name__)


def apply_required_settings(engine_args: Any, config: GuardConfig) -> None:
    """Adjust ``EngineArgs`` in place before vLLM builds its config."""
    if config.mode == "guard":
        processors = list(engine_args.logits_processors or [])
        if STOP_PROCESSOR not in processors:
            processors.append(STOP_PROCESSOR)
        engine_args.logits_processors = processors


def check_engine_config(vllm_config: Any, config: GuardConfig, pack: AxisPack | None = None) -> None:
    """Refuse configurations the guard cannot serve correctly (raises ``AxisguardError``)."""
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise AxisguardError(
            "axisguard does not support pipeline parallelism (the guarded layers would be split across stages)",
            "use tensor parallelism (--tensor-parallel-size) instead, or unset AXISGUARD_PACK",
        )
    if vllm_config.speculative_config is not None:
        raise AxisguardError(
            "axisguard does not support speculative decoding (draft tokens are not request rows it can score)",
            "remove --speculative-config, or unset AXISGUARD_PACK",
        )
    if vllm_config.use_v2_model_runner:
        raise AxisguardError(
            "axisguard needs vLLM's V1 model runner, but the V2 runner is selected",
            "unset VLLM_USE_V2_MODEL_RUNNER (axisguard sets it to 0 itself)",
        )
    if config.mode == "guard":
        if pack is None:
            from probes.policies import load_pack_and_policy

            pack, _ = load_pack_and_policy(config.pack, config.policy)  # type: ignore[arg-type]
        model_config = vllm_config.model_config
        check_pack_matches(pack, served_model_from_hf_config(model_config.model, model_config.hf_config))


ENV_ALLOW_NAME_MISMATCH = "AXISGUARD_ALLOW_NAME_MISMATCH"


@dataclass(frozen=True)
class ServedModel:
    """What the checks need to know about the served model."""

    name: str
    model_type: str
    architectures: tuple[str, ...]
    hidden_size: int
    num_layers: int


def model_name_of(model: str | Path) -> str:
    """The zoo-style name of a model folder (or the id itself when it is not a local folder)."""
    folder = Path(str(model)).expanduser()
    if folder.is_dir():
        from integrations.model_resolution import read_model_card

        card = read_model_card(folder) or {}
        return str(card.get("zoo_name") or card.get("name") or folder.resolve().name)
    return str(model)


def served_model_from_hf_config(model: str | Path, hf_config: Any) -> ServedModel:
    """From a transformers config object (vLLM's ``model_config.hf_config``)."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    return ServedModel(
        name=model_name_of(model),
        model_type=str(getattr(text, "model_type", "") or getattr(hf_config, "model_type", "")),
        architectures=tuple(getattr(hf_config, "architectures", None) or ()),
        hidden_size=int(text.hidden_size),
        num_layers=int(text.num_hidden_layers),
    )


def served_model_from_folder(folder: str | Path) -> ServedModel:
    """From a model folder's ``config.json`` (cheap: no weights, no transformers)."""
    folder = Path(folder)
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AxisguardError(f"cannot read {path}: {exc}", "pass a model folder written by `save_pretrained`") from None
    text = config.get("text_config") or config
    try:
        hidden, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        raise AxisguardError(f"{path} has no hidden_size/num_hidden_layers", "is this a decoder-only LM?") from None
    return ServedModel(
        name=model_name_of(folder),
        model_type=str(text.get("model_type") or config.get("model_type", "")),
        architectures=tuple(config.get("architectures") or ()),
        hidden_size=hidden,
        num_layers=layers,
    )


def check_pack_matches(pack: AxisPack, served: ServedModel, allow_name_mismatch: bool | None = None) -> None:
    """Raise ``MismatchError`` (with a hint) unless the pack was built for this model."""
    known = {served.model_type, *served.architectures}
    arch = pack.model.architecture if pack.model.architecture in known else (served.model_type or None)
    pack.check_model(served.hidden_size, served.num_layers, arch)
    if allow_name_mismatch is None:
        allow_name_mismatch = os.environ.get(ENV_ALLOW_NAME_MISMATCH, "").strip().lower() in {"1", "true", "yes"}
    if pack.model.name and served.name != pack.model.name and not allow_name_mismatch:
        raise MismatchError(
            f"pack was built for {pack.model.name!r}, but the served model is {served.name!r} "
            f"(same shape: {served.num_layers} layers, hidden size {served.hidden_size})",
            f"serve the model the pack was adapted to, build a pack for this one with `axisguard adapt`, or set "
            f"{ENV_ALLOW_NAME_MISMATCH}=1 (`axisguard serve --allow-name-mismatch`) if it is the same model renamed",
        )
