"""The bundle format and the `uld-bundle` builder: round trips, and one-line refusals of unusable ingredients."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import edit_json, edit_tensors, refusal
from safetensors.torch import load_file

from uld_vllm.assistant import AssistantError, check_finite
from uld_vllm.bundle import ARCHITECTURE, BundleError, assistant_layer_tensors, build_bundle, main, read_bundle
from uld_vllm.random_models import build_full_assistant, build_lora_assistant, build_target, build_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def ingredients(bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Private copies of a bundle's target and assistant, safe to edit."""
    target, assistant = tmp_path / "target", tmp_path / "assistant"
    shutil.copytree(bundle.parent / "target", target)
    shutil.copytree(bundle.parent / "assistant", assistant)
    return target, assistant


def cli(target: Path, assistant: Path, output: Path, *extra: str) -> list[str]:
    return ["--target", str(target), "--assistant", str(assistant), "--output", str(output), *extra]


# ----------------------------------------------------------------------------------------------------- round trips


def test_lora_bundle_round_trips_settings_and_merges_alpha_over_r_b_at_a(llama_bundle: Path) -> None:
    bundle = read_bundle(llama_bundle)
    assert bundle.settings.assistant_format == "lora"
    assert (bundle.settings.assistant_layers, bundle.settings.weight, bundle.settings.filter) == (2, -0.8, 0.1)
    assert bundle.config["architectures"] == [ARCHITECTURE] and bundle.config["model_type"] == "llama"
    assert bundle.num_layers == 4

    target = load_file(llama_bundle.parent / "target" / "model.safetensors")
    adapter = load_file(llama_bundle.parent / "assistant" / "adapter_model.safetensors")
    config = json.loads((llama_bundle.parent / "assistant" / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]  # 16 / 8
    got = assistant_layer_tensors(bundle)

    layer_names = {n for n in target if n.startswith(("model.layers.0.", "model.layers.1."))}
    assert set(got) == layer_names  # layers 0..K-1 only, norms included, no shared tensors
    updated = 0
    for name in layer_names:
        a_name = f"base_model.model.{name.removesuffix('.weight')}.lora_A.weight"
        if a_name in adapter:
            lora_b = adapter[a_name.replace("lora_A", "lora_B")].double()
            want = target[name].double() + scaling * lora_b @ adapter[a_name].double()
            updated += 1
        else:
            want = target[name].double()
        torch.testing.assert_close(got[name].double(), want, rtol=1e-5, atol=1e-5)
    assert updated == 2 * 7  # q, k, v, o, gate, up, down in both layers


def test_full_bundle_round_trips_and_stores_only_the_k_layers(llama_full_bundle: Path) -> None:
    bundle = read_bundle(llama_full_bundle)
    assert bundle.settings.assistant_format == "full"
    assert (bundle.settings.assistant_layers, bundle.settings.weight, bundle.settings.filter) == (2, -0.8, 0.0)
    stored = load_file(bundle.assistant_dir / "model.safetensors")
    assert all(n.startswith(("model.layers.0.", "model.layers.1.")) for n in stored)  # shared tensors not copied
    assert json.loads((bundle.assistant_dir / "config.json").read_text())["num_hidden_layers"] == 2

    checkpoint = load_file(llama_full_bundle.parent / "assistant" / "model.safetensors")
    got = assistant_layer_tensors(bundle)
    assert set(got) == set(stored)
    for name, tensor in got.items():
        assert torch.equal(tensor, checkpoint[name])
    target = load_file(llama_full_bundle.parent / "target" / "model.safetensors")
    assert not torch.equal(
        got["model.layers.0.self_attn.q_proj.weight"], target["model.layers.0.self_attn.q_proj.weight"]
    )


def test_bundle_carries_the_targets_weights_and_tokenizer(qwen2_bundle: Path) -> None:
    target = qwen2_bundle.parent / "target"
    assert (qwen2_bundle / "model.safetensors").read_bytes() == (target / "model.safetensors").read_bytes()
    assert not (qwen2_bundle / "model.safetensors").is_symlink()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (qwen2_bundle / name).read_text() == (target / name).read_text()
    config = json.loads((qwen2_bundle / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["uld"]["assistant_layers"] == 2


def test_cli_writes_a_bundle_and_returns_zero(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = llama_bundle.parent / "target", llama_bundle.parent / "assistant"
    out = tmp_path / "bundle"
    assert main(cli(target, assistant, out, "--weight", "-1.0", "--filter", "0.01")) == 0
    assert "K=2, lora assistant" in capsys.readouterr().out
    settings = read_bundle(out).settings
    assert (settings.weight, settings.filter, settings.assistant_layers) == (-1.0, 0.01, 2)
    assert not list(tmp_path.glob("*.partial"))  # the staging directory was renamed into place


def test_cli_min_keep_is_written_only_when_set_and_refused_below_one(llama_bundle: Path, tmp_path: Path, capsys):
    target, assistant = llama_bundle.parent / "target", llama_bundle.parent / "assistant"
    assert main(cli(target, assistant, tmp_path / "floor", "--filter", "0.1", "--min-keep", "8")) == 0
    assert "min_keep=8" in capsys.readouterr().out and read_bundle(tmp_path / "floor").settings.min_keep == 8
    assert read_bundle(llama_bundle).settings.min_keep is None
    assert "min_keep" not in json.loads((llama_bundle / "config.json").read_text())["uld"]  # older readers' section
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "bad", "--min-keep", "0"))
    assert "min_keep must be a whole number >= 1" in message and not (tmp_path / "bad").exists()


def test_cli_layers_extends_a_lora_assistant_past_the_adapters_depth(llama_bundle: Path, tmp_path: Path) -> None:
    # K=3 with an adapter on layers 0..1: layer 2 is the target's own, unmodified.
    out = tmp_path / "bundle"
    assert main(cli(llama_bundle.parent / "target", llama_bundle.parent / "assistant", out, "--layers", "3")) == 0
    got = assistant_layer_tensors(read_bundle(out))
    target = load_file(llama_bundle.parent / "target" / "model.safetensors")
    name = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(got[name], target[name]) and "model.layers.3.mlp.down_proj.weight" not in got


def test_cli_link_target_symlinks_the_targets_weights(llama_full_bundle: Path, tmp_path: Path) -> None:
    target, assistant = llama_full_bundle.parent / "target", llama_full_bundle.parent / "assistant"
    out = tmp_path / "bundle"
    assert main(cli(target, assistant, out, "--link-target")) == 0
    link = out / "model.safetensors"
    assert link.is_symlink() and link.resolve() == (target / "model.safetensors").resolve()
    assert not (out / "assistant" / "model.safetensors").is_symlink()
    assert not (out / "tokenizer.json").is_symlink()
    assert assistant_layer_tensors(read_bundle(out))  # the linked bundle reads back


def test_cli_replaces_an_existing_output(llama_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main(cli(llama_bundle.parent / "target", llama_bundle.parent / "assistant", out)) == 0
    assert not (out / "stale.txt").exists() and read_bundle(out).settings.filter == 0.0


# -------------------------------------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def deep_target(tmp_path_factory: pytest.TempPathFactory, llama_bundle: Path) -> Path:
    """A 6-layer llama sharing llama_bundle's tokenizer (for assistants deeper than the 4-layer target)."""
    return build_target(
        tmp_path_factory.mktemp("deep") / "target", layers=6, tokenizer_dir=llama_bundle.parent / "target"
    )


def test_refuses_mismatched_vocab_sizes(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    tokenizer = build_tokenizer(tmp_path / "tokenizer", vocab_size=600)
    other = build_target(tmp_path / "other", tokenizer_dir=tokenizer)
    assistant = build_full_assistant(other, tmp_path / "assistant", layers=2)
    message = refusal(capsys, main, *cli(llama_bundle.parent / "target", assistant, tmp_path / "out"))
    assert message == "vocab mismatch: target has 512 tokens, assistant 600"
    assert not (tmp_path / "out").exists()


def test_refuses_an_assistant_with_a_different_tokenizer(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    _, assistant = ingredients(llama_bundle, tmp_path)
    build_tokenizer(assistant, seed=1)  # same size, different merges: ids mean other strings
    message = refusal(capsys, main, *cli(llama_bundle.parent / "target", assistant, tmp_path / "out"))
    assert message.startswith(f"assistant tokenizer in {assistant} differs from the target's (")
    assert message.endswith("vocabulary entries differ)")


def test_accepts_an_assistant_shipping_the_same_tokenizer(llama_bundle: Path, tmp_path: Path) -> None:
    target, assistant = ingredients(llama_bundle, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(target / name, assistant / name)
    assert main(cli(target, assistant, tmp_path / "out")) == 0


def test_refuses_a_full_assistant_deeper_than_the_target(
    llama_bundle: Path, deep_target: Path, tmp_path: Path, capsys
) -> None:
    assistant = build_full_assistant(deep_target, tmp_path / "assistant", layers=5)
    message = refusal(capsys, main, *cli(llama_bundle.parent / "target", assistant, tmp_path / "out"))
    assert message == "assistant layers K=5 out of range: the target has 4 layers (1 <= K <= 4)"


def test_refuses_a_lora_adapter_deeper_than_the_target(
    llama_bundle: Path, deep_target: Path, tmp_path: Path, capsys
) -> None:
    adapter = build_lora_assistant(deep_target, tmp_path / "adapter", layers=6)
    message = refusal(capsys, main, *cli(llama_bundle.parent / "target", adapter, tmp_path / "out"))
    assert message == "assistant layers K=6 out of range: the target has 4 layers (1 <= K <= 4)"


def test_refuses_layers_beyond_the_target_or_short_of_the_adapter(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = llama_bundle.parent / "target", llama_bundle.parent / "assistant"
    assert (
        refusal(capsys, main, *cli(target, assistant, tmp_path / "a", "--layers", "5"))
        == "assistant layers K=5 out of range: the target has 4 layers (1 <= K <= 4)"
    )
    assert refusal(capsys, main, *cli(target, assistant, tmp_path / "b", "--layers", "1")) == (
        "--layers 1 is shallower than the adapter, which touches 2 layers"
    )


def test_refuses_layers_that_contradict_a_full_assistant(llama_full_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = llama_full_bundle.parent / "target", llama_full_bundle.parent / "assistant"
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "out", "--layers", "3"))
    assert message == "--layers 3 differs from the assistant checkpoint's 2 layers"


def test_refuses_an_unknown_target_family(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = ingredients(llama_bundle, tmp_path)
    edit_json(target / "config.json", model_type="gpt2")
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "out"))
    assert message == "target model family 'gpt2' is not supported (supported: llama, mistral, qwen2)"


def test_refuses_an_unknown_assistant_family(llama_full_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = ingredients(llama_full_bundle, tmp_path)
    edit_json(assistant / "config.json", model_type="gpt2")
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "out"))
    assert message == "assistant model family 'gpt2' is not supported (supported: llama, mistral, qwen2)"


def test_refuses_an_assistant_of_another_supported_family(llama_full_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = ingredients(llama_full_bundle, tmp_path)
    edit_json(assistant / "config.json", model_type="mistral")
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "out"))
    assert message == "assistant family 'mistral' differs from the target's 'llama'"


def test_refuses_missing_directories(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = llama_bundle.parent / "target", llama_bundle.parent / "assistant"
    nowhere = tmp_path / "nowhere"
    assert (
        refusal(capsys, main, *cli(nowhere, assistant, tmp_path / "out"))
        == f"target checkpoint directory not found: {nowhere}"
    )
    assert refusal(capsys, main, *cli(target, nowhere, tmp_path / "out")) == f"assistant directory not found: {nowhere}"
    assert not (tmp_path / "out").exists()


def test_refuses_a_target_without_config_weights_or_tokenizer(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = ingredients(llama_bundle, tmp_path)
    (target / "tokenizer.json").unlink()
    assert refusal(capsys, main, *cli(target, assistant, tmp_path / "out")) == (
        f"target {target} has no tokenizer files (tokenizer.json or tokenizer.model)"
    )
    (target / "model.safetensors").unlink()
    assert refusal(capsys, main, *cli(target, assistant, tmp_path / "out")) == (
        f"no *.safetensors weights in {target} (convert the checkpoint to safetensors)"
    )
    (target / "config.json").unlink()
    assert (
        refusal(capsys, main, *cli(target, assistant, tmp_path / "out"))
        == f"target config not found: {target / 'config.json'}"
    )


def test_refuses_an_assistant_that_is_neither_adapter_nor_checkpoint(
    llama_bundle: Path, tmp_path: Path, capsys
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    message = refusal(capsys, main, *cli(llama_bundle.parent / "target", empty, tmp_path / "out"))
    assert message == (
        f"assistant {empty} is neither a PEFT adapter (adapter_config.json) nor an HF checkpoint (config.json)"
    )


def test_refuses_an_adapter_without_weights(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = ingredients(llama_bundle, tmp_path)
    (assistant / "adapter_model.safetensors").unlink()
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "out"))
    assert message == f"assistant adapter weights missing: {assistant / 'adapter_model.safetensors'}"


def test_refuses_a_target_that_is_already_a_bundle(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    message = refusal(capsys, main, *cli(llama_bundle, llama_bundle.parent / "assistant", tmp_path / "out"))
    assert message == f"target {llama_bundle} is itself a ULD bundle; pass the plain target checkpoint"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_refuses_non_finite_full_assistant_weights_and_writes_nothing(
    value: float, llama_full_bundle: Path, tmp_path: Path, capsys
) -> None:
    target, assistant = ingredients(llama_full_bundle, tmp_path)

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = value

    edit_tensors(assistant / "model.safetensors", poison)
    out = tmp_path / "out"
    message = refusal(capsys, main, *cli(target, assistant, out))
    assert message == "assistant weight model.layers.1.mlp.up_proj.weight contains NaN or inf"
    assert not out.exists() and not list(tmp_path.glob("*.partial"))  # a refused bundle is not left behind


FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float8_e5m2]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_finite_check_finds_one_bad_entry_anywhere(dtype: torch.dtype, value: float) -> None:
    tensor = torch.randn(257, 33).to(dtype)
    tensor.view(-1)[int(torch.randint(0, tensor.numel(), ()))] = value
    with pytest.raises(AssistantError, match="^assistant weight w contains NaN or inf$"):
        check_finite("w", tensor, "assistant")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_the_finite_check_passes_finite_empty_and_integer_tensors(dtype: torch.dtype) -> None:
    tensor = torch.randn(257, 33).to(dtype)
    check_finite("w", tensor, "assistant")
    check_finite("w", tensor[:0], "assistant")
    check_finite("w", torch.full((4,), 7, dtype=torch.int64), "assistant")


def test_refuses_nan_in_a_lora_adapter(llama_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = ingredients(llama_bundle, tmp_path)

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"][0, 0] = float("nan")

    edit_tensors(assistant / "adapter_model.safetensors", poison)
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "out"))
    assert message == "assistant adapter weight model.layers.0.self_attn.v_proj.weight (LoRA B) contains NaN or inf"
    assert not (tmp_path / "out").exists()


def test_a_refused_build_keeps_an_existing_output(llama_full_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = ingredients(llama_full_bundle, tmp_path)
    out = tmp_path / "out"
    assert main(cli(target, assistant, out)) == 0
    edit_tensors(
        assistant / "model.safetensors", lambda t: t["model.layers.0.input_layernorm.weight"].fill_(float("nan"))
    )
    refusal(capsys, main, *cli(target, assistant, out))
    assert assistant_layer_tensors(read_bundle(out))  # the good bundle from the first build is intact


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"])
def test_refuses_a_full_assistant_whose_shared_tensors_differ(
    name: str, llama_full_bundle: Path, tmp_path: Path, capsys
) -> None:
    target, assistant = ingredients(llama_full_bundle, tmp_path)
    edit_tensors(assistant / "model.safetensors", lambda t: t[name].mul_(1.01))
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "out"))
    assert message == f"assistant {name} differs from the target's: ULD shares embeddings, final norm and LM head"


def test_refuses_a_full_assistant_of_another_width(llama_full_bundle: Path, tmp_path: Path, capsys) -> None:
    target, assistant = ingredients(llama_full_bundle, tmp_path)
    edit_json(assistant / "config.json", intermediate_size=64)
    message = refusal(capsys, main, *cli(target, assistant, tmp_path / "out"))
    assert message == "assistant intermediate_size=64 differs from the target's 320"


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--weight", "nan", "ULD weight must be a finite number, got nan"),
        ("--weight", "inf", "ULD weight must be a finite number, got inf"),
        ("--filter", "1.0", "ULD filter must be in [0, 1), got 1.0"),
        ("--filter", "-0.1", "ULD filter must be in [0, 1), got -0.1"),
        ("--filter", "nan", "ULD filter must be in [0, 1), got nan"),
    ],
)
def test_refuses_bad_weight_or_filter(
    flag: str, value: str, expected: str, llama_bundle: Path, tmp_path: Path, capsys
) -> None:
    argv = cli(llama_bundle.parent / "target", llama_bundle.parent / "assistant", tmp_path / "out", flag, value)
    assert refusal(capsys, main, *argv) == expected
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------- read_bundle


def test_read_bundle_refuses_a_plain_checkpoint(llama_bundle: Path) -> None:
    target = llama_bundle.parent / "target"
    with pytest.raises(BundleError, match=r"is not a ULD bundle \(config.json lacks architectures"):
        read_bundle(target)


def test_read_bundle_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="ULD bundle directory not found"):
        read_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("uld", "expected"),
    [
        ({"assistant_layers": 2, "filter": 1.5}, r"ULD filter must be in \[0, 1\), got 1.5"),
        ({"assistant_layers": 9}, r"assistant layers K=9 out of range: the target has 4 layers \(1 <= K <= 4\)"),
        ({"assistant_layers": 2, "assistant_format": "gguf"}, "uld.assistant_format must be 'full' or 'lora'"),
        ({"assistant_layers": 2, "version": 2}, "bundle format version 2 is not supported"),
        ({"assistant_layers": 2, "colour": "red"}, "bad 'uld' section in"),
    ],
)
def test_read_bundle_refuses_bad_uld_settings(uld: dict, expected: str, llama_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(llama_bundle, bundle)
    edit_json(bundle / "config.json", uld=uld)
    with pytest.raises(BundleError, match=expected) as info:
        read_bundle(bundle)
    assert "\n" not in str(info.value)


def test_build_bundle_raises_bundle_error_for_library_callers(llama_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="ULD filter must be in"):
        build_bundle(llama_bundle.parent / "target", llama_bundle.parent / "assistant", tmp_path / "out", filter=2.0)
