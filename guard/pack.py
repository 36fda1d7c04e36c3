"""Axis pack: the canonical axes reconstructed in one deployed model's native hidden space.

This is what the runtime monitor loads. Score definition (the same on every model, so that a
policy threshold means the same thing everywhere): for a hidden state h at the pack's layer,

    z_k(h) = (cos(h - anchor_mean, vectors[k]) - score_offset[k]) / score_scale[k]

where ``score_offset``/``score_scale`` are the mean/std of that cosine over the target model's own
anchor prompts. So z = 0 is "like an average anchor prompt" and z = 2 is two anchor standard
deviations towards the axis' positive side. See ``guard.scoring``.

Per-axis layers (pack format 2): each axis may be read at its own decoder layer. Then
``axis_layers[k]`` is axis k's layer and ``axis_anchor_mean[k]`` the anchor mean at that layer (the
centring of its score and of steering along it); ``model.layer`` is the first axis' layer.
Format-1 packs (every axis at ``model.layer``) load unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guard import __version__
from guard.axes import AxisSpec
from guard.errors import MismatchError
from guard.model_info import ModelInfo
from guard.tensor_folder import manifest_fields, read_folder, write_folder

KIND = "axis_pack"
PACK_FORMAT = 2  # 1: one layer for all axes; 2: adds per-axis layers (``axis_layers``)


@dataclass
class AxisPack:
    """Native-space axes ``vectors`` [K, d] (unit rows) for ``model`` at ``model.layer``.

    ``pos_mean_z``/``neg_mean_z`` [K] are label-free priors carried from the source models (mean
    z-score of positives/negatives there): a default threshold sits between them, and ``clamp``
    steering pulls a triggered request to ``neg_mean_z`` (the safe side).
    """

    model: ModelInfo
    axes: list[AxisSpec]
    vectors: np.ndarray
    anchor_mean: np.ndarray
    score_offset: np.ndarray
    score_scale: np.ndarray
    pos_mean_z: np.ndarray
    neg_mean_z: np.ndarray
    method: str
    anchors_sha256: str
    bundle_sha256: str = ""
    sources: list[str] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    axis_layers: list[int] | None = None
    axis_anchor_mean: np.ndarray | None = None

    def __post_init__(self) -> None:
        k = len(self.axes)
        if self.axis_layers is None:  # format 1: one layer, one anchor mean for every axis
            self.axis_layers = [self.model.layer] * k
        self.axis_layers = [int(layer) for layer in self.axis_layers]
        if self.axis_anchor_mean is None:
            self.axis_anchor_mean = np.tile(np.asarray(self.anchor_mean, np.float32), (k, 1))

    @property
    def layers_by_axis(self) -> list[int]:
        """Each axis' decoder layer (the same list as ``axis_layers``, never None)."""
        assert self.axis_layers is not None  # set in __post_init__
        return self.axis_layers

    @property
    def score_layers(self) -> list[int]:
        """The distinct layers this pack reads, ascending (what an engine must hook to score)."""
        return sorted(set(self.layers_by_axis))

    @property
    def per_axis_layers(self) -> bool:
        return len(self.score_layers) > 1

    @property
    def axis_names(self) -> list[str]:
        return [a.name for a in self.axes]

    @property
    def layer(self) -> int:
        return self.model.layer

    def auto_threshold(self, k: int) -> float:
        """The ``auto`` threshold of axis ``k``: half-way between the calibrated negative and positive means."""
        return float((self.pos_mean_z[k] + self.neg_mean_z[k]) / 2.0)

    def axis_index(self, name: str) -> int:
        try:
            return self.axis_names.index(name)
        except ValueError:
            raise MismatchError(
                f"axis {name!r} is not in this pack", f"the pack's axes are: {', '.join(self.axis_names)}"
            ) from None

    def check_model(self, hidden_size: int, num_layers: int, architecture: str | None = None) -> None:
        """Refuse a model this pack was not built for (before serving, not at the first request)."""
        bad = [layer for layer in self.layers_by_axis if not 0 <= layer < num_layers]
        if bad and num_layers == self.model.num_layers:
            raise MismatchError(f"pack reads layer {bad[0]}, out of range for {self.model.name} ({num_layers} layers)",
                                "re-create the pack with `axisguard adapt`")
        if hidden_size != self.model.hidden_size:
            raise MismatchError(
                f"pack was built for {self.model.name} (hidden size {self.model.hidden_size}), "
                f"but the model has hidden size {hidden_size}",
                "build a pack for this model: `axisguard adapt BUNDLE --target MODEL --out PACK`",
            )
        if num_layers != self.model.num_layers:
            raise MismatchError(
                f"pack was built for {self.model.name} ({self.model.num_layers} layers), "
                f"but the model has {num_layers} layers",
                "build a pack for this model: `axisguard adapt BUNDLE --target MODEL --out PACK`",
            )
        if architecture and self.model.architecture and architecture != self.model.architecture:
            raise MismatchError(
                f"pack was built for a {self.model.architecture} model, but the model is a {architecture}",
                "build a pack for this model: `axisguard adapt BUNDLE --target MODEL --out PACK`",
            )

    def save(self, path: str | Path) -> Path:
        tensors = {
            "vectors": self.vectors,
            "anchor_mean": self.anchor_mean,
            "score_offset": self.score_offset,
            "score_scale": self.score_scale,
            "pos_mean_z": self.pos_mean_z,
            "neg_mean_z": self.neg_mean_z,
            "axis_anchor_mean": self.axis_anchor_mean,
        }
        meta = {
            "version": self.version,
            "pack_format": PACK_FORMAT,
            "axis_layers": self.layers_by_axis,
            "model": asdict(self.model),
            "axes": [a.to_json() for a in self.axes],
            "method": self.method,
            "anchors_sha256": self.anchors_sha256,
            "bundle_sha256": self.bundle_sha256,
            "sources": self.sources,
            "diagnostics": self.diagnostics,
            "score_definition": "z = (cos(h - anchor_mean, v) - score_offset) / score_scale",
        }
        return write_folder(path, KIND, meta, {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})

    @classmethod
    def load(cls, path: str | Path) -> AxisPack:
        meta, t = read_folder(path, KIND)
        with manifest_fields(path):
            pack = cls(
                model=ModelInfo(**meta["model"]),
                axes=[AxisSpec.from_json(a) for a in meta["axes"]],
                vectors=t["vectors"],
                anchor_mean=t["anchor_mean"],
                score_offset=t["score_offset"],
                score_scale=t["score_scale"],
                pos_mean_z=t["pos_mean_z"],
                neg_mean_z=t["neg_mean_z"],
                method=meta["method"],
                anchors_sha256=meta["anchors_sha256"],
                bundle_sha256=meta.get("bundle_sha256", ""),
                sources=meta.get("sources", []),
                diagnostics=meta.get("diagnostics", {}),
                version=meta["version"],
                axis_layers=meta.get("axis_layers"),  # absent in format 1
                axis_anchor_mean=t.get("axis_anchor_mean"),
            )
            if int(meta.get("pack_format", 1)) > PACK_FORMAT:
                raise MismatchError(f"{path}: axis pack format {meta['pack_format']} is newer than this axisguard "
                                    f"reads (up to {PACK_FORMAT})", "upgrade axisguard, or re-create the pack here")
            k, d = pack.vectors.shape
            assert pack.axis_anchor_mean is not None  # set in __post_init__
            if pack.anchor_mean.shape != (d,) or any(
                getattr(pack, n).shape != (k,) for n in ("score_offset", "score_scale", "pos_mean_z", "neg_mean_z")
            ) or len(pack.axes) != k or len(pack.layers_by_axis) != k or pack.axis_anchor_mean.shape != (k, d):
                raise MismatchError(f"{path}: inconsistent tensor shapes in axis pack", "re-create it with `axisguard adapt`")
            return pack
