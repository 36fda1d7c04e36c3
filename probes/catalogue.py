"""Behaviour data in the paper's layout: ``DIR/anchors.jsonl`` and ``DIR/axes/{axis}_anchor.jsonl``
(calibration pairs) / ``{axis}_test.jsonl`` (test pairs).

The axis name is the file name; a line's ``axis`` field may carry a version suffix (``refusal_v6``) and
is ignored. Without a directory, the built-in catalogue in ``probes/catalogue/`` is used. Every
problem is reported with the file and line so the user can fix the data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from guard.axes import AxisSpec
from guard.errors import AxisguardError
from guard.text_files import read_user_text, write_text_atomic

BUILTIN_DIR = Path(__file__).parent / "catalogue"
# The built-in sample of ordinary everyday requests (two disjoint halves, field `half`), written for
# the project: thresholds from traffic and the external-validity check both read it.
BENIGN_TRAFFIC = BUILTIN_DIR / "benign_traffic.jsonl"
CALIBRATION_SUFFIX = "_anchor.jsonl"
TEST_SUFFIX = "_test.jsonl"
PAIR_FIELDS = ("positive", "negative")


@dataclass(frozen=True)
class ContrastPair:
    axis: str
    pair_id: int
    positive: str
    negative: str
    pos_label: str
    neg_label: str


@dataclass
class Catalogue:
    """Anchors and per-axis calibration/test pairs. ``test`` may be empty (no test split on disk)."""

    root: Path
    anchors: list[str]
    calibration: dict[str, list[ContrastPair]]
    test: dict[str, list[ContrastPair]] = field(default_factory=dict)
    cards: dict[str, dict] = field(default_factory=dict)

    @property
    def axis_names(self) -> list[str]:
        return list(self.calibration)

    def axis_specs(self) -> list[AxisSpec]:
        specs = []
        for name, pairs in self.calibration.items():
            card = self.cards.get(name, {})
            depth = card.get("read_depth")
            specs.append(AxisSpec(name, pairs[0].pos_label, pairs[0].neg_label, card.get("detects", ""),
                                  float(depth) if depth is not None else None))
        return specs

    @property
    def anchors_sha256(self) -> str:
        return anchors_sha256(self.anchors)

    @property
    def calibration_sha256(self) -> str:
        """Identity of everything a bundle is calibrated from: the anchors, every calibration pair and
        the axis cards (read depths). Test pairs are left out: they never reach a bundle."""
        digest = hashlib.sha256(self.anchors_sha256.encode())
        for axis in sorted(self.calibration):
            digest.update(json.dumps([axis, self.cards.get(axis, {})], sort_keys=True).encode())
            for pair in self.calibration[axis]:
                digest.update(json.dumps([pair.pair_id, pair.positive, pair.negative, pair.pos_label,
                                          pair.neg_label]).encode())
        return digest.hexdigest()


def anchors_sha256(anchors: list[str]) -> str:
    """Identity of an anchor pool: order matters, since ACS coordinates are indexed by anchor."""
    digest = hashlib.sha256()
    for text in anchors:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    lines = read_user_text(path, "data file", "check the --data directory (UTF-8 JSON lines)").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AxisguardError(f"{path}:{number}: not valid JSON ({exc.msg})", "fix or remove that line") from exc
        if not isinstance(row, dict):
            raise AxisguardError(f"{path}:{number}: expected a JSON object", "each line must be one object")
        rows.append((number, row))
    return rows


def load_anchors(root: Path) -> list[str]:
    path = root / "anchors.jsonl"
    if not path.is_file():
        raise AxisguardError(f"no anchors file at {path}", "a data directory needs anchors.jsonl (field `text`)")
    anchors = []
    for number, row in _read_jsonl(path):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise AxisguardError(f"{path}:{number}: missing or empty `text`", "each anchor line needs a `text` string")
        anchors.append(text)
    if not anchors:
        raise AxisguardError(f"{path} has no anchors", "add anchor prompts (the paper uses 300)")
    return anchors


def load_pairs(path: Path, axis: str) -> list[ContrastPair]:
    pairs: list[ContrastPair] = []
    for number, row in _read_jsonl(path):
        for key in PAIR_FIELDS:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise AxisguardError(f"{path}:{number}: missing or empty `{key}`", "each pair needs `positive` and `negative` text")
        pair_id = row.get("pair_id", len(pairs))
        if isinstance(pair_id, bool) or not isinstance(pair_id, int | str) or not str(pair_id).strip().isdigit():
            raise AxisguardError(f"{path}:{number}: `pair_id` must be a non-negative integer, got {pair_id!r}",
                                 "fix or drop the pair_id field")
        pairs.append(
            ContrastPair(
                axis=axis,
                pair_id=int(pair_id),
                positive=row["positive"],
                negative=row["negative"],
                pos_label=str(row.get("pos_label", "positive")),
                neg_label=str(row.get("neg_label", "negative")),
            )
        )
    if not pairs:
        raise AxisguardError(f"{path} has no pairs", "each axis file needs at least one pair")
    return pairs


def _axes_dir(root: Path) -> Path:
    return root / "axes" if (root / "axes").is_dir() else root


def load_test_pairs(test_dir: Path, axes: list[str]) -> dict[str, list[ContrastPair]]:
    """``{axis}_test.jsonl`` from ``test_dir`` or ``test_dir/axes``, for the given axes."""
    folder = _axes_dir(Path(test_dir))
    found = {}
    for axis in axes:
        path = folder / f"{axis}{TEST_SUFFIX}"
        if path.is_file():
            found[axis] = load_pairs(path, axis)
    if not found:
        raise AxisguardError(
            f"no test pairs ({{axis}}{TEST_SUFFIX}) for axes {', '.join(axes)} in {folder}",
            "point --test-data at a directory holding e.g. refusal_test.jsonl",
        )
    return found


def load_shot_pairs(pairs_dir: str | Path, axes: list[str], shots: int | None = None) -> dict[str, list[ContrastPair]]:
    """Few-shot pairs: the first ``shots`` pairs of ``{axis}_anchor.jsonl`` in ``pairs_dir`` (or its
    ``axes/``) for each of ``axes`` that has a file; at least one axis must."""
    folder = _axes_dir(Path(pairs_dir))
    found = {a: load_pairs(folder / f"{a}{CALIBRATION_SUFFIX}", a)[:shots]
             for a in axes if (folder / f"{a}{CALIBRATION_SUFFIX}").is_file()}
    if not found:
        raise AxisguardError(f"no pairs ({{axis}}{CALIBRATION_SUFFIX}) for axes {', '.join(axes)} in {folder}",
                             "point --pairs at a directory holding e.g. axes/refusal_anchor.jsonl")
    return {a: pairs for a, pairs in found.items() if pairs}


def _check_read_depth(card_path: Path, depth: object) -> None:
    """A card's optional ``read_depth`` must be a relative depth; refused when the catalogue loads."""
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int | float) or not 0 <= depth <= 1):
        raise AxisguardError(f"{card_path}: read_depth {depth!r} is not a relative depth",
                             "use a number between 0 (first layer) and 1 (last layer), or leave it out")


