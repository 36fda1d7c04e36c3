"""The loader on the paper's released data (../shared/acs-data beside the checkout), read through a path."""

from pathlib import Path

import pytest

from probes.catalogue import load_catalogue
from probes.splits import holdout_split

ACS_DATA = Path(__file__).resolve().parents[2] / "shared" / "acs-data"
pytestmark = pytest.mark.skipif(not ACS_DATA.is_dir(), reason=f"paper data not found at {ACS_DATA}")


def test_paper_layout_loads_with_axis_names_from_file_names():
    cat = load_catalogue(ACS_DATA)
    assert len(cat.anchors) == 300
    assert len(cat.calibration) == 10 and "refusal" in cat.calibration
    assert all(len(pairs) == 100 for pairs in cat.calibration.values())
    # the `axis` field carries a version suffix (refusal_v6); the file name wins
    assert {p.axis for p in cat.calibration["refusal"]} == {"refusal"}
    assert cat.test == {}


def test_seeded_holdout_is_deterministic_and_disjoint():
    cat = load_catalogue(ACS_DATA, ["math", "refusal"])
    a, b = holdout_split(cat, 0.3, 0), holdout_split(cat, 0.3, 0)
    for axis in ("math", "refusal"):
        assert [p.pair_id for p in a.test[axis]] == [p.pair_id for p in b.test[axis]]
        assert len(a.test[axis]) == 30 and len(a.calibration[axis]) == 70
        assert not {p.pair_id for p in a.test[axis]} & {p.pair_id for p in a.calibration[axis]}
    assert [p.pair_id for p in holdout_split(cat, 0.3, 1).test["math"]] != [p.pair_id for p in a.test["math"]]
