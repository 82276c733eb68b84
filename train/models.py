"""The models a run trains: the ULD assistant (target's first K layers + LoRA) or a whole target for the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from uld_train.config import TrainError
from uld_vllm.assistant import (
    LORA_TARGET_MODULES,
    AssistantError,
    assistant_config,
    assistant_tensors_from_target,
    check_family,
    safetensors_files,
)


def target_config(target: Path):
    """The target's transformers config, after the checks every method needs (directory, weights, family)."""
    from transformers import AutoConfig

    if not target.is_dir():
        raise TrainError(f"target checkpoint directory not found: {target}")
    if not (target / "config.json").is_file():
        raise TrainError(f"target {target} has no config.json (expected an HF checkpoint directory)")
    raw = json.loads((target / "config.json").read_text())
    if "uld" in raw:
        raise TrainError(f"target {target} is a ULD bundle; train from the plain target checkpoint")
    try:
        check_family(raw)
        safetensors_files(target)
    except AssistantError as e:
        raise TrainError(str(e)) from None
    return AutoConfig.from_pretrained(target)


def load_tokenizer(target: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as e:
        raise TrainError(f"cannot load the tokenizer of {target}: {str(e).splitlines()[0]}") from None


def default_layers(depth: int) -> int:
    """A quarter of the target's depth (the reference pairs an 8-layer assistant with 32-layer Llama-2-7B)."""
    return max(1, depth // 4)


def build_assistant_base(target: Path, layers: int, dtype: torch.dtype):
    """The untrained assistant: layers 0..K-1 + embeddings + final norm + LM head, read straight from safetensors.

    Only the K layers are read, never the whole target (a 70B target's assistant costs its K layers in memory).
    """
    from transformers import AutoModelForCausalLM

    try:
        config = assistant_config(target_config(target), layers)
    except AssistantError as e:
        raise TrainError(str(e)) from None
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = assistant_tensors_from_target(target, layers)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise TrainError(
            f"target {target} does not fit its own config: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    model.config._name_or_path = str(target.resolve())  # recorded in adapter_config.json as the base model
    return model


def load_target(target: Path, dtype: torch.dtype):
    """The whole target, for the baselines and as their frozen reference."""
    from transformers import AutoModelForCausalLM

    target_config(target)
    return AutoModelForCausalLM.from_pretrained(target, dtype=dtype)


def add_lora(model, r: int, alpha: float, dropout: float):
    """LoRA on q,k,v,o,gate,up,down of every layer; embeddings, norms and LM head stay frozen (reference config)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias="none",
        target_modules=list(LORA_TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model, lora: bool) -> None:
    """Recompute activations in backward to save memory.

    The LoRA pitfall: embeddings are frozen, so no checkpointed segment's input requires grad, and reentrant
    checkpointing then silently drops the LoRA gradients. We use the non-reentrant kind and still make the
    embedding output require grad (enable_input_require_grads), so neither choice loses gradients.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        model.enable_input_require_grads()


def logits(model, batch) -> torch.Tensor:
    """(B, T, V) logits of a batch; no KV cache in training."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
