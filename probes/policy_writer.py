"""Write a policy with new rule thresholds, keeping the base file's comments and layout.

Policies are hand-written YAML with comments that explain each rule; regenerating thresholds must
not throw those away. So the base text is edited line by line: inside the block of rule ``name``,
its rule-level ``threshold:`` line gets the new value and a comment (sample size, expected rate).
The result is parsed again and must hold exactly the new thresholds, else the policy is re-written
from its parsed form (comments lost, header kept).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import yaml

from guard.policy import Policy, policy_from_text
from probes.traffic_thresholds import RuleThreshold

_RULE_START = re.compile(r"^(\s*)-\s+name:\s*['\"]?([^'\"#]+?)['\"]?\s*(#.*)?$")
_THRESHOLD = re.compile(r"^(\s*)threshold:\s*[^#]*?(\s*#.*)?$")


def threshold_comment(t: RuleThreshold) -> str:
    text = f"flags {t.requested_rate:.1%} of ordinary traffic (n={t.sample_size}, in-sample {t.sample_rate:.1%})"
    if t.recall is not None:
        text += f"; recall {t.recall:.1%} on {t.positives} positives"
    return text


def _edit_lines(text: str, thresholds: dict[str, RuleThreshold]) -> str:
    out, rule, rule_indent = [], None, -1
    for line in text.splitlines():
        start = _RULE_START.match(line)
        if start:
            rule, rule_indent = start.group(2).strip(), len(start.group(1)) + 2
        else:
            found = _THRESHOLD.match(line)
            if found and rule in thresholds and len(found.group(1)) == rule_indent:
                t = thresholds[rule]
                line = f"{found.group(1)}threshold: {t.threshold:.4f}  # {threshold_comment(t)}"
        out.append(line)
    return "\n".join(out) + "\n"


HEADER_OPENING = "Thresholds "  # every header written here starts so; a regeneration replaces the old one


def _without_old_header(text: str) -> str:
    """``text`` minus a leading header this module wrote before (comment lines up to a bare ``#``)."""
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].startswith(f"# {HEADER_OPENING}"):
        return text
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            return text  # no bare "#" closes the block: not ours, keep it all
        if line.strip() == "#":
            return "".join(lines[i + 1:])
    return text


def write_thresholds(base_text: str, base: Policy, thresholds: Sequence[RuleThreshold], header: Sequence[str]) -> str:
    """The policy text with ``thresholds`` applied and ``header`` lines as a leading comment (replacing
    the header of an earlier run, so regenerating a generated policy does not stack headers)."""
    if not header or not header[0].startswith(HEADER_OPENING) or header[-1] != "":
        raise ValueError(f"a thresholds header starts with {HEADER_OPENING!r} and ends with an empty line")
    wanted = {t.rule: t for t in thresholds}
    body = _edit_lines(_without_old_header(base_text), wanted)
    if not _holds(body, wanted):
        data = base.model_dump(mode="json", exclude_none=True)
        for rule in data["rules"]:
            if rule["name"] in wanted:
                rule["threshold"] = round(wanted[rule["name"]].threshold, 4)
        body = yaml.safe_dump(data, sort_keys=False)
        body += "".join(f"# {t.rule}: {threshold_comment(t)}\n" for t in thresholds)
    text = "".join(f"# {line}\n" if line else "#\n" for line in header) + body
    if not _holds(text, wanted):  # pragma: no cover - the fallback always holds them
        raise AssertionError("writing the thresholds lost them")
    return text


def _holds(text: str, wanted: dict[str, RuleThreshold]) -> bool:
    try:
        policy = policy_from_text(text, "generated policy")
    except Exception:
        return False
    got = {r.name: r.threshold for r in policy.rules}
    return all(isinstance(value := got.get(name), float) and abs(value - t.threshold) < 1e-4 for name, t in wanted.items())
