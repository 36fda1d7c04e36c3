"""Integrity of the built-in behaviour catalogue (probes/catalogue/), the loader's error messages,
the `axisguard catalogue` command and its export round trip.

The files are read as raw JSON here (not only through the loader, which is lenient by design) so that
schema slips in the built-in data are caught.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from axisguard_cli.main import cli
from guard.errors import AxisguardError
from probes.catalogue import BUILTIN_DIR, export_catalogue, load_catalogue

EXPECTED_AXES = (
    "refusal", "sycophancy", "toxicity", "jailbreak", "deception",
    "power_seeking", "self_preservation", "manipulation", "privacy", "hallucination",
)
PAIR_KEYS = {"axis", "pair_id", "positive", "negative", "pos_label", "neg_label"}
ANCHOR_KEYS = {"id", "text", "genre"}
CARD_KEYS = {"name", "title", "detects", "does_not_detect", "pos_label", "neg_label", "positive_means",
             "negative_means", "known_confounds", "pairs"}
SPLITS = {"anchor": range(0, 100), "test": range(100, 150)}  # file suffix -> the pair_ids it must hold
# Calibration splits grown beyond 100 pairs (issue #9: refusal got bare requests without a named victim,
# varied register and framing, then the look-alike kinds it confused; jailbreak got framings its first
# round lacked); the added pairs take ids after the test split's, so no test id moves.
CALIBRATION_SIZE = {"refusal": 469, "jailbreak": 180}
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
NEAR_DUPLICATE_JACCARD = 0.9
# Word count alone must not tell the sides apart (issue #3 gate: length-only AUROC <= 0.65, both ways).
LENGTH_AUROC_RANGE = (0.35, 0.65)

AXES_DIR = BUILTIN_DIR / "axes"
CARDS_DIR = BUILTIN_DIR / "cards"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def normalise(text: str) -> str:
    """Case, punctuation and spacing do not make two prompts different."""
    return " ".join(re.findall(r"\w+", text.lower()))


def axis_rows(axis: str, split: str) -> list[dict]:
    path = AXES_DIR / f"{axis}_{split}.jsonl"
    assert path.is_file(), f"missing {path}"
    return read_rows(path)


# --------------------------------------------------------------------------------------------- anchors


def anchor_rows() -> list[dict]:
    return read_rows(BUILTIN_DIR / "anchors.jsonl")


def test_anchor_lines_have_the_schema_and_sequential_ids():
    rows = anchor_rows()
    assert len(rows) == 300
    for number, row in enumerate(rows, start=1):
        assert set(row) == ANCHOR_KEYS, f"anchors.jsonl:{number}: keys {sorted(row)}"
        assert isinstance(row["text"], str) and row["text"].strip() == row["text"] != "", f"anchors.jsonl:{number}"
        assert SNAKE.match(row["genre"]), f"anchors.jsonl:{number}: genre {row['genre']!r}"
    # Anchors are ACS coordinates, indexed by position: ids follow that order, so none can go missing silently.
    assert [row["id"] for row in rows] == [f"a{i:03d}" for i in range(300)]


def test_anchors_cover_at_least_15_genres_in_balance():
    genres = Counter(row["genre"] for row in anchor_rows())
    assert len(genres) >= 15, genres
    assert min(genres.values()) >= 10, genres
    assert max(genres.values()) <= 25, genres


def test_anchors_vary_in_length():
    lengths = [len(row["text"].split()) for row in anchor_rows()]
    assert min(lengths) <= 4 and max(lengths) >= 40


def test_loader_reads_the_300_anchors_in_file_order():
    catalogue_anchors = load_catalogue().anchors
    assert catalogue_anchors == [row["text"] for row in anchor_rows()]


# ------------------------------------------------------------------------------------------- per axis


@pytest.mark.parametrize("axis", EXPECTED_AXES)
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_pair_lines_have_the_schema(axis: str, split: str):
    rows = axis_rows(axis, split)
    for number, row in enumerate(rows, start=1):
        where = f"{axis}_{split}.jsonl:{number}"
        assert set(row) == PAIR_KEYS, f"{where}: keys {sorted(row)}"
        assert row["axis"] == axis, where
        assert type(row["pair_id"]) is int, where
        for side in ("positive", "negative"):
            text = row[side]
            assert isinstance(text, str) and text.strip() == text != "", f"{where}: {side} empty or padded"
        for label in ("pos_label", "neg_label"):
            assert SNAKE.match(row[label]), f"{where}: {label} {row[label]!r} is not snake_case"


@pytest.mark.parametrize("axis", EXPECTED_AXES)
def test_pair_counts_and_ids_per_split(axis: str):
    for split, expected_ids in SPLITS.items():
        if split == "anchor":
            expected_ids = list(expected_ids) + list(range(150, 150 + CALIBRATION_SIZE.get(axis, 100) - 100))
        ids = [row["pair_id"] for row in axis_rows(axis, split)]
        assert ids == list(expected_ids), f"{axis}_{split}.jsonl: pair_ids must be {expected_ids}"


@pytest.mark.parametrize("axis", EXPECTED_AXES)
def test_labels_are_constant_and_distinct(axis: str):
    rows = axis_rows(axis, "anchor") + axis_rows(axis, "test")
    labels = {(row["pos_label"], row["neg_label"]) for row in rows}
    assert len(labels) == 1, f"{axis}: several label pairs {labels}"
    (pos, neg), = labels
    assert pos != neg


@pytest.mark.parametrize("axis", EXPECTED_AXES)
def test_no_pair_has_identical_sides(axis: str):
    for row in axis_rows(axis, "anchor") + axis_rows(axis, "test"):
        assert normalise(row["positive"]) != normalise(row["negative"]), f"{axis} pair {row['pair_id']}"


@pytest.mark.parametrize("axis", EXPECTED_AXES)
def test_axis_card_is_complete_and_matches_its_pairs(axis: str):
    path = CARDS_DIR / f"{axis}.json"
    assert path.is_file(), f"missing card {path}"
    card = json.loads(path.read_text(encoding="utf-8"))
    missing = CARD_KEYS - set(card)
    assert not missing, f"{path}: missing {sorted(missing)}"
    assert card["name"] == axis
    for key in CARD_KEYS - {"name", "known_confounds", "pairs"}:
        assert isinstance(card[key], str) and card[key].strip(), f"{path}: `{key}` must be a non-empty string"
    confounds = card["known_confounds"]
    assert isinstance(confounds, list) and confounds and all(isinstance(c, str) and c.strip() for c in confounds)
    row = axis_rows(axis, "anchor")[0]
    assert (card["pos_label"], card["neg_label"]) == (row["pos_label"], row["neg_label"])
    assert card["pairs"] == {"calibration": CALIBRATION_SIZE.get(axis, 100), "test": 50}


@pytest.mark.parametrize("axis", EXPECTED_AXES)
def test_word_count_does_not_separate_the_test_split(axis: str):
    rows = axis_rows(axis, "test")
    words = [len(row[side].split()) for side in ("positive", "negative") for row in rows]
    labels = [1] * len(rows) + [0] * len(rows)
    auroc = roc_auc_score(labels, words)
    low, high = LENGTH_AUROC_RANGE
    assert low <= auroc <= high, f"{axis}: word-count AUROC {auroc:.3f} outside [{low}, {high}]"


def test_builtin_catalogue_has_the_ten_axes():
    catalogue = load_catalogue()
    assert sorted(catalogue.axis_names) == sorted(EXPECTED_AXES)
    assert set(catalogue.test) == set(catalogue.cards) == set(EXPECTED_AXES)


# ------------------------------------------------------------------------ duplicates and near-duplicates


def all_prompts(root: Path = BUILTIN_DIR) -> list[tuple[str, str]]:
    """(owner, text) for every anchor and every pair side on disk; two sides of one pair share an owner."""
    anchors = read_rows(root / "anchors.jsonl")
    prompts = [(f"anchor {row.get('id', i)}", row["text"]) for i, row in enumerate(anchors)]
    for path in sorted((root / "axes").glob("*.jsonl")):
        axis = path.name.rsplit("_", 1)[0]
        for row in read_rows(path):
            owner = f"{axis} pair {row['pair_id']}"
            prompts += [(owner, row["positive"]), (owner, row["negative"])]
    return prompts


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def similar_pairs(texts: list[str], threshold: float) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose word sets (1-shingles) have Jaccard >= threshold.

    Prefix filtering keeps this fast without comparing all pairs: with words ordered rarest first, two
    sets that similar must share a word among the first ``|A| - ceil(threshold * |A|) + 1`` of each.
    """
    sets = [frozenset(normalise(text).split()) for text in texts]
    frequency = Counter(word for words in sets for word in words)
    postings: dict[str, list[int]] = defaultdict(list)
    found = []
    for j, words in enumerate(sets):
        ordered = sorted(words, key=lambda word: (frequency[word], word))
        candidates: set[int] = set()
        for word in ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]:
            candidates.update(postings[word])
            postings[word].append(j)
        found += [(i, j) for i in sorted(candidates) if jaccard(sets[i], words) >= threshold]
    return found


