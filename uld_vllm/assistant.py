"""The ULD assistant's shape: the target's first K layers plus its embeddings, final norm and LM head.

Paper section 3 / docs/ULD_REFERENCE.md section 1. Shared by the bundle builder, the reference decoder, the
vLLM model and the trainer, so the rules for "which tensors belong to the assistant" exist once.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PretrainedConfig

from uld_vllm.errors import UldError

# The one table of supported families: HF model_type -> the vLLM model class (in vllm.model_executor.models.<type>)
# that ULDForCausalLM instantiates twice. All have decoder layers `model.layers.{i}` with q/k/v/o + gate/up/down.
FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# LoRA goes on every linear layer of the K layers, never on lm_head or embeddings (reference config).
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.")


class AssistantError(UldError):
    """A checkpoint cannot serve as (or produce) a ULD assistant; the message is one line for the user."""


def layer_index(name: str) -> int | None:
    """Decoder-layer index of an HF weight name, or None for shared tensors (embeddings, final norm, LM head)."""
    match = _LAYER_NAME.match(name)
    return int(match.group(1)) if match else None


def check_family(config: PretrainedConfig | dict, what: str = "target") -> str:
    model_type = config["model_type"] if isinstance(config, dict) else config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise AssistantError(
            f"{what} model family {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return model_type


def check_depth(layers: int, depth: int) -> int:
    """The assistant is the target's first K layers: 1 <= K <= the target's depth."""
    if not 1 <= layers <= depth:
        raise AssistantError(
            f"assistant layers K={layers} out of range: the target has {depth} layers (1 <= K <= {depth})"
        )
    return layers


def assistant_config(target_config: PretrainedConfig, layers: int) -> PretrainedConfig:
    """The target's config cut to `layers` decoder layers, per-layer lists (e.g. Qwen2's layer_types) included."""
    check_family(target_config)
    depth = target_config.num_hidden_layers
    check_depth(layers, depth)
    config = copy.deepcopy(target_config)
    for key, value in config.to_dict().items():
        if isinstance(value, list) and len(value) == depth and key != "architectures":
            setattr(config, key, value[:layers])
    config.num_hidden_layers = layers
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(config.max_window_layers, layers)
    return config


def safetensors_files(checkpoint_dir: str | Path) -> list[Path]:
    files = sorted(Path(checkpoint_dir).glob("*.safetensors"))
    if not files:
        raise AssistantError(f"no *.safetensors weights in {checkpoint_dir} (convert the checkpoint to safetensors)")
    return files


def read_tensors(checkpoint_dir: str | Path, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """Only the named tensors a caller needs, read lazily: an assistant of a 70B target never loads the other layers."""
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(checkpoint_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if keep(name):
                    tensors[name] = f.get_tensor(name)
    return tensors


def assistant_tensors_from_target(target_dir: str | Path, layers: int) -> dict[str, torch.Tensor]:
    """HF state dict of the untrained assistant: target layers 0..K-1 plus shared tensors."""

    def keep(name: str) -> bool:
        index = layer_index(name)
        return index is None or index < layers

    return read_tensors(target_dir, keep)


def read_adapter_config(adapter_dir: str | Path) -> dict:
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise AssistantError(f"assistant adapter in {adapter_dir} is {config.get('peft_type')}, only LoRA is supported")
    if config.get("use_dora"):
        raise AssistantError(f"assistant adapter in {adapter_dir} uses DoRA, which uld does not merge")
    if config.get("bias", "none") != "none":
        raise AssistantError(
            f"assistant adapter in {adapter_dir} trains biases (bias={config['bias']!r}); use bias='none'"
        )
    if config.get("modules_to_save"):
        raise AssistantError(
            f"assistant adapter in {adapter_dir} saves full modules {config['modules_to_save']}; ULD shares them with the target"
        )
    return config


def read_adapter_weights(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise AssistantError(f"assistant adapter weights missing: {path}")
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?(model\.layers\.\d+\..+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraPair:
    """One LoRA update of a base weight: delta = scaling * B @ A."""

    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    scaling: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.b.shape[0], self.a.shape[1])

    def delta(self) -> torch.Tensor:
        return self.scaling * (self.b.float() @ self.a.float())  # (out, r) @ (r, in), float32


def lora_pairs(adapter_dir: str | Path) -> dict[str, LoraPair]:
    """Per base weight name, its LoRA pair, from a PEFT LoRA adapter directory."""
    config = read_adapter_config(adapter_dir)
    rank = config["r"]
    scaling = config["lora_alpha"] / (rank**0.5 if config.get("use_rslora") else rank)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in read_adapter_weights(adapter_dir).items():
        match = _LORA_NAME.match(name)
        if match is None:
            raise AssistantError(f"assistant adapter tensor {name!r} is not a LoRA weight of a decoder layer")
        halves.setdefault(match.group(1), {})[match.group(2)] = tensor
    pairs = {}
    for module, half in halves.items():
        if set(half) != {"A", "B"}:
            raise AssistantError(f"assistant adapter has an incomplete LoRA pair for {module}")
        pairs[f"{module}.weight"] = LoraPair(half["A"], half["B"], scaling)
    return pairs


def check_adapter(adapter_dir: str | Path, base_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, LoraPair]:
    """The adapter's pairs, each checked against the base weight it updates: among the assistant's layers
    (`base_shapes`: name -> shape, e.g. from safetensors headers), the same shape, finite. Cheap: reads the adapter only."""
    pairs = lora_pairs(adapter_dir)
    for name, pair in pairs.items():
        if name not in base_shapes:
            raise AssistantError(f"assistant adapter updates {name}, which is not among the assistant's layers")
        if pair.shape != tuple(base_shapes[name]):
            raise AssistantError(
                f"assistant adapter update for {name} has shape {pair.shape}, the weight {tuple(base_shapes[name])}"
            )
        check_finite(f"{name} (LoRA A)", pair.a, "assistant adapter")
        check_finite(f"{name} (LoRA B)", pair.b, "assistant adapter")
    return pairs


def check_finite(name: str, tensor: torch.Tensor, what: str) -> None:
    """The one NaN/inf check, run on each weight as it is loaded (never in a separate pass over the checkpoint).

    By the tensor's min and max: a NaN propagates into both and an inf is one of them, so the check is exact, and it
    is one read of the tensor with no (N,) mask written (`isfinite(t).all()` writes one: several times slower, a
    visible share of an engine start; bench/results/README.md)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor if tensor.element_size() > 1 else tensor.float())  # fp8 has no min/max kernel
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise AssistantError(f"{what} weight {name} contains NaN or inf")


def adapter_depth(adapter_dir: str | Path) -> int:
    """K implied by an adapter: one past the deepest layer it touches."""
    indices = [layer_index(name) for name in lora_pairs(adapter_dir)]
    if not indices:
        raise AssistantError(f"assistant adapter in {adapter_dir} holds no LoRA weights")
    return max(i for i in indices if i is not None) + 1


def merge_lora(base: dict[str, torch.Tensor], pairs: Mapping[str, LoraPair]) -> dict[str, torch.Tensor]:
    """Base layer tensors with checked LoRA pairs' updates added (new tensors; base's dtype kept)."""
    merged = dict(base)
    for name, pair in pairs.items():
        merged[name] = (base[name].float() + pair.delta()).to(base[name].dtype)
    return merged
