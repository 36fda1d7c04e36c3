"""Guard policy: which axis scores trigger which action, loaded from YAML or JSON (pydantic 2).

A policy is a list of rules. Each rule watches one axis score of one kind:

* ``prompt``: the z-score of the prompt's last token (what the calibration pooled), judged once,
  when the prompt has been read;
* ``generation``: an exponential moving average (``ema_alpha``) of the generated tokens' z-scores,
  judged every step once ``min_tokens`` tokens have been generated;
* ``token``: the generated tokens' own z-scores; fires when ``min_tokens`` of them (within the last
  ``window`` tokens, if set) are over the threshold.

Thresholds are in z units (see ``guard.pack``: the same meaning on every model) or ``auto`` (half-way
between the pack's calibrated negative and positive means). A rule fires at most once per request;
its action is then ``observe`` (recorded only), ``flag`` (recorded and reported), ``steer`` (counter-
steering from that step on, for ``steer.duration`` generated tokens or until the end) or ``stop``.

Rules naming an axis the pack lacks are skipped with a warning (``unknown_axes: skip``, the default,
so the catalogue's default policy runs on packs built for a subset of axes) or make the guard refuse
to start (``unknown_axes: error``). ``axisguard policy check`` reports them either way.

Per-request overrides (``Guard.start_request``) may change only what ``allow_overrides`` lists:
``enabled`` (the whole guard), ``<rule>.<field>`` or ``*.<field>`` for a field in
``OVERRIDABLE_FIELDS``; ``guard.overrides`` validates them. ``guard.policy_check`` binds a policy to a
pack; ``guard.policy_errors`` turns validation errors into lines that say what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guard.errors import AxisguardError
from guard.policy_errors import describe_errors
from guard.text_files import read_user_text

Action = Literal["observe", "flag", "steer", "stop"]
ScoreKind = Literal["prompt", "generation", "token"]
SteerMethod = Literal["add", "ablate", "clamp"]
ACTIONS: tuple[str, ...] = typing.get_args(Action)
MAX_WINDOW = 64

# Fields a request may override (when allow-listed), and how their values are read.
OVERRIDABLE_FIELDS: tuple[str, ...] = ("enabled", "threshold", "action", "strength", "min_tokens")
# Whole-request overrides (allow-listed by their own name): the guard on/off, enforce or shadow.
REQUEST_OVERRIDES: tuple[str, ...] = ("enabled", "mode")
Mode = Literal["enforce", "shadow"]
MODES: tuple[str, ...] = typing.get_args(Mode)


def parse_threshold(value: Any) -> float | str:
    """A threshold as written in a policy or an override: a number in z units, or ``"auto"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a threshold; allowed: a number in z units or 'auto'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a threshold; allowed: a number in z units or 'auto'")


class SteerConfig(BaseModel):
    """How a ``steer`` rule counter-steers (see ``guard.steering``)."""

    model_config = ConfigDict(extra="forbid")

    method: SteerMethod = "add"
    axis: str | None = Field(None, description="axis to steer along; default: the rule's axis")
    strength: float = Field(
        1.0,
        description="add: alpha (positive = towards the axis' positive side, in hidden-state units, or "
        "a fraction of ||h|| when relative); ablate/clamp: fraction of the correction applied, 0..1",
    )
    relative: bool = Field(False, description="add only: alpha is a fraction of each row's norm")
    target: float | Literal["safe"] = Field(
        "safe", description="clamp only: target z-score; 'safe' = the pack's calibrated negative mean"
    )
    side: Literal["above", "below", "both"] = Field(
        "above", description="clamp only: correct rows whose score is above / below the target, or all"
    )
    layers: list[int] | None = Field(None, description="decoder layers to steer; default: the steering axis' layer in the pack")
    duration: int | None = Field(
        None, ge=1, description="generated tokens to keep steering after firing; default: until the end"
    )

    @model_validator(mode="after")
    def _check(self) -> SteerConfig:
        if self.method in ("ablate", "clamp") and not 0.0 <= self.strength <= 1.0:
            raise ValueError(
                f"strength {self.strength} is out of range for {self.method}; allowed: 0..1 "
                "(the fraction of the correction applied)"
            )
        if self.layers is not None and (not self.layers or any(layer < 0 for layer in self.layers)):
            raise ValueError(f"layers {self.layers} must be a non-empty list of layer indices >= 0")
        return self


class StopConfig(BaseModel):
    """What a client is told when a ``stop`` rule ends its request (see ``integrations.vllm.inband``)."""

    model_config = ConfigDict(extra="forbid")

    message: str | None = Field(
        None, max_length=4096,
        description="returned as the choice's content when the request is stopped before any text was produced",
    )


