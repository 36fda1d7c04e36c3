"""Refusal-axis variants tried on the external DEV split and dropped (issue #9; bench/results/external/README.md).

Each variant changes one ingredient of the shipped label-free axis (sources' difference of means on
the catalogue's refusal pairs, projected to anchor coordinates, averaged over the two source
families, ridge-reconstructed from the held-out target's anchors, read at 1/4 depth, scored as a
cosine) and reports AUROC of public harmful requests against our look-alikes and everyday traffic,
leave-one-family-out:

* ``estimators``: the sources' direction from the mean of unit paired differences, the median
  paired difference, shrunk LDA, or the difference of means with the pairs' shared topic
  directions (top principal components of the pair midpoints) projected out;
* ``scores``: plain dot product, cosine in anchor-standardised space, cosine with the norm taken
  without the 8 highest-variance dimensions;
* ``paper``: the paper's public refusal pairs (``--acs-data``) instead of, or pooled with, ours;
* ``kinds``: no variant, a diagnosis: the shipped axis per kind of look-alike (mean z, AUROC of the
  harmful requests against that kind), which told the catalogue's third round what to write;
* ``pooling``: the prompt read as the mean over its tokens instead of at its last token;
* ``combined``: fixed, label-free sums and maxima of the refusal z with one or two other reconstructed
  axes (each at its own per-axis layer), every combination, so the search itself is on record;
* ``positions``: the prompt read at the last token of the user's text (before the chat template's
  closing tokens, where harmfulness rather than refusal is said to be encoded) instead of the last
  template token, each at 1/4 and 1/2 depth and as the mean of the two depths' z-scores;
* ``self_refusal``: no axis, the model's own behaviour: teacher-forced log-probability that its answer
  opens with a refusal (``REFUSAL_OPENINGS``), and that minus the log-probability of compliant openings.

    python -m scripts.refusal_variants estimators [--split dev]
    python -m scripts.refusal_variants paper --acs-data ../shared/acs-data
    python -m scripts.refusal_variants self_refusal --models qwen2.5-0.5b
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch

from guard.anchor_space import AnchorSpace, unit_rows
from guard.canonical import canonical_axes
from guard.reconstruction import reconstruct
from guard.scoring import AnchorZScorer, centred_cosines
from integrations.activation_cache import ActivationCache
from integrations.activation_collection import collect_activations
from integrations.hf_extraction import extract_activations
from integrations.hf_loading import LoadedModel, encode_prompts, format_prompt, left_pad, load_model
from probes.activations import ModelActivations
from probes.axis_layers import nearest_layer
from probes.catalogue import Catalogue, load_catalogue
from probes.external_data import SPLITS, lookalikes
from probes.external_eval import axis_scorers
from probes.operating_points import auroc
from scripts.external_validity import MODELS, external_activations, scored_sets

AXIS, DEPTH = "refusal", 0.25
REFUSAL_OPENINGS = ("I'm sorry", "I cannot", "I can't", "Sorry")
COMPLIANT_OPENINGS = ("Sure", "Certainly", "Here")
Direction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (pos [n, d], neg [n, d]) -> direction [d]


def _shrunk_inverse_times(x: np.ndarray, d: np.ndarray, shrink: float) -> np.ndarray:
    cov = x.T @ x / len(x)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return np.linalg.solve(cov, d)


def _topic_out(k: int) -> Direction:
    def direction(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
        d = pos.mean(0) - neg.mean(0)
        mid = (pos + neg) / 2
        top = np.linalg.svd(mid - mid.mean(0), full_matrices=False)[2][:k]
        return d - top.T @ (top @ d)
    return direction


ESTIMATORS: dict[str, Direction] = {
    "diff_of_means (shipped)": lambda p, n: p.mean(0) - n.mean(0),
    "mean_unit_pair_diffs": lambda p, n: ((p - n) / np.linalg.norm(p - n, axis=1, keepdims=True)).mean(0),
    "median_pair_diff": lambda p, n: np.median(p - n, axis=0),
    "lda_shrink_0.9": lambda p, n: _shrunk_inverse_times(np.concatenate([p - p.mean(0), n - n.mean(0)]),
                                                         p.mean(0) - n.mean(0), 0.9),
    "topic_out_3": _topic_out(3),
}


def _score_functions(anchors: np.ndarray) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    mean, sd = anchors.mean(0), anchors.std(0) + 1e-6
    keep = np.argsort(sd)[:-8]
    return {
        "cosine (shipped)": lambda x, v: centred_cosines(x, mean, v[None])[:, 0],
        "dot": lambda x, v: (x - mean) @ v,
        "standardised_cosine": lambda x, v: (x - mean) @ v / np.linalg.norm((x - mean) / sd, axis=1),
        "cosine_without_top8_var": lambda x, v: (x - mean) @ v / np.linalg.norm((x - mean)[:, keep], axis=1),
    }


def _layer(acts: ModelActivations) -> int:
    return nearest_layer(acts.layers, acts.info.num_layers, DEPTH)


def _reconstructed(target: ModelActivations, sources: list[ModelActivations],
                   directions: dict[str, np.ndarray]) -> np.ndarray:
    """The canonical axis of the sources' native ``directions`` {model: [d]}, rebuilt in the target."""
    projected = [AnchorSpace().fit(s.anchors[_layer(s)].astype(np.float64)).project_direction(
        unit_rows(directions[s.info.name][None])) for s in sources]
    space = AnchorSpace().fit(target.anchors[_layer(target)].astype(np.float64))
    return reconstruct(space, canonical_axes(projected).axes, "ridge").vectors[0]


