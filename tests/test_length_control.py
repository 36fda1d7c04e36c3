"""Length-matched AUROC (probes/length_control.py): pairs are 1:1 and within the caliper, length alone
scores about chance after matching, and a real signal survives it."""

from __future__ import annotations

import numpy as np

from probes.length_control import CALIPER, length_matched, length_only, matched_by_length


def _lengths(rng, n: int, median: float) -> np.ndarray:
    return np.maximum(3, np.round(np.exp(rng.normal(np.log(median), 0.5, n)))).astype(int)


def test_matching_is_one_to_one_and_within_the_caliper():
    rng = np.random.default_rng(0)
    lp, ln = _lengths(rng, 200, 40), _lengths(rng, 120, 25)
    ip, jn = matched_by_length(lp, ln)
    assert 20 < len(ip) <= 120
    assert len(set(ip.tolist())) == len(ip) and len(set(jn.tolist())) == len(jn)
    assert np.all(np.abs(np.log(lp[ip]) - np.log(ln[jn])) <= CALIPER + 1e-12)
    # nothing left unmatched that could still be matched within the caliper
    free_p, free_n = np.setdiff1d(np.arange(len(lp)), ip), np.setdiff1d(np.arange(len(ln)), jn)
    assert not np.any(np.abs(np.log(lp[free_p])[:, None] - np.log(ln[free_n])[None, :]) <= CALIPER)


def test_a_score_that_is_only_length_drops_to_chance_and_a_real_signal_stays():
    rng = np.random.default_rng(1)
    lp, ln = _lengths(rng, 300, 40), _lengths(rng, 300, 25)
    assert length_only(lp, ln) > 0.7  # the confound, as in the external sets
    only_length = length_matched(np.log(lp) + rng.normal(0, 0.05, 300), np.log(ln) + rng.normal(0, 0.05, 300), lp, ln)
    assert abs(only_length["length_auroc"] - 0.5) < 0.1
    assert abs(only_length["auroc"] - 0.5) < 0.12
    signal = length_matched(rng.normal(1.5, 1, 300), rng.normal(0, 1, 300), lp, ln)
    assert signal["auroc"] > 0.8 and signal["n_pairs"] == only_length["n_pairs"]


def test_no_overlap_in_length_gives_no_pairs():
    got = length_matched(np.ones(5), np.zeros(5), np.full(5, 100), np.full(5, 10))
    assert got == {"auroc": None, "n_pairs": 0, "length_auroc": None}


def test_external_cells_carry_the_length_matched_auroc():
    """``probes.external_eval.score_set`` adds the matched AUROC when the set knows its token counts:
    a direction that only reads length scores high raw and about chance matched."""
    from guard.model_info import ModelInfo
    from probes.activations import ModelActivations
    from probes.external_eval import PromptSet, Scorer, score_set

    rng = np.random.default_rng(2)
    d = 16
    target = ModelActivations(ModelInfo("toy", "llama", d, 2), anchors={0: rng.normal(size=(300, d))})
    lp, ln = _lengths(rng, 200, 40), _lengths(rng, 200, 25)

    def acts(lengths):  # dimension 0 carries log length, nothing else differs
        x = rng.normal(size=(len(lengths), d))
        x[:, 0] += 4.0 * (np.log(lengths) - np.log(30))
        return {0: x}

    length_axis = Scorer("native", [0], [np.eye(d)[0]])
    row = score_set(length_axis, target, PromptSet("toy", "refusal", acts(lp), acts(ln), lp, ln), with_points=False)
    assert row["auroc"] > 0.65 and abs(row["length_matched"]["auroc"] - 0.5) < 0.12
    assert "length_matched" not in score_set(length_axis, target, PromptSet("toy", "refusal", acts(lp), acts(ln)), False)
