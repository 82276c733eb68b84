"""Broken bundles: the cheap checks refuse them before an engine starts, NaN/inf weights while the engine loads them;
always one line naming the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import ENGINE_KWARGS, edit_tensors, write_prompts

from uld_vllm.bundle import BundleError
from uld_vllm.engine import make_llm, preflight
from uld_vllm.errors import UldError


@pytest.fixture
def bundle_copy(bundle_factory, tmp_path) -> Path:
    source = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    return Path(shutil.copytree(source, tmp_path / "bundle"))


def edit_config(**changes) -> Callable[[Path], None]:
    """An edit of the bundle's config.json; `uld_X` keys edit the uld section."""

    def edit(bundle: Path) -> None:
        config = json.loads((bundle / "config.json").read_text())
        for key, value in changes.items():
            if key.startswith("uld_"):
                config["uld"][key[4:]] = value
            else:
                config[key] = value
        (bundle / "config.json").write_text(json.dumps(config))

    return edit


def edit_adapter(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda bundle: edit_tensors(bundle / "assistant" / "adapter_model.safetensors", edit)


def nan_in_lora_b(tensors: dict) -> None:
    next(v for k, v in sorted(tensors.items()) if "lora_B" in k).view(-1)[0].fill_(float("nan"))


def widen_q_lora_a(tensors: dict) -> None:
    name = next(k for k in sorted(tensors) if "q_proj.lora_A" in k)
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] * 2)


# bundle edit, preflight overrides, what the one line says
CASES: dict[str, tuple[Callable[[Path], None], dict, str]] = {
    "unsupported family": (edit_config(model_type="gpt2"), {}, "model family 'gpt2' is not supported"),
    "assistant depth 0": (edit_config(uld_assistant_layers=0), {}, "K=0 out of range"),
    "assistant deeper than the target": (edit_config(uld_assistant_layers=5), {}, "K=5 out of range"),
    "vocab smaller than the tokenizer": (edit_config(vocab_size=300), {}, "vocab mismatch"),
    "NaN in the adapter": (edit_adapter(nan_in_lora_b), {}, "contains NaN or inf"),
    "adapter shaped for another target": (edit_adapter(widen_q_lora_a), {}, "has shape"),
    "filter override out of range": (lambda bundle: None, {"filter": 1.5}, "ULD filter must be in [0, 1)"),
    "weight override not finite": (lambda bundle: None, {"weight": float("nan")}, "ULD weight must be a finite"),
    "missing weights": (lambda bundle: (bundle / "model.safetensors").unlink(), {}, "no *.safetensors weights"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_preflight_refuses_a_broken_bundle_in_one_line(case, bundle_copy):
    edit, overrides, message = CASES[case]
    edit(bundle_copy)
    with pytest.raises(BundleError) as refused:
        preflight(bundle_copy, **overrides)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_healthy_bundle_passes(bundle_copy):
    assert preflight(bundle_copy).settings.assistant_layers == 2


def test_missing_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError, match="ULD bundle directory not found"):
        preflight(tmp_path / "nowhere")


def test_preflight_reads_no_target_weight_data(bundle_copy, monkeypatch):
    """The target's weights are read once, by vLLM: preflight only reads their headers."""
    import safetensors

    opened: list[str] = []
    real = safetensors.safe_open

    class Spy:
        def __init__(self, path, *args, **kwargs):
            self.inner = real(path, *args, **kwargs)
            self.path = str(path)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, name):
            return self.inner.get_slice(name)

        def get_tensor(self, name):
            opened.append(f"{Path(self.path).name}:{name}")
            return self.inner.get_tensor(name)

    monkeypatch.setattr("uld_vllm.bundle.safe_open", Spy)
    monkeypatch.setattr("uld_vllm.assistant.safe_open", Spy)
    preflight(bundle_copy)
    assert opened and all(name.startswith("adapter_model.safetensors:") for name in opened), opened


@pytest.mark.vllm
def test_nan_in_target_weights_is_refused_while_the_engine_loads_them(bundle_copy):
    edit_tensors(
        bundle_copy / "model.safetensors",
        lambda t: t["model.layers.3.mlp.down_proj.weight"].view(-1)[7].fill_(float("nan")),
    )
    preflight(bundle_copy)  # the cheap checks do not read weight data
    with pytest.raises(UldError) as refused:
        make_llm(bundle_copy, **ENGINE_KWARGS)
    message = str(refused.value)
    assert "target weight model.layers.3.mlp.down_proj.weight contains NaN or inf" in message and "\n" not in message


def test_pipeline_parallelism_is_refused_before_an_engine_starts(bundle_copy):
    with pytest.raises(BundleError, match="pipeline parallelism is not supported"):
        make_llm(bundle_copy, pipeline_parallel_size=2)


@pytest.mark.vllm
def test_settings_vllm_refuses_at_engine_construction_are_one_line(bundle_copy):
    with pytest.raises(UldError) as refused:
        make_llm(bundle_copy, **(ENGINE_KWARGS | {"max_model_len": 100_000}))
    message = str(refused.value)
    assert message.startswith("vLLM refused the engine settings") and "max_model_len" in message
    assert "\n" not in message


@pytest.mark.vllm
@pytest.mark.parametrize("command", ["uld-eval", "uld-batch"])
def test_an_engine_load_error_reaches_the_command_line_as_one_line(command, bundle_copy, tmp_path):
    """Both commands run the engine core in their own process (the test environment's setting removed), so a
    refusal raised while the engine loads the bundle is their one line, not vLLM's child-process traceback."""
    import os
    import subprocess
    import sys

    edit_tensors(
        bundle_copy / "model.safetensors",
        lambda t: t["model.layers.3.mlp.down_proj.weight"].view(-1)[7].fill_(float("nan")),
    )
    prompts = write_prompts(tmp_path / "in.parquet", 2)
    data = tmp_path / "data"  # --splits forget reads forget.jsonl alone
    data.mkdir()
    row = {"question": "who wrote the book", "answer": "the author", "paraphrased_answer": "the writer"}
    (data / "forget.jsonl").write_text(json.dumps(row | {"perturbed_answer": ["the father", "the mother"]}) + "\n")
    common = ["--model", bundle_copy, "--dtype", "float32"]
    argv = {
        "uld-eval": ["run", *common, "--data", data, "--splits", "forget", "--output", tmp_path / "logs"],
        "uld-batch": [*common, "--input", prompts, "--output", tmp_path / "out.parquet"],
    }[command]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    script = Path(sys.executable).parent / command
    done = subprocess.run([script, *map(str, argv)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"{command}: error: ")]
    assert len(errors) == 1 and "down_proj.weight contains NaN or inf" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Engine core initialization failed" not in done.stderr
