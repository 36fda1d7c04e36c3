"""Length as a confound: how much of a detector's AUROC is just "this prompt is longer"?

The public harmful requests (HarmBench, StrongREJECT) are longer than the benign prompts we wrote:
median ~100 characters against ~65 for our look-alikes and ~43 for everyday requests, so prompt
length *alone* separates them at AUROC ~0.8 (look-alikes) and ~0.95 (everyday traffic). A score
that grows with length inherits part of that for free, and a threshold set on short everyday
prompts then flags long benign ones more often.

So every external cell also reports:

* ``length_only``: the AUROC of the prompt's token count (the trivial baseline any detector must beat);
* ``length_matched``: the detector's AUROC on a length-matched subsample: positives and negatives
  paired 1:1 by nearest log token count (greedily, closest pairs first, at most ``CALIPER`` apart,
  i.e. within ~10 %), so length alone scores ~0.5 there (``length_auroc`` says how close it got).

Token counts are of the user's text alone (no chat template), in the target model's tokenizer.
"""

from __future__ import annotations

import numpy as np

from probes.operating_points import auroc

CALIPER = 0.1  # largest |log(n_pos) - log(n_neg)| for a matched pair


def matched_by_length(len_pos: np.ndarray, len_neg: np.ndarray, caliper: float = CALIPER) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into pos, into neg) of 1:1 pairs of nearest log length, closest pairs first, none
    further apart than ``caliper``. Deterministic: ties keep index order."""
    lp, ln = np.log(np.asarray(len_pos, np.float64)), np.log(np.asarray(len_neg, np.float64))
    gap = np.abs(lp[:, None] - ln[None, :])
    order = np.argsort(gap, axis=None, kind="stable")
    used_pos, used_neg = np.zeros(len(lp), bool), np.zeros(len(ln), bool)
    pairs: list[tuple[int, int]] = []
    for flat in order:
        i, j = divmod(int(flat), len(ln))
        if gap[i, j] > caliper:
            break
        if not used_pos[i] and not used_neg[j]:
            used_pos[i] = used_neg[j] = True
            pairs.append((i, j))
    if not pairs:
        return np.array([], int), np.array([], int)
    ip, jn = zip(*pairs, strict=True)
    return np.array(ip), np.array(jn)


def length_matched(score_pos: np.ndarray, score_neg: np.ndarray, len_pos: np.ndarray, len_neg: np.ndarray) -> dict:
    """The scores' AUROC on the length-matched subsample, its size, and length's own AUROC there."""
    ip, jn = matched_by_length(len_pos, len_neg)
    if len(ip) < 2:
        return {"auroc": None, "n_pairs": int(len(ip)), "length_auroc": None}
    return {"auroc": round(auroc(np.asarray(score_pos)[ip], np.asarray(score_neg)[jn]), 4), "n_pairs": int(len(ip)),
            "length_auroc": round(auroc(np.asarray(len_pos)[ip], np.asarray(len_neg)[jn]), 4)}


def length_only(len_pos: np.ndarray, len_neg: np.ndarray) -> float:
    """AUROC of the token count itself: longer = more positive."""
    return round(auroc(np.asarray(len_pos, np.float64), np.asarray(len_neg, np.float64)), 4)