Finding = tuple[str, str, str, str]  # owner, text, other owner, other text


def duplicates(prompts: list[tuple[str, str]]) -> list[Finding]:
    seen: dict[str, tuple[str, str]] = {}
    found = []
    for owner, text in prompts:
        key = normalise(text)
        if key in seen and seen[key][0] != owner:
            found.append((*seen[key], owner, text))
        seen.setdefault(key, (owner, text))
    return found


def near_duplicates(prompts: list[tuple[str, str]]) -> list[Finding]:
    close = similar_pairs([text for _, text in prompts], NEAR_DUPLICATE_JACCARD)
    # Only prompts of different pairs: a matched pair's two sides are meant to be similar.
    return [(*prompts[i], *prompts[j]) for i, j in close if prompts[i][0] != prompts[j][0]]


def describe(found: list[Finding]) -> str:
    return "\n".join(f"  {a}: {ta!r}\n  {b}: {tb!r}" for a, ta, b, tb in found[:10]) + f"\n({len(found)} in all)"


def test_no_duplicate_prompts_anywhere():
    found = duplicates(all_prompts())
    assert not found, "duplicate prompts (after normalising case/punctuation):\n" + describe(found)


def test_no_near_duplicate_prompts_across_different_pairs():
    found = near_duplicates(all_prompts())
    assert not found, f"near-duplicate prompts (word-set Jaccard >= {NEAR_DUPLICATE_JACCARD}):\n" + describe(found)


