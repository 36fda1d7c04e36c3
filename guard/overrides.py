"""Per-request overrides: what one request may change of the policy, validated before it runs.

A request (``Guard.start_request``; on the server, the ``axisguard`` field of the body) may change only
what the policy's ``allow_overrides`` lists: ``enabled`` and ``mode`` for the whole request,
``<rule>.<field>`` or ``*.<field>`` for a field in ``OVERRIDABLE_FIELDS``. Values may arrive as
strings (HTTP headers); each is coerced or refused with the key, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guard.errors import AxisguardError
from guard.policy import (
    ACTIONS,
    MODES,
    OVERRIDABLE_FIELDS,
    REQUEST_OVERRIDES,
    Mode,
    Policy,
    Rule,
    parse_threshold,
)


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
        return parse_threshold(value)
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