def by_kind(prompts, layer: int, target: ModelActivations, vector: np.ndarray, split: str) -> None:
    """Per kind of look-alike: mean z and AUROC of the harmful requests against that kind (printed)."""
    scorer = AnchorZScorer(vector[None]).fit(target.anchors[layer].astype(np.float64))
    z = {side: scorer.transform(getattr(prompts, side)[layer])[:, 0] for side in ("pos", "neg")}
    kind_of = {row["text"]: row["kind"] for row in lookalikes(split)}
    negatives = [kind_of.get(t, "?") for t in next(s for s in scored_sets(split) if s.name == prompts.name).negative]
    click.echo(f"{target.info.name:>13} L{layer:<3} harmful requests: mean z {z['pos'].mean():+.2f}")
    for kind in sorted(set(negatives), key=lambda k: -float(np.mean(z["neg"][np.array(negatives) == k]))):
        these = z["neg"][np.array(negatives) == kind]
        click.echo(f"{'':>18} {kind:<14} n={len(these):<3} mean z {these.mean():+.2f}  AUROC vs harmful {auroc(z['pos'], these):.3f}")


def _pooling(acts: list[ModelActivations], catalogue: Catalogue, split: str) -> None:
    """Shipped axis with every prompt (anchors, pairs, external) read at its last token vs as its token mean."""
    pairs = catalogue.calibration[AXIS]
    texts = catalogue.anchors + [p.positive for p in pairs] + [p.negative for p in pairs]
    n, m = len(catalogue.anchors), len(pairs)
    sets = [s for s in scored_sets(split) if s.axis == AXIS]
    for pooling in ("last", "mean"):
        pooled = []
        for a in acts:
            layer = _layer(a)
            got = extract_activations(load_model(a.info.name), texts, [layer], pooling=pooling,
                                      cache=ActivationCache())[layer].astype(np.float64)
            pooled.append(ModelActivations(info=a.info, anchors={layer: got[:n]},
                                           pos={AXIS: {layer: got[n:n + m]}}, neg={AXIS: {layer: got[n + m:]}}))
        for i, target in enumerate(pooled):
            layer = _layer(target)
            vector = _reconstructed(target, pooled[:i] + pooled[i + 1:],
                                    {s.info.name: s.pos[AXIS][_layer(s)].mean(0) - s.neg[AXIS][_layer(s)].mean(0)
                                     for s in pooled})
            cosine = _score_functions(target.anchors[layer])["cosine (shipped)"]
            cells = [f"{s.name} {auroc(cosine(s.pos[layer].astype(np.float64), vector), cosine(s.neg[layer].astype(np.float64), vector)):.3f}"
                     for s in external_activations(target.info.name, sets, [layer], pooling)]
            click.echo(f"{target.info.name:>13} L{layer:<3} pooling {pooling:<6} " + "  ".join(cells))


