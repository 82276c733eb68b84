"""The vLLM plugin: hooks installed once, checked against what they replace, never raising in vLLM's processes."""

from __future__ import annotations

import logging

import pytest
from helpers import refusal

from uld_vllm import plugin


def test_register_installs_the_scoring_seed_and_cache_hooks_once():
    import torch.compiler

    plugin.register()
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    load = torch.compiler.load_compiled_function
    assert plugin._is_wrapped(load, "_uld_cache_load")

    hooked = GPUModelRunner._get_prompt_logprobs_dict
    assert plugin.scoring_hooks_installed() and hooked._uld_scoring
    sample = GPUModelRunner._sample
    assert plugin._is_wrapped(sample, "_uld_seed_rewind") and plugin._is_wrapped(sample, "_uld_fused")
    plugin.register()  # vLLM calls it in every process, possibly more than once
    assert GPUModelRunner._get_prompt_logprobs_dict is hooked  # not wrapped twice
    assert GPUModelRunner._sample is sample
    assert torch.compiler.load_compiled_function is load
    assert not getattr(hooked.__wrapped__, "_uld_scoring", False)
    from vllm import ModelRegistry

    assert "ULDForCausalLM" in ModelRegistry.get_supported_archs()


def test_a_method_with_another_signature_is_left_alone_with_one_warning(caplog):
    patch = plugin.Patch("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_sample", ("self", "renamed"))
    with caplog.at_level(logging.WARNING, logger="uld_vllm"):
        assert patch.target() is None
    assert len(caplog.records) == 1 and "left alone" in caplog.records[0].getMessage()
    assert plugin.Patch("vllm.no_such_module", "X", "y", ()).target() is None


def test_register_never_raises(monkeypatch, caplog):
    def broken() -> None:
        raise AttributeError("a renamed vLLM internal")

    monkeypatch.setattr(plugin, "_register_model", broken)
    monkeypatch.setattr(plugin, "install_cpu_seed_rewind", broken)
    with caplog.at_level(logging.WARNING, logger="uld_vllm"):
        plugin.register()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("left vLLM unchanged" in m for m in messages) == 2


def test_uld_eval_refuses_to_score_a_bundle_without_the_scoring_hook(monkeypatch, llama_bundle, tmp_path, capsys):
    from eval.eval_data import write_eval_dir

    from uld_vllm.eval.cli import main

    data = write_eval_dir(tmp_path / "data")
    monkeypatch.setattr(plugin, "scoring_hooks_installed", lambda: False)
    err = refusal(capsys, main, "run", "--model", llama_bundle, "--data", data, "--output", tmp_path / "o")
    assert err.startswith("this vLLM's prompt-logprob entry point could not be hooked")


@pytest.mark.parametrize("version, warns", [("0.32.0+cpu", False), ("0.33.0", True)])
def test_an_untested_vllm_version_is_named(monkeypatch, caplog, version, warns):
    monkeypatch.setattr(plugin, "_vllm_version", lambda: version)
    with caplog.at_level(logging.WARNING, logger="uld_vllm"):
        plugin.register()
    assert any("tested with vLLM" in r.getMessage() for r in caplog.records) == warns