def load_catalogue(data_dir: str | Path | None = None, axes: list[str] | None = None) -> Catalogue:
    """Load the built-in catalogue (``data_dir=None``) or a directory in the paper's layout."""
    root = Path(data_dir) if data_dir is not None else BUILTIN_DIR
    if not root.is_dir():
        raise AxisguardError(f"data directory {root} does not exist", "pass --data DIR with anchors.jsonl and axes/")
    anchors = load_anchors(root)
    folder = _axes_dir(root)
    available = sorted(p.name[: -len(CALIBRATION_SUFFIX)] for p in folder.glob(f"*{CALIBRATION_SUFFIX}"))
    if not available:
        raise AxisguardError(f"no calibration pairs (*{CALIBRATION_SUFFIX}) in {folder}", "add axes/{axis}_anchor.jsonl files")
    chosen = axes or available
    unknown = [a for a in chosen if a not in available]
    if unknown:
        raise AxisguardError(f"unknown axis {', '.join(unknown)} in {root}", f"available axes: {', '.join(available)}")
    calibration = {a: load_pairs(folder / f"{a}{CALIBRATION_SUFFIX}", a) for a in chosen}
    test = {a: load_pairs(folder / f"{a}{TEST_SUFFIX}", a) for a in chosen if (folder / f"{a}{TEST_SUFFIX}").is_file()}
    cards = {}
    cards_dir = root / "cards"
    for a in chosen:
        card_path = cards_dir / f"{a}.json"
        if card_path.is_file():
            try:
                cards[a] = json.loads(read_user_text(card_path, "axis card", "fix the axis card"))
            except json.JSONDecodeError as exc:
                raise AxisguardError(f"{card_path}: not valid JSON ({exc.msg})", "fix the axis card") from exc
            _check_read_depth(card_path, cards[a].get("read_depth"))
    return Catalogue(root=root, anchors=anchors, calibration=calibration, test=test, cards=cards)