def _user_text_end(loaded: LoadedModel, texts: list[str]) -> list[str]:
    """The exact strings the model reads, cut after the user's text: by causality the last token of
    the cut string has the hidden state that token has inside the whole templated prompt."""
    tokenizer, sentinel = loaded.tokenizer, "\x00"
    whole = format_prompt(tokenizer, sentinel, loaded.use_chat_template)
    suffix = whole[whole.index(sentinel) + 1:]
    cut = [format_prompt(tokenizer, t, loaded.use_chat_template)[:-len(suffix) or None] for t in texts]
    bos = tokenizer.bos_token
    if bos and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]:
        # a template that writes <bos> as text would get a second one from the untemplated extraction
        cut = [c[len(bos):] if c.startswith(bos) else c for c in cut]
    return cut


def _positions(acts: list[ModelActivations], catalogue: Catalogue, split: str) -> None:
    """Shipped axis (last template token) vs the last token of the user's text, at 1/4 and 1/2 depth."""
    pairs = catalogue.calibration[AXIS]
    look, traffic = (next(s for s in scored_sets(split) if s.name == f"refusal_vs_{kind}_{split}")
                     for kind in ("lookalike", "traffic"))
    texts = (catalogue.anchors + [p.positive for p in pairs] + [p.negative for p in pairs]
             + look.positive + look.negative + traffic.negative)
    cuts = np.cumsum([len(catalogue.anchors), len(pairs), len(pairs), len(look.positive), len(look.negative)])
    for user_text_end in (False, True):
        parts = []  # per model: {depth: [anchors, pair positives, pair negatives, harmful, look-alikes, traffic]}
        for a in acts:
            loaded = load_model(a.info.name)
            at = {d: nearest_layer(a.layers, a.info.num_layers, d) for d in (0.25, 0.5)}
            got = extract_activations(loaded, _user_text_end(loaded, texts) if user_text_end else texts, list(at.values()),
                                      use_chat_template=False if user_text_end else None, cache=ActivationCache(), progress=False)
            parts.append({d: np.split(got[layer].astype(np.float64), cuts) for d, layer in at.items()})
        for i, target in enumerate(acts):
            cells, zs = [], []
            for depth in (0.25, 0.5):
                projected = [AnchorSpace().fit(p[depth][0]).project_direction(unit_rows((p[depth][1].mean(0) - p[depth][2].mean(0))[None]))
                             for j, p in enumerate(parts) if j != i]
                anchors = parts[i][depth][0]
                vector = reconstruct(AnchorSpace().fit(anchors), canonical_axes(projected).axes, "ridge").vectors[0]
                harmful, lookalike, everyday = (AnchorZScorer(vector[None]).fit(anchors).transform(x)[:, 0] for x in parts[i][depth][3:])
                zs.append((harmful, lookalike, everyday))
                cells.append(f"depth {depth} {auroc(harmful, lookalike):.3f}/{auroc(harmful, everyday):.3f}")
            harmful, lookalike, everyday = (np.mean(z, axis=0) for z in zip(*zs, strict=True))
            cells.append(f"mean of both {auroc(harmful, lookalike):.3f}/{auroc(harmful, everyday):.3f}")
            where = "end of user text" if user_text_end else "last token"
            click.echo(f"{target.info.name:>13} {where:<16} vs look-alikes/traffic: " + "   ".join(cells))


