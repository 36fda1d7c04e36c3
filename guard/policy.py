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
``OVERRIDABLE_FIELDS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guard.errors import AxisguardError
from guard.text_files import read_user_text

if typing.TYPE_CHECKING:
    from guard.pack import AxisPack

log = logging.getLogger(__name__)

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


def _threshold_value(value: Any) -> float | str:
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
        return _threshold_value(value)

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
                f"{source}: invalid policy\n" + "\n".join(f"  - {line}" for line in describe_errors(exc)),
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


# --- validation messages ---------------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last element of an error location."""
    model: type[BaseModel] | None = Policy
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(part)
        models = _models_in(info.annotation) if info else []
        model = models[0] if models else None
    return model


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(policy)"


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per error: field path, the bad value and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _format_loc(loc)
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            model = _model_at(loc)
            allowed = ", ".join(model.model_fields) if model else "?"
            lines.append(f"{where}: unknown field (value {value!r}); allowed fields: {allowed}")
        elif kind == "missing":
            lines.append(f"{where}: required field is missing")
        elif kind == "literal_error":
            lines.append(f"{where}: {value!r} is not allowed; allowed values: {err['ctx']['expected']}")
        elif kind == "value_error":
            lines.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: {err['msg']} (got {value!r})")
    return lines


# --- per-request overrides -------------------------------------------------------------------------


@dataclass
class RequestOverrides:
    """Validated overrides for one request: ``rules[rule_name][field] = value``."""

    enabled: bool = True
    mode: Mode | None = None  # None: the policy's mode
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce_override(fld: str, value: Any, rule: Rule | None) -> Any:
    """Convert a (possibly string, from HTTP) override value, or raise ValueError naming what is allowed."""
    if fld == "enabled":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError("allowed: true or false")
    if fld == "threshold":
        return _threshold_value(value)
    if fld == "action":
        if value not in ACTIONS:
            raise ValueError(f"allowed: {', '.join(ACTIONS)}")
        if value == "steer" and (rule is None or rule.steer is None):
            raise ValueError("this rule has no 'steer' block, so it cannot steer; allowed: observe, flag, stop")
        return value
    if fld == "strength":
        try:
            strength = float(value)
        except (TypeError, ValueError):
            raise ValueError("allowed: a number") from None
        if rule is not None and rule.steer is not None and rule.steer.method != "add" and not 0 <= strength <= 1:
            raise ValueError(f"allowed for {rule.steer.method}: a number in 0..1")
        return strength
    if fld == "min_tokens":
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise ValueError("allowed: an integer >= 1") from None
        if count < 1 or count != float(value) or (rule and rule.window and count > rule.window):
            raise ValueError(f"allowed: an integer from 1 to {rule.window if rule and rule.window else 'any'}")
        return count
    if fld == "mode":
        if value not in MODES:
            raise ValueError(f"allowed: {', '.join(MODES)}")
        return value
    raise ValueError(f"allowed fields: {', '.join(OVERRIDABLE_FIELDS)}")