def _anchor_rows(catalogue: Catalogue) -> list[dict]:
    """The anchors as JSON lines, keeping ``id``/``genre`` (or any other field) from the source file
    when it still holds exactly these anchors; anchors without an id are numbered ``a000``, ``a001``, ..."""
    rows: list[dict] = [{"text": text} for text in catalogue.anchors]
    source = catalogue.root / "anchors.jsonl"
    if source.is_file():
        source_rows = [row for _, row in _read_jsonl(source)]
        if [row.get("text") for row in source_rows] == catalogue.anchors:
            rows = source_rows
    return [{"id": f"a{i:03d}", **row} for i, row in enumerate(rows)]


def _pair_row(pair: ContrastPair) -> dict:
    return {"axis": pair.axis, "pair_id": pair.pair_id, "positive": pair.positive, "negative": pair.negative,
            "pos_label": pair.pos_label, "neg_label": pair.neg_label}


def export_catalogue(catalogue: Catalogue, dest: str | Path, overwrite: bool = False) -> list[Path]:
    """Write ``catalogue`` in the paper's layout: ``dest/anchors.jsonl``, ``dest/axes/{axis}_anchor.jsonl``,
    ``dest/axes/{axis}_test.jsonl`` and ``dest/cards/{axis}.json``. Returns the files written.

    ``load_catalogue(dest)`` gives back the same anchors, pairs and cards. Existing files are only
    replaced with ``overwrite=True``; other files in ``dest`` are left alone.
    """
    dest = Path(dest)
    axes_dir = dest / "axes"

    def lines(rows: list[dict]) -> str:
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)

    contents: dict[Path, str] = {dest / "anchors.jsonl": lines(_anchor_rows(catalogue))}
    for axis, pairs in catalogue.calibration.items():
        contents[axes_dir / f"{axis}{CALIBRATION_SUFFIX}"] = lines([_pair_row(p) for p in pairs])
    for axis, pairs in catalogue.test.items():
        contents[axes_dir / f"{axis}{TEST_SUFFIX}"] = lines([_pair_row(p) for p in pairs])
    for axis, card in catalogue.cards.items():
        contents[dest / "cards" / f"{axis}.json"] = json.dumps(card, ensure_ascii=False, indent=2) + "\n"

    existing = [path for path in contents if path.exists()]
    if existing and not overwrite:
        raise AxisguardError(
            f"{existing[0]} already exists ({len(existing)} of the files to write do)",
            "export into an empty directory, or pass --force to replace them",
        )
    try:
        for path, text in contents.items():
            write_text_atomic(path, text)
    except OSError as exc:
        raise AxisguardError(f"cannot write {exc.filename}: {exc.strerror}", "choose a writable directory") from exc
    return list(contents)
