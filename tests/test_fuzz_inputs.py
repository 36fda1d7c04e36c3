"""Property-based fuzzing (hypothesis) of everything axisguard reads from users and clients: policies,
pack/bundle manifests, per-request overrides, the ``AXISGUARD_CONFIG`` file and ``--data`` folders.

The property is the same everywhere: a malformed input is refused with ``AxisguardError`` (CLI exit
2, HTTP 400) naming the file or field, never with another exception (a traceback / HTTP 500), and
nothing is left half-written. Example counts are modest (CI time); each test has a deadline, so a
hang fails it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guard.bundle import CanonicalBundle
from guard.errors import AxisguardError
from guard.overrides import resolve_overrides
from guard.pack import AxisPack
from guard.policy import Policy, load_policy, policy_from_text
from guard.tensor_folder import MANIFEST, _canonical_json, sha256_bytes
from integrations.vllm.config import GuardConfig, overrides_from_extra_args
from probes.catalogue import load_catalogue
from tests.pack_factory import random_pack

FUZZ = settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
FIELD_NAMES = ["name", "axis", "score", "threshold", "action", "enabled", "steer", "method", "strength", "relative",
               "min_tokens", "window", "on_error", "rules", "allow_overrides", "unknown_axes", "side", "target_z"]
policy_like = st.fixed_dictionaries({}, optional={
    "name": scalars, "on_error": st.sampled_from(["fail_open", "fail_closed", "explode", 3]),
    "allow_overrides": st.lists(st.sampled_from(["enabled", "*.enabled", "*.threshold", "r.action", "bad", 1])),
    "rules": st.lists(st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8), max_size=3),
    "unknown_axes": st.sampled_from(["skip", "error", "maybe"]),
})


def refused_or_valid(fn: Any, *args: Any) -> Any:
    """Call ``fn``; an ``AxisguardError`` is the only acceptable failure (with a non-empty message)."""
    try:
        return fn(*args)
    except AxisguardError as exc:
        assert str(exc).strip()
        return None


# --- policies ------------------------------------------------------------------------------------------


@FUZZ
@given(policy_like)
def test_policy_mappings(data):
    text = json.dumps(data)
    policy = refused_or_valid(policy_from_text, text, "fuzz.yaml")
    if policy is None:
        with pytest.raises(AxisguardError, match="fuzz.yaml"):
            policy_from_text(text, "fuzz.yaml")


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([".yaml", ".json", ".yml"]))
def test_policy_files_of_any_bytes(raw, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"policy{suffix}"
        path.write_bytes(raw)
        try:
            load_policy(path)
        except AxisguardError as exc:
            assert str(path) in str(exc)


@FUZZ
@given(st.text(max_size=300))
def test_policy_text(text):
    refused_or_valid(policy_from_text, text, "inline")


# --- per-request overrides (what HTTP clients send as vllm_xargs / extra_args) ----------------------------

POLICY = Policy.model_validate({
    "allow_overrides": ["enabled", "*.threshold", "*.enabled", "*.action", "*.strength", "*.min_tokens"],
    "rules": [{"name": "r", "axis": "refusal", "threshold": 2.0, "action": "flag"},
              {"name": "s", "axis": "toxicity", "threshold": 1.0, "action": "steer",
               "steer": {"method": "clamp", "strength": 0.5}}],
})
override_keys = st.one_of(st.sampled_from(["axisguard", "axisguard.enabled", "axisguard.r.threshold",
                                           "axisguard.s.strength", "axisguard.s.action", "axisguard.r.min_tokens",
                                           "axisguard.x.y", "axisguard.", "other"]), st.text(max_size=10))


@FUZZ
@given(st.dictionaries(override_keys, json_values, max_size=5))
def test_overrides_from_clients(extra_args):
    overrides = refused_or_valid(overrides_from_extra_args, extra_args)
    if overrides is not None:
        refused_or_valid(resolve_overrides, POLICY, overrides)


# --- pack and bundle manifests -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-artifacts")
    pack = random_pack().save(root / "pack")
    return {"pack": pack, "manifest": json.loads((pack / MANIFEST).read_text())}


def rewrite_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest`` with a correct self-hash, as a careless or hostile writer with the code could."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["manifest_sha256"] = sha256_bytes(_canonical_json(body))
    (folder / MANIFEST).write_text(json.dumps(body))


def copy_of(pack: Path, dest: Path) -> Path:
    dest.mkdir()
    for file in pack.iterdir():
        (dest / file.name).write_bytes(file.read_bytes())
    return dest


@FUZZ
@given(st.data())
def test_consistently_hashed_but_malformed_manifests(artifacts, data):
    manifest = dict(artifacts["manifest"])
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(manifest) + ["extra"]))
        if data.draw(st.booleans()) and key in manifest:
            del manifest[key]
        else:
            manifest[key] = data.draw(json_values)
    with tempfile.TemporaryDirectory() as folder:
        pack = copy_of(artifacts["pack"], Path(folder) / "pack")
        rewrite_manifest(pack, manifest)
        refused_or_valid(AxisPack.load, pack)
        refused_or_valid(CanonicalBundle.load, pack)


@FUZZ
@given(st.binary(max_size=300))
def test_manifests_of_any_bytes(artifacts, raw):
    with tempfile.TemporaryDirectory() as folder:
        pack = copy_of(artifacts["pack"], Path(folder) / "pack")
        (pack / MANIFEST).write_bytes(raw)
        with pytest.raises(AxisguardError):
            AxisPack.load(pack)


# --- the AXISGUARD_CONFIG file -----------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=120), st.dictionaries(st.sampled_from(["pack", "policy", "pack_sha256", "x"]),
                                                          json_values, max_size=3).map(lambda d: json.dumps(d).encode())))
def test_config_files(raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "axisguard.json"
        path.write_bytes(raw)
        try:
            GuardConfig.from_env({"AXISGUARD_CONFIG": str(path)})
        except AxisguardError as exc:
            assert str(exc).strip()


# --- --data folders (the paper's layout) -----------------------------------------------------------------

line_values = st.one_of(json_values, st.fixed_dictionaries(
    {"positive": scalars, "negative": scalars}, optional={"pair_id": json_values, "pos_label": json_values}))


def jsonl(rows: list[Any], garbage: bytes) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows) + garbage


@FUZZ
@given(st.lists(st.one_of(st.fixed_dictionaries({"text": scalars}), json_values), max_size=4),
       st.lists(line_values, max_size=4), st.sampled_from([b"", b"\xff\xfe\n", b"{not json\n", b"\n\n"]),
       st.sampled_from(["anchors", "pairs", "card"]))
@example([{"text": "a"}], [{"positive": "p", "negative": "n", "pair_id": "abc"}], b"", "pairs")
@example([{"text": "a"}], [{"positive": "p", "negative": "n", "pair_id": 1.5}], b"", "pairs")
def test_data_folders(anchor_rows, pair_rows, garbage, where):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "axes").mkdir()
        (root / "cards").mkdir()
        good_pair = {"positive": "p", "negative": "n"}
        (root / "anchors.jsonl").write_bytes(jsonl(anchor_rows, garbage) if where == "anchors"
                                             else jsonl([{"text": "a"}], b""))
        (root / "axes" / "refusal_anchor.jsonl").write_bytes(jsonl(pair_rows, garbage) if where == "pairs"
                                                             else jsonl([good_pair], b""))
        (root / "cards" / "refusal.json").write_bytes(garbage if where == "card" else b"{}")
        try:
            load_catalogue(root)
        except AxisguardError as exc:
            assert str(root) in str(exc)  # names the file


# --- the CLI: exit 2 and no traceback -----------------------------------------------------------------------


@settings(max_examples=10, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy_like)
def test_cli_policy_check_exits_0_or_2(artifacts, data):
    from axisguard_cli.main import cli

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "policy.yaml"
        path.write_text(json.dumps(data))
        result = CliRunner().invoke(cli, ["policy", "check", str(path), "--pack", str(artifacts["pack"])])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