class Rule(BaseModel):
    """One trigger: an axis score crossing a threshold, and the action it causes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="unique; used in override keys")
    axis: str
    score: ScoreKind = "prompt"
    threshold: float | str
    direction: Literal["above", "below"] = "above"
    min_tokens: int = Field(1, ge=1, description="generation: warm-up tokens; token: tokens over threshold")
    window: int | None = Field(None, ge=1, le=MAX_WINDOW, description="token only: count within the last N")
    action: Action = "flag"
    steer: SteerConfig | None = None
    stop: StopConfig | None = None
    enabled: bool = True

    @field_validator("threshold", mode="before")
    @classmethod
    def _check_threshold(cls, value: Any) -> float | str:
        return parse_threshold(value)

    @model_validator(mode="after")
    def _check(self) -> Rule:
        if self.action == "steer" and self.steer is None:
            raise ValueError(f"rule {self.name!r} has action 'steer' but no 'steer' block (method, strength, ...)")
        if self.window is not None:
            if self.score != "token":
                raise ValueError(f"rule {self.name!r}: 'window' applies only to score 'token' (got {self.score!r})")
            if self.min_tokens > self.window:
                raise ValueError(
                    f"rule {self.name!r}: min_tokens {self.min_tokens} can never be reached in a window of {self.window}"
                )
        return self


class Policy(BaseModel):
    """A complete guard policy (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    name: str = "policy"
    description: str = ""
    on_error: Literal["fail_open", "fail_closed"] = Field(
        "fail_open",
        description="a guard error lets the request continue unguarded (fail_open) or stops it (fail_closed)",
    )
    unknown_axes: Literal["skip", "error"] = "skip"
    mode: Mode = Field(
        "enforce",
        description="enforce: rules act; shadow: every rule is judged and counted as it would act "
        "(would_steer, would_stop), the output is left untouched",
    )
    in_band: bool = Field(
        True,
        description="OpenAI API conventions on the server: the verdict in each response, finish_reason "
        "'content_filter' and refusal messages for stopped choices; false leaves responses as vLLM made them",
    )
    ema_alpha: float = Field(0.2, gt=0.0, le=1.0)
    allow_overrides: list[str] = Field(
        default_factory=list,
        description="what a request may override; nothing by default, since an override can weaken the guard",
    )
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Policy:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        for entry in self.allow_overrides:
            if entry in REQUEST_OVERRIDES:
                continue
            rule, _, fld = entry.partition(".")
            if fld not in OVERRIDABLE_FIELDS or (rule != "*" and rule not in names):
                raise ValueError(
                    f"allow_overrides entry {entry!r} is not valid; allowed: 'enabled', 'mode', '*.<field>' or "
                    f"'<rule>.<field>' with a rule of this policy and field one of {', '.join(OVERRIDABLE_FIELDS)}"
                )
        return self

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Any, source: str = "policy") -> Policy:
        if not isinstance(data, Mapping):
            raise AxisguardError(
                f"{source}: a policy must be a mapping with 'rules', got {type(data).__name__}",
                "see probes/catalogue/default_policy.yaml for an example",
            )
        bad_text = _first_unencodable(data)
        if bad_text is not None:  # e.g. "\ud800" escapes: valid YAML/JSON, but no valid text to print or label
            raise AxisguardError(f"{source}: field {bad_text} is not valid Unicode text (a lone surrogate escape)",
                                 "use plain UTF-8 text in names and values")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise AxisguardError(
                f"{source}: invalid policy\n" + "\n".join(f"  - {line}" for line in describe_errors(exc, cls)),
                "fix the fields named above; `axisguard policy check FILE --pack PACK` re-checks it",
            ) from None


def policy_digest(policy: Policy) -> str:
    """A short content hash of a policy: its validated fields, so formatting and comments do not count."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _first_unencodable(data: Any, where: str = "") -> str | None:
    """The path of the first key or string in ``data`` that cannot be encoded as UTF-8, or None."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(top level)"
        return None
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        here = f"{where}.{key}" if where else str(key)
        if isinstance(key, str) and _first_unencodable(key) is not None:
            return repr(here)
        found = _first_unencodable(value, here)
        if found is not None:
            return found
    return None


def load_policy(path: str | Path) -> Policy:
    """Read a policy from a YAML (``.yaml``/``.yml``) or JSON file; errors name the field and value."""
    path = Path(path)
    text = read_user_text(path, "policy", "pass an existing UTF-8 YAML or JSON file")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise AxisguardError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {exc}",
                             "fix the syntax at the position shown") from None
    return Policy.from_mapping(data, source=str(path))


def policy_from_text(text: str, source: str) -> Policy:
    """A policy from YAML (JSON is YAML too) text; ``source`` names it in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AxisguardError(f"{source}: not valid YAML: {exc}", "fix the syntax at the position shown") from None
    return Policy.from_mapping(data, source=source)
