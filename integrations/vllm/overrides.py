"""Per-request guard overrides carried in ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP).

Two spellings, so that both offline and HTTP clients can use them:

* nested (offline): ``SamplingParams(extra_args={"axisguard": {"enabled": False}})`` or
  ``{"axisguard": {"refusal_steer": {"threshold": 2.5}}}``;
* flat (HTTP ``vllm_xargs`` allows only flat values): ``{"axisguard.enabled": "false",
  "axisguard.refusal_steer.threshold": 2.5}``.

The keys after the prefix are the policy's override keys (``enabled``, ``<rule>.<field>``), checked
against the policy's ``allow_overrides`` by ``guard.policy.resolve_overrides``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from guard.errors import AxisguardError

KEY = "axisguard"
PREFIX = KEY + "."


def overrides_from_extra_args(extra_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The axisguard overrides in a request's ``extra_args`` (empty when there are none)."""
    if not extra_args:
        return {}
    found: dict[str, Any] = {}
    nested = extra_args.get(KEY)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise AxisguardError(
                f"extra_args[{KEY!r}] must be a mapping of override keys, got {nested!r}",
                f'e.g. extra_args={{"{KEY}": {{"enabled": false}}}} or vllm_xargs={{"{PREFIX}enabled": "false"}}',
            )
        found.update(nested)
    for key, value in extra_args.items():
        if isinstance(key, str) and key.startswith(PREFIX):
            found[key[len(PREFIX):]] = value
    return found
