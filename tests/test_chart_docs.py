"""The chart's README documents every value, and the root README points operators to it."""

from __future__ import annotations

from typing import Any

import yaml

from tests.chart_support import CHART, REPO


def leaf_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        # Alert settings are documented one row per alert; free-form maps are documented as a whole.
        if isinstance(value, dict) and value and "alerts." not in prefix and key not in ("resources", "podSecurityContext",
                                                                                      "securityContext", "labels"):
            keys |= leaf_keys(value, path + ".")
        else:
            keys.add(path)
    return keys


def test_every_value_is_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    missing = [k for k in sorted(leaf_keys(yaml.safe_load((CHART / "values.yaml").read_text())))
               if f"`{k}`" not in readme]
    assert missing == []


def test_the_root_readme_has_a_kubernetes_section() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Deploy on Kubernetes" in readme and "charts/axisguard" in readme
