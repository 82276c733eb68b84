"""Broken bundles fail before an engine starts, with one line naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from uld_vllm.bundle import BundleError
from uld_vllm.engine import preflight


@pytest.fixture
def bundle_copy(bundle_factory, tmp_path) -> Path:
    source = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    return Path(shutil.copytree(source, tmp_path / "bundle"))


def edit_config(bundle: Path, **changes) -> None:
    config = json.loads((bundle / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("uld_"):
            config["uld"][key[4:]] = value
        else:
            config[key] = value
    (bundle / "config.json").write_text(json.dumps(config))


def edit_tensors(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def refusal(bundle: Path, **kwargs) -> str:
    with pytest.raises(BundleError) as info:
        preflight(bundle, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_healthy_bundle_passes(bundle_copy):
    assert preflight(bundle_copy).settings.assistant_layers == 2


def test_unsupported_family_is_refused(bundle_copy):
    edit_config(bundle_copy, model_type="gpt2")
    assert "gpt2" in refusal(bundle_copy) and "not supported" in refusal(bundle_copy)


@pytest.mark.parametrize("layers", [0, 5])
def test_assistant_depth_out_of_range_is_refused(bundle_copy, layers):
    edit_config(bundle_copy, uld_assistant_layers=layers)
    assert "out of range" in refusal(bundle_copy)


def test_vocab_smaller_than_the_tokenizer_is_refused(bundle_copy):
    edit_config(bundle_copy, vocab_size=300)
    assert "vocab mismatch" in refusal(bundle_copy)


def test_nan_in_target_weights_is_refused(bundle_copy):
    edit_tensors(
        bundle_copy / "model.safetensors",
        lambda t: t["model.layers.3.mlp.down_proj.weight"].view(-1)[7].fill_(float("nan")),
    )
    assert "model.layers.3.mlp.down_proj.weight" in refusal(bundle_copy) and "NaN" in refusal(bundle_copy)


def test_nan_in_the_adapter_is_refused(bundle_copy):
    path = bundle_copy / "assistant" / "adapter_model.safetensors"
    edit_tensors(path, lambda t: next(v for k, v in sorted(t.items()) if "lora_B" in k).view(-1)[0].fill_(float("nan")))
    assert "NaN" in refusal(bundle_copy)


def test_adapter_shaped_for_another_target_is_refused(bundle_copy):
    def widen(tensors):
        name = next(k for k in sorted(tensors) if "q_proj.lora_A" in k)
        tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] * 2)

    edit_tensors(bundle_copy / "assistant" / "adapter_model.safetensors", widen)
    assert "shape" in refusal(bundle_copy)


def test_bad_engine_overrides_are_refused(bundle_copy):
    assert "filter" in refusal(bundle_copy, filter=1.5)
    assert "weight" in refusal(bundle_copy, weight=float("nan"))


def test_missing_bundle_is_refused(tmp_path):
    assert "not found" in refusal(tmp_path / "nowhere")


def test_pipeline_parallelism_is_refused_before_an_engine_starts(bundle_copy):
    from uld_vllm.engine import make_llm

    with pytest.raises(BundleError, match="pipeline parallelism is not supported"):
        make_llm(bundle_copy, pipeline_parallel_size=2)


def test_settings_vllm_refuses_at_engine_construction_are_one_line(bundle_copy):
    from uld_vllm.engine import make_llm
    from uld_vllm.errors import UldError

    with pytest.raises(UldError) as refused:
        make_llm(bundle_copy, check=False, max_model_len=100_000, enforce_eager=True, kv_cache_memory_bytes=32 << 20)
    message = str(refused.value)
    assert message.startswith("vLLM refused the engine settings") and "max_model_len" in message
    assert "\n" not in message
