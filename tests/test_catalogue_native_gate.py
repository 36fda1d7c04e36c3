"""The catalogue's native gate, recomputed on a real model (issue #3).

SmolLM2-135M reads the built-in catalogue at the layer `make report` recorded for it as a
calibration source; the native diff-of-means direction from the 100 calibration pairs must separate
the 50 test pairs of two axes at AUROC >= 0.90, and the numbers must match the committed report (so
the report is reproducible from the committed data, and a data edit without `make report` fails).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from probes.catalogue import load_catalogue
from probes.directions import native_direction

GATES = Path(__file__).resolve().parents[1] / "bench" / "results" / "catalogue_lofo" / "gates.json"
MODEL = "smollm2-135m"
AXES = ("sycophancy", "toxicity")
GATE = 0.90


@pytest.mark.slow
@pytest.mark.parametrize("axis", AXES)
def test_native_auroc_of_the_test_split_passes_the_gate_on_smollm2(axis: str):
    from integrations.hf_extraction import extract_activations
    from integrations.hf_loading import load_model
    from integrations.model_pull import pull

    report = json.loads(GATES.read_text())
    layer = report["native_layers"][MODEL]
    catalogue = load_catalogue()
    calibration, test = catalogue.calibration[axis], catalogue.test[axis]
    prompts = (list(catalogue.anchors) + [p.positive for p in calibration] + [p.negative for p in calibration]
               + [p.positive for p in test] + [p.negative for p in test])
    pull(MODEL, quiet=True)
    acts = extract_activations(load_model(MODEL, pull_missing=False), prompts, [layer], progress=False)[layer]
    n_anchor, n_cal, n_test = len(catalogue.anchors), len(calibration), len(test)
    anchors, acts = acts[:n_anchor], acts[n_anchor:]
    pos, neg = acts[:n_cal], acts[n_cal : 2 * n_cal]
    test_pos, test_neg = acts[2 * n_cal : 2 * n_cal + n_test], acts[2 * n_cal + n_test :]

    direction = native_direction(pos, neg)
    centre = anchors.mean(axis=0)
    scores = np.r_[(test_pos - centre) @ direction, (test_neg - centre) @ direction]
    auroc = roc_auc_score(np.r_[np.ones(n_test), np.zeros(n_test)], scores)

    assert auroc >= GATE, f"{axis} native AUROC {auroc:.3f} on {MODEL} layer {layer} is below the {GATE} gate"
    assert auroc == pytest.approx(report["native_auroc"][MODEL][axis], abs=0.01), "rerun `make report`"
