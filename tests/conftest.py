"""Shared fixtures: tiny real models (random weights, real tokenizer) and an isolated cache home."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The CPU is shared with other jobs; two threads is what the tests are sized for.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llama():
    """A 4-layer, d=64 random Llama with the tiny byte-level tokenizer (a ``LoadedModel``).

    Shared by the whole session: tests may hook it but must remove their hooks."""
    from integrations.tiny_models import build_tiny_model

    return build_tiny_model("llama", 64, num_layers=4, seed=0)


@pytest.fixture
def axisguard_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$AXISGUARD_HOME`` pointed at an empty temp folder for the test."""
    home = tmp_path / "axisguard-home"
    home.mkdir()
    monkeypatch.setenv("AXISGUARD_HOME", str(home))
    return home
