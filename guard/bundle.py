"""Canonical bundle: behaviour axes in anchor coordinate space, calibrated once on source models.

A bundle is model-free: its axes live in R^N (N = number of anchors), so any model that has run
the same anchors can reconstruct them (see ``guard.pack`` and ``guard.reconstruction``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guard import __version__
from guard.axes import AxisSpec
from guard.model_info import ModelInfo
from guard.tensor_folder import manifest_fields, read_folder, write_folder

KIND = "canonical_bundle"


@dataclass
class CanonicalBundle:
    """Canonical axes ``acs_axes`` [K, N] (unit rows) plus what is needed to use them label-free.

    ``probe_coef``/``probe_intercept`` [K, N]/[K]: one binary logistic probe per axis on ACS point
    coordinates (the paper's detector); ``multiclass_coef``/``multiclass_intercept``: the K-way
    probe on positives. ``anchor_kernels`` [S, N, N]: each source's anchor Gram matrix at its layer,
    used to pick a target's layer from its anchors alone. ``pos_mean_z``/``neg_mean_z`` [K]: mean
    z-score (see ``guard.scoring``) of calibration positives/negatives, averaged over sources —
    label-free priors for thresholds and clamp targets on a new model.

    Per-axis layers (optional): ``axis_source_layers[k][s]`` is the layer source s reads axis k at
    (then ``acs_axes[k]`` and the priors of axis k come from those layers) and
    ``axis_anchor_kernels`` [K, S, N, N] the sources' anchor kernels there, so that ``adapt`` can
    pick each axis' target layer from the target's anchors alone (``probes.axis_layers``).
    """

    axes: list[AxisSpec]
    acs_axes: np.ndarray
    anchors_sha256: str
    anchor_count: int
    sources: list[ModelInfo]
    method: str = "mean_normalised_projected_diffmeans"
    probe_coef: np.ndarray | None = None
    probe_intercept: np.ndarray | None = None
    multiclass_coef: np.ndarray | None = None
    multiclass_intercept: np.ndarray | None = None
    anchor_kernels: np.ndarray | None = None
    pos_mean_z: np.ndarray | None = None
    neg_mean_z: np.ndarray | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    axis_source_layers: list[list[int]] | None = None
    axis_anchor_kernels: np.ndarray | None = None
    # The catalogue's calibration_sha256 ("" for bundles written before it was recorded): tells a bundle
    # from one calibrated on other pairs that share the anchors.
    catalogue_sha256: str = ""

    @property
    def axis_names(self) -> list[str]:
        return [a.name for a in self.axes]

    def save(self, path: str | Path) -> Path:
        tensors = {"acs_axes": self.acs_axes.astype(np.float32)}
        for name in ("probe_coef", "probe_intercept", "multiclass_coef", "multiclass_intercept",
                     "anchor_kernels", "pos_mean_z", "neg_mean_z", "axis_anchor_kernels"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = np.asarray(value, dtype=np.float32)
        meta = {
            "version": self.version,
            "method": self.method,
            "axes": [a.to_json() for a in self.axes],
            "anchors_sha256": self.anchors_sha256,
            "anchor_count": self.anchor_count,
            "sources": [asdict(s) for s in self.sources],
            "diagnostics": self.diagnostics,
        }
        if self.axis_source_layers is not None:
            meta["axis_source_layers"] = self.axis_source_layers
        if self.catalogue_sha256:
            meta["catalogue_sha256"] = self.catalogue_sha256
        return write_folder(path, KIND, meta, tensors)

    @classmethod
    def load(cls, path: str | Path) -> CanonicalBundle:
        meta, tensors = read_folder(path, KIND)
        with manifest_fields(path):
            return cls(
                axes=[AxisSpec.from_json(a) for a in meta["axes"]],
                acs_axes=tensors["acs_axes"],
                anchors_sha256=meta["anchors_sha256"],
                anchor_count=int(meta["anchor_count"]),
                sources=[ModelInfo(**s) for s in meta["sources"]],
                method=meta["method"],
                probe_coef=tensors.get("probe_coef"),
                probe_intercept=tensors.get("probe_intercept"),
                multiclass_coef=tensors.get("multiclass_coef"),
                multiclass_intercept=tensors.get("multiclass_intercept"),
                anchor_kernels=tensors.get("anchor_kernels"),
                pos_mean_z=tensors.get("pos_mean_z"),
                neg_mean_z=tensors.get("neg_mean_z"),
                diagnostics=meta.get("diagnostics", {}),
                version=meta["version"],
                axis_source_layers=meta.get("axis_source_layers"),
                axis_anchor_kernels=tensors.get("axis_anchor_kernels"),
                catalogue_sha256=meta.get("catalogue_sha256", ""),
            )
