"""A command whose optional dependency (an install extra) is missing fails with exit 2 and the pip hint."""

from __future__ import annotations

import sys

from click.testing import CliRunner

from axisguard_cli.main import cli, missing_extra


def test_missing_extra_is_a_user_error(monkeypatch):
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)  # `import rich` now raises ModuleNotFoundError
    result = CliRunner().invoke(cli, ["models", "list"])
    assert result.exit_code == 2
    assert "pip install 'axisguard[calibrate]'" in result.output


def test_other_missing_modules_are_not_hidden():
    assert missing_extra(ModuleNotFoundError("no", name="axisguard_typo")) is None
    assert missing_extra(ModuleNotFoundError("no", name="matplotlib.pyplot")).hint == "pip install 'axisguard[report]'"