def test_duplicate_checks_can_fail(tmp_path: Path):
    long_prompt = ("Write a short poem about the sea at night, when the harbour lights come on one by one "
                   "and the fishing boats return slowly with their nets full of silver fish")
    pairs = [
        {"pair_id": 0, "positive": long_prompt, "negative": long_prompt.replace("poem", "song")},  # same pair: fine
        {"pair_id": 1, "positive": long_prompt.replace("lights", "lamps"), "negative": "What is 17 times 23?"},
        {"pair_id": 2, "positive": "Tell me about octopuses.", "negative": "Tell me about squid."},
    ]
    root = write_data(tmp_path / "data", '{"text": "what is 17 TIMES 23"}\n',
                      "".join(json.dumps(pair) + "\n" for pair in pairs))
    prompts = all_prompts(root)
    assert [(a, b) for a, _, b, _ in duplicates(prompts)] == [("anchor 0", "demo pair 1")]
    near = {(a, b) for a, _, b, _ in near_duplicates(prompts)}
    # one word changed in 30 is caught, against both sides of pair 0; pair 0's own sides are not compared
    assert near == {("demo pair 0", "demo pair 1"), ("anchor 0", "demo pair 1")}


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9])
def test_prefix_filter_finds_what_comparing_all_pairs_finds(threshold: float):
    texts = [text for _, text in all_prompts()[:400]]  # the anchors and a hundred pair sides
    sets = [frozenset(normalise(text).split()) for text in texts]
    every_pair = [(i, j) for j in range(len(sets)) for i in range(j) if jaccard(sets[i], sets[j]) >= threshold]
    assert sorted(similar_pairs(texts, threshold)) == sorted(every_pair)


# ------------------------------------------------------------------------------ loader error messages


def write_data(root: Path, anchors: str, pairs: str, card: str | None = None) -> Path:
    (root / "axes").mkdir(parents=True)
    (root / "anchors.jsonl").write_text(anchors, encoding="utf-8")
    (root / "axes" / "demo_anchor.jsonl").write_text(pairs, encoding="utf-8")
    if card is not None:
        (root / "cards").mkdir()
        (root / "cards" / "demo.json").write_text(card, encoding="utf-8")
    return root


