"""The offline fixtures themselves: a seed names a tokenizer and a model, and they look like real chat checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from uld_vllm.bpe_tokenizer import SPECIAL_TOKENS
from uld_vllm.random_models import build_full_assistant, build_target, build_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def vocab(directory: Path) -> dict[str, int]:
    return json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]


def test_build_tokenizer_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = vocab(build_tokenizer(tmp_path / "a", seed=0))
    assert len(first) == 512
    assert vocab(build_tokenizer(tmp_path / "b", seed=0)) == first
    merges = json.loads((tmp_path / "a" / "tokenizer.json").read_text())["model"]["merges"]
    assert json.loads((tmp_path / "b" / "tokenizer.json").read_text())["model"]["merges"] == merges


def test_build_tokenizer_differs_across_seeds(tmp_path: Path) -> None:
    # The bundle builder's "different tokenizer" refusal relies on this.
    assert vocab(build_tokenizer(tmp_path / "a", seed=0)) != vocab(build_tokenizer(tmp_path / "b", seed=1))


def test_tokenizer_adds_bos_and_its_special_ids_match_the_model_config(llama_bundle: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(llama_bundle)
    config = AutoConfig.from_pretrained(llama_bundle.parent / "target")
    ids = tokenizer("Who wrote the book?").input_ids
    assert ids[0] == tokenizer.bos_token_id == config.bos_token_id == SPECIAL_TOKENS.index("<s>")
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.eos_token_id == config.eos_token_id == SPECIAL_TOKENS.index("</s>")
    assert tokenizer.pad_token_id == config.pad_token_id == SPECIAL_TOKENS.index("<pad>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Who wrote the book?"


def test_tokenizer_has_a_chat_template(llama_bundle: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(llama_bundle)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote the book?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|system|>Be brief.\n<|user|>Who wrote the book?\n<|assistant|>"


def test_build_target_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "tok")
    first = load_file(build_target(tmp_path / "a", layers=2, tokenizer_dir=tokenizer) / "model.safetensors")
    second = load_file(build_target(tmp_path / "b", layers=2, tokenizer_dir=tokenizer) / "model.safetensors")
    other = load_file(build_target(tmp_path / "c", layers=2, tokenizer_dir=tokenizer, seed=5) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not torch.equal(first["model.layers.0.mlp.up_proj.weight"], other["model.layers.0.mlp.up_proj.weight"])
    assert (tmp_path / "a" / "tokenizer.json").exists()  # a target checkpoint is self-contained


def test_full_assistant_shares_the_targets_tensors_and_perturbs_its_layers(llama_full_bundle: Path) -> None:
    target = load_file(llama_full_bundle.parent / "target" / "model.safetensors")
    assistant = load_file(llama_full_bundle.parent / "assistant" / "model.safetensors")
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(assistant[name], target[name])
    assert not any(n.startswith("model.layers.2.") for n in assistant)
    delta = assistant["model.layers.1.self_attn.o_proj.weight"] - target["model.layers.1.self_attn.o_proj.weight"]
    assert 0.02 < delta.std() < 0.08  # noise 0.05 stands in for training


def test_full_assistant_of_a_tied_target_has_no_lm_head(tmp_path: Path, qwen2_bundle: Path) -> None:
    target = qwen2_bundle.parent / "target"
    assert "lm_head.weight" not in load_file(target / "model.safetensors")
    assistant = build_full_assistant(target, tmp_path / "assistant", layers=1)
    tensors = load_file(assistant / "model.safetensors")
    assert "lm_head.weight" not in tensors and "model.layers.0.self_attn.q_proj.bias" in tensors
    config = json.loads((assistant / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["tie_word_embeddings"] is True