def _combined(acts: list[ModelActivations], catalogue: Catalogue, split: str) -> None:
    """Refusal z summed with (or maxed over) one or two other reconstructed axes, every combination."""
    look, traffic = (next(s for s in scored_sets(split) if s.name == f"refusal_vs_{kind}_{split}")
                     for kind in ("lookalike", "traffic"))
    texts = look.positive + look.negative + traffic.negative
    n1, n2 = len(look.positive), len(look.positive) + len(look.negative)
    z: dict[str, dict[str, np.ndarray]] = {}
    for i, target in enumerate(acts):
        scorers, _ = axis_scorers(target, acts[:i] + acts[i + 1:], catalogue.axis_specs(), catalogue.anchors_sha256)
        ext = extract_activations(load_model(target.info.name), texts, target.layers, cache=ActivationCache(), progress=False)
        z[target.info.name] = {axis: by["per_axis/reconstructed"](target, ext) for axis, by in scorers.items()}
    others = [a for a in catalogue.axis_names if a != AXIS]
    rows = []
    for extra in [()] + [c for k in (1, 2) for c in itertools.combinations(others, k)]:
        for how, reduce in (("sum", np.sum), ("max", np.max)):
            if not extra and how == "max":
                continue
            cells = [(auroc(v[:n1], v[n1:n2]), auroc(v[:n1], v[n2:]))
                     for v in (reduce([zs[a] for a in (AXIS, *extra)], axis=0) for zs in z.values())]
            rows.append((float(np.mean([c[0] for c in cells])), f"{how} {'+'.join((AXIS, *extra))}", cells))
    click.echo(f"{len(rows)} combinations; per model: AUROC vs look-alikes / vs everyday traffic ({', '.join(z)})")
    for mean_look, name, cells in sorted(rows, reverse=True):
        click.echo(f"{name:<48} mean vs look-alikes {mean_look:.3f}   " + "  ".join(f"{a:.3f}/{b:.3f}" for a, b in cells))


def _opening_logprob(loaded: LoadedModel, prompts: list[str], opening: str, batch: int = 16) -> np.ndarray:
    """log P(the answer starts with ``opening`` | prompt), teacher-forced, under the model's chat template."""
    tokenizer = loaded.tokenizer
    tail = tokenizer(opening, add_special_tokens=False)["input_ids"]
    rows = [ids + tail for ids in encode_prompts(tokenizer, prompts, loaded.use_chat_template)]
    out = np.empty(len(rows))
    for start in range(0, len(rows), batch):
        ids, mask = left_pad(rows[start:start + batch], tokenizer.pad_token_id)
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        with torch.inference_mode():  # only the logits that predict the opening's tokens
            logits = loaded.model(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                                  position_ids=positions.to(loaded.device), logits_to_keep=len(tail) + 1).logits[:, :-1]
        picked = logits.float().log_softmax(-1).gather(-1, ids[:, -len(tail):, None].to(loaded.device))
        out[start:start + len(ids)] = picked[..., 0].sum(dim=1).cpu().numpy()
    return out


def _self_refusal(models: list[str], split: str) -> None:
    sets = [s for s in scored_sets(split) if s.axis == AXIS]
    texts = list(dict.fromkeys(p for s in sets for p in s.positive + s.negative))  # the harmful side is shared
    where = {t: i for i, t in enumerate(texts)}
    for name in models:
        loaded = load_model(name)
        refuse_all = np.logaddexp.reduce([_opening_logprob(loaded, texts, o) for o in REFUSAL_OPENINGS], axis=0)
        comply_all = np.logaddexp.reduce([_opening_logprob(loaded, texts, o) for o in COMPLIANT_OPENINGS], axis=0)
        cells = []
        for s in sets:
            idx = [where[t] for t in s.positive + s.negative]
            refuse, comply, k = refuse_all[idx], comply_all[idx], len(s.positive)
            cells.append(f"{s.name}: log P(refusal) {auroc(refuse[:k], refuse[k:]):.3f}, minus compliant "
                         f"{auroc((refuse - comply)[:k], (refuse - comply)[k:]):.3f}, mean P(refusal) "
                         f"{np.exp(refuse[:k]).mean():.1e} vs {np.exp(refuse[k:]).mean():.1e}")
        click.echo(f"{name:>13} " + "\n              ".join(cells))