GOOD_ANCHORS = '{"text": "one"}\n{"text": "two"}\n'
GOOD_PAIRS = '{"pair_id": 0, "positive": "p", "negative": "n", "pos_label": "yes", "neg_label": "no"}\n'


@pytest.mark.parametrize(
    ("anchors", "pairs", "card", "expected"),
    [
        ('{"text": "one"}\n{"text": "two"\n', GOOD_PAIRS, None, "anchors.jsonl:2: not valid JSON"),
        ('{"text": "one"}\n\n{"txt": "two"}\n', GOOD_PAIRS, None, "anchors.jsonl:3: missing or empty `text`"),
        ('{"text": "   "}\n', GOOD_PAIRS, None, "anchors.jsonl:1: missing or empty `text`"),
        ("", GOOD_PAIRS, None, "has no anchors"),
        (GOOD_ANCHORS, GOOD_PAIRS + '{"positive": "p"}\n', None, "demo_anchor.jsonl:2: missing or empty `negative`"),
        (GOOD_ANCHORS, '["p", "n"]\n', None, "demo_anchor.jsonl:1: expected a JSON object"),
        (GOOD_ANCHORS, "\n\n", None, "demo_anchor.jsonl has no pairs"),
        (GOOD_ANCHORS, GOOD_PAIRS, '{"name": "demo",', "demo.json: not valid JSON"),
    ],
)
def test_loader_names_the_file_and_line(tmp_path: Path, anchors: str, pairs: str, card: str | None, expected: str):
    root = write_data(tmp_path / "data", anchors, pairs, card)
    with pytest.raises(AxisguardError) as caught:
        load_catalogue(root)
    assert expected in caught.value.message
    assert str(root) in caught.value.message
    assert caught.value.hint


def test_loader_reports_missing_pieces(tmp_path: Path):
    with pytest.raises(AxisguardError, match="does not exist"):
        load_catalogue(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AxisguardError, match="no anchors file"):
        load_catalogue(tmp_path / "empty")
    root = write_data(tmp_path / "data", GOOD_ANCHORS, GOOD_PAIRS)
    with pytest.raises(AxisguardError, match="unknown axis nope"):
        load_catalogue(root, axes=["nope"])
    (root / "axes" / "demo_anchor.jsonl").unlink()
    with pytest.raises(AxisguardError, match="no calibration pairs"):
        load_catalogue(root)


def test_cli_turns_bad_data_into_exit_code_2(tmp_path: Path):
    root = write_data(tmp_path / "data", '{"text": "one"}\nnot json\n', GOOD_PAIRS)
    result = CliRunner().invoke(cli, ["catalogue", "--data", str(root)])
    assert result.exit_code == 2
    assert "anchors.jsonl:2: not valid JSON" in result.stderr
    assert "hint:" in result.stderr


# ------------------------------------------------------------------------------------ CLI and export