def _flatten(overrides: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            items.extend((f"{key}.{sub}", v) for sub, v in value.items())
        else:
            items.append((str(key), value))
    return items


def resolve_overrides(policy: Policy, overrides: Mapping[str, Any] | None) -> RequestOverrides:
    """Validate a request's overrides against the policy's allow-list.

    Keys are ``enabled`` or ``<rule>.<field>`` (also accepted nested: ``{rule: {field: value}}``).
    Raises ``AxisguardError`` naming the key, the bad value and the allowed keys/values.
    """
    result = RequestOverrides()
    if not overrides:
        return result
    allowed = set(policy.allow_overrides)
    rule_names = [r.name for r in policy.rules]
    allowed_keys = sorted(
        (set(REQUEST_OVERRIDES) & allowed)
        | {f"{r}.{f}" for r in rule_names for f in OVERRIDABLE_FIELDS if f"{r}.{f}" in allowed or f"*.{f}" in allowed}
    )
    hint = f"allowed override keys for policy {policy.name!r}: {', '.join(allowed_keys) or '(none)'}"
    for key, value in _flatten(overrides):
        rule_name, dot, fld = key.rpartition(".")
        if not dot:
            rule_name, fld = "", key
        permitted = (key in REQUEST_OVERRIDES and key in allowed) or (
            rule_name in rule_names and (key in allowed or f"*.{fld}" in allowed)
        )
        if not permitted:
            raise AxisguardError(f"override {key!r} (value {value!r}) is not allowed by the policy", hint)
        rule = policy.rule(rule_name) if rule_name else None
        try:
            coerced = _coerce_override(fld, value, rule)
        except ValueError as exc:
            raise AxisguardError(f"override {key!r}: bad value {value!r}; {exc}", hint) from None
        if rule is None and fld == "mode":
            result.mode = coerced
        elif rule is None:
            result.enabled = coerced
        else:
            result.rules.setdefault(rule_name, {})[fld] = coerced
    return result


# --- checking a policy against a pack --------------------------------------------------------------


@dataclass
class ResolvedRule:
    """A rule bound to a pack: axis indices and numeric thresholds/targets."""

    rule: Rule
    index: int
    axis_index: int
    threshold: float
    steer_axis_index: int | None = None
    steer_layers: tuple[int, ...] = ()
    clamp_target_z: float | None = None


@dataclass
class PolicyCheck:
    """Outcome of ``check_against_pack``: problems that refuse the policy, and warnings."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resolved: list[ResolvedRule] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_against_pack(policy: Policy, pack: AxisPack) -> PolicyCheck:
    """Bind every rule to the pack; report unknown axes, bad layers and thresholds that cannot work."""
    check = PolicyCheck()
    names = pack.axis_names
    num_layers = pack.model.num_layers
    for rule in policy.rules:
        problems: list[str] = []
        missing = [a for a in (rule.axis, rule.steer.axis if rule.steer else None) if a and a not in names]
        if missing:
            message = (f"rule {rule.name!r}: axis {missing[0]!r} is not in the pack "
                       f"(pack axes: {', '.join(names)})")
            if policy.unknown_axes == "error":
                check.errors.append(message)
            else:
                check.warnings.append(message + "; the rule is skipped")
                check.skipped.append(rule.name)
            continue
        k = names.index(rule.axis)
        threshold = pack.auto_threshold(k) if rule.threshold == "auto" else float(rule.threshold)
        resolved = ResolvedRule(rule=rule, index=len(check.resolved), axis_index=k, threshold=threshold)
        pos, neg = float(pack.pos_mean_z[k]), float(pack.neg_mean_z[k])
        if rule.direction == "above" and threshold > max(pos, neg) + 4.0:
            check.warnings.append(
                f"rule {rule.name!r}: threshold {threshold:.2f} is far above the calibrated positive mean "
                f"{pos:.2f} for {rule.axis!r}; it may never fire"
            )
        if rule.direction == "above" and threshold < min(pos, neg):
            check.warnings.append(
                f"rule {rule.name!r}: threshold {threshold:.2f} is below the calibrated negative mean "
                f"{neg:.2f} for {rule.axis!r}; it will fire on most benign traffic"
            )
        if rule.steer is not None:
            steer = rule.steer
            sk = names.index(steer.axis) if steer.axis else k
            own = pack.layers_by_axis[sk]  # the steering axis' layer (its own with per-axis layers)
            layers = tuple(steer.layers) if steer.layers is not None else (own,)
            bad = [layer for layer in layers if layer >= num_layers]
            if bad:
                problems.append(f"steer.layers {bad} out of range; allowed: 0..{num_layers - 1}")
            if steer.method in ("ablate", "clamp") and layers != (own,):
                problems.append(
                    f"steer.method {steer.method!r} needs the axis' anchor statistics, which exist only at "
                    f"layer {own}; allowed steer.layers: [{own}] (or leave it out)"
                )
            resolved.steer_axis_index = sk
            resolved.steer_layers = layers
            if steer.method == "clamp":
                resolved.clamp_target_z = float(pack.neg_mean_z[sk]) if steer.target == "safe" else float(steer.target)
        if problems:
            check.errors.extend(f"rule {rule.name!r}: {p}" for p in problems)
            continue
        check.resolved.append(resolved)
    for message in check.warnings:
        log.debug("policy %s: %s", policy.name, message)
    return check


def require_runnable(policy: Policy, pack: AxisPack, where: str = "") -> PolicyCheck:
    """``check_against_pack``, raising when the guard would refuse the policy (``where``: the pack's path)."""
    check = check_against_pack(policy, pack)
    if not check.ok:
        where = where or str(pack.model.name)
        raise AxisguardError(
            f"policy {policy.name!r} cannot run on the pack for {pack.model.name} ({where}):\n"
            + "\n".join(f"  - {e}" for e in check.errors),
            f"fix the policy, or check it with `axisguard policy check POLICY --pack {where}`",
        )
    return check