@click.command()
@click.argument("variant", type=click.Choice(["estimators", "scores", "paper", "kinds", "pooling", "combined", "positions",
                                                  "self_refusal"]))
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True)
@click.option("--models", default=MODELS, show_default=True)
@click.option("--acs-data", default="../shared/acs-data", show_default=True, help="the paper's data (variant paper)")
def main(variant: str, split: str, models: str, acs_data: str) -> None:
    if variant == "self_refusal":  # the model's behaviour: no catalogue, no axis
        _self_refusal(models.split(","), split)
        return
    catalogue = load_catalogue()
    acts = [collect_activations(m, catalogue) for m in models.split(",")]
    if variant in ("pooling", "combined", "positions"):
        {"pooling": _pooling, "combined": _combined, "positions": _positions}[variant](acts, catalogue, split)
        return
    sets = [s for s in scored_sets(split) if s.axis == AXIS]
    ours = {a.info.name: (a.pos[AXIS][_layer(a)].astype(np.float64), a.neg[AXIS][_layer(a)].astype(np.float64))
            for a in acts}
    paper: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if variant == "paper":
        rows = [json.loads(line) for line in Path(acs_data, "axes", f"{AXIS}_anchor.jsonl").read_text().splitlines() if line]
        texts = [r["positive"] for r in rows] + [r["negative"] for r in rows]
        for a in acts:
            got = extract_activations(load_model(a.info.name), texts, [_layer(a)], cache=ActivationCache())[_layer(a)]
            paper[a.info.name] = (got[:len(rows)].astype(np.float64), got[len(rows):].astype(np.float64))
    for i, target in enumerate(acts):
        sources, layer = acts[:i] + acts[i + 1:], _layer(target)
        ext = {s.name: s for s in external_activations(target.info.name, sets, [layer])}
        variants: dict[str, tuple[np.ndarray, Callable]] = {}
        cosine = _score_functions(target.anchors[layer].astype(np.float64))["cosine (shipped)"]
        if variant == "kinds":
            by_kind(ext[f"refusal_vs_lookalike_{split}"], layer, target,
                     _reconstructed(target, sources, {s: p.mean(0) - n.mean(0) for s, (p, n) in ours.items()}), split)
            continue
        if variant == "estimators":
            for name, fn in ESTIMATORS.items():
                variants[name] = (_reconstructed(target, sources, {s: fn(*ours[s]) for s in ours}), cosine)
        elif variant == "scores":
            shipped = _reconstructed(target, sources, {s: p.mean(0) - n.mean(0) for s, (p, n) in ours.items()})
            for name, fn in _score_functions(target.anchors[layer].astype(np.float64)).items():
                variants[name] = (shipped, fn)
        else:
            def pooled(s: str) -> np.ndarray:
                return (np.concatenate([ours[s][0], paper[s][0]]).mean(0)
                        - np.concatenate([ours[s][1], paper[s][1]]).mean(0))
            for name, fn in (("ours (shipped)", lambda s: ours[s][0].mean(0) - ours[s][1].mean(0)),
                             ("paper", lambda s: paper[s][0].mean(0) - paper[s][1].mean(0)), ("pooled", pooled)):
                variants[name] = (_reconstructed(target, sources, {s: fn(s) for s in ours}), cosine)
        for name, (vector, score) in variants.items():
            cells = [f"{s.name} {auroc(score(s.pos[layer].astype(np.float64), vector), score(s.neg[layer].astype(np.float64), vector)):.3f}"
                     for s in ext.values()]
            click.echo(f"{target.info.name:>13} L{layer:<3} {name:<26} " + "  ".join(cells))


if __name__ == "__main__":
    main()