def test_cli_lists_axes_as_json():
    result = CliRunner().invoke(cli, ["catalogue", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    catalogue = load_catalogue()
    assert summary["anchors"] == {"count": len(catalogue.anchors), "sha256": catalogue.anchors_sha256}
    assert summary["calibration_sha256"] == catalogue.calibration_sha256
    listed = {axis["name"]: axis for axis in summary["axes"]}
    assert sorted(listed) == sorted(catalogue.axis_names)
    for name, axis in listed.items():
        assert axis["calibration"] == len(catalogue.calibration[name])
        assert axis["test"] == len(catalogue.test.get(name, []))
        assert (axis["pos_label"], axis["neg_label"]) == (
            catalogue.calibration[name][0].pos_label, catalogue.calibration[name][0].neg_label)


def test_cli_lists_axes_as_a_table_for_another_directory(tmp_path: Path):
    root = write_data(tmp_path / "data", GOOD_ANCHORS, GOOD_PAIRS)
    result = CliRunner().invoke(cli, ["catalogue", "--data", str(root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "demo" in line)
    assert re.search(r"demo\W+yes\W+no\W+1\W+0\W", line), line
    assert "2 anchors" in result.stdout


def test_export_round_trip(tmp_path: Path):
    dest = tmp_path / "export"
    result = CliRunner().invoke(cli, ["catalogue", "export", str(dest)])
    assert result.exit_code == 0, result.output
    original, exported = load_catalogue(), load_catalogue(dest)
    assert exported.anchors == original.anchors
    assert exported.calibration == original.calibration
    assert exported.test == original.test
    assert exported.cards == original.cards
    # The paper's layout, with our anchor metadata (id, genre) kept.
    assert read_rows(dest / "anchors.jsonl") == anchor_rows()
    for axis in original.calibration:
        assert (dest / "axes" / f"{axis}_anchor.jsonl").is_file()


def test_calibration_digest_follows_what_a_bundle_is_built_from():
    catalogue = load_catalogue()
    digest = catalogue.calibration_sha256
    assert load_catalogue().calibration_sha256 == digest and len(digest) == 64
    pair = catalogue.calibration["refusal"][0]
    edited = replace(pair, negative=pair.negative + " Thanks.")
    changed_pair = replace(catalogue, calibration={**catalogue.calibration,
                                                   "refusal": [edited, *catalogue.calibration["refusal"][1:]]})
    changed_card = replace(catalogue, cards={**catalogue.cards, "refusal": {**catalogue.cards["refusal"], "read_depth": 0.5}})
    fewer_tests = replace(catalogue, test={**catalogue.test, "refusal": catalogue.test["refusal"][1:]})
    assert changed_pair.calibration_sha256 != digest
    assert changed_card.calibration_sha256 != digest
    assert fewer_tests.calibration_sha256 == digest  # test pairs never reach a bundle


def test_export_refuses_to_overwrite_without_force(tmp_path: Path):
    root = write_data(tmp_path / "data", GOOD_ANCHORS, GOOD_PAIRS)
    dest = tmp_path / "export"
    runner = CliRunner()
    assert runner.invoke(cli, ["catalogue", "export", str(dest), "--data", str(root)]).exit_code == 0
    again = runner.invoke(cli, ["catalogue", "export", str(dest), "--data", str(root)])
    assert again.exit_code == 2 and "already exists" in again.stderr
    forced = runner.invoke(cli, ["catalogue", "--data", str(root), "export", str(dest), "--force"])
    assert forced.exit_code == 0, forced.output


def test_export_of_a_subset_without_metadata(tmp_path: Path):
    """Anchors without ids get numbered; only the chosen axes are written; pair lines carry every field."""
    root = write_data(tmp_path / "data", GOOD_ANCHORS, GOOD_PAIRS)
    (root / "axes" / "other_anchor.jsonl").write_text(GOOD_PAIRS, encoding="utf-8")
    catalogue = load_catalogue(root, axes=["demo"])
    written = export_catalogue(catalogue, tmp_path / "out")
    assert sorted(p.name for p in written) == ["anchors.jsonl", "demo_anchor.jsonl"]
    assert read_rows(tmp_path / "out" / "anchors.jsonl") == [{"id": "a000", "text": "one"}, {"id": "a001", "text": "two"}]
    (pair,) = read_rows(tmp_path / "out" / "axes" / "demo_anchor.jsonl")
    assert pair == {"axis": "demo", "pair_id": 0, "positive": "p", "negative": "n", "pos_label": "yes", "neg_label": "no"}
    assert load_catalogue(tmp_path / "out").calibration == catalogue.calibration


def test_the_refusal_and_jailbreak_cards_fix_their_read_depths_and_a_bad_depth_is_refused_with_a_fix(tmp_path):
    specs = {s.name: s for s in load_catalogue(axes=["refusal", "jailbreak", "toxicity"]).axis_specs()}
    assert specs["refusal"].read_depth == 0.25 and specs["jailbreak"].read_depth == 0.5
    assert specs["toxicity"].read_depth is None
    export_catalogue(load_catalogue(axes=["refusal"]), tmp_path)
    card = tmp_path / "cards" / "refusal.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "read_depth": 2}))
    with pytest.raises(AxisguardError, match="read_depth") as err:
        load_catalogue(tmp_path).axis_specs()
    assert "between 0 (first layer) and 1" in (err.value.hint or "")
