"""Random models built offline from a seed: tokenizers, target models, assistants and bundles (no hub, ever).

The benchmarks' models and the test suite's fixtures; deterministic, so a seed names a model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

from uld_vllm.assistant import LORA_TARGET_MODULES, assistant_config, assistant_tensors_from_target
from uld_vllm.bpe_tokenizer import train_bpe_tokenizer

_SYLLABLES = ["ka", "lo", "mi", "ter", "ran", "su", "vel", "do", "ph", "ine", "or", "an", "the", "qu", "est", "ion"]
_WORDS = [
    "author",
    "book",
    "born",
    "wrote",
    "city",
    "award",
    "genre",
    "father",
    "mother",
    "novel",
    "what",
    "who",
    "where",
    "when",
    "is",
    "the",
    "of",
    "in",
    "a",
    "was",
    "and",
    "his",
    "her",
    "their",
    "name",
    "year",
]


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    words = _WORDS + ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(400)]
    text = []
    for _ in range(lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        text.append(sentence.capitalize() + rng.choice([".", "?", "!", ",", " 1984.", " 42."]))
    return text


def build_tokenizer(directory: str | Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Byte-level BPE trained on a seeded synthetic corpus, saved as a transformers fast tokenizer (adds <s>)."""
    return train_bpe_tokenizer(directory, _corpus(seed), vocab_size)


def tokenizer_size(directory: str | Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(directory))


def _config(family: str, vocab_size: int, layers: int, hidden: int, heads: int, kv_heads: int, tie: bool):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        family,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2 + hidden // 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        rms_norm_eps=1e-6,
        torch_dtype="float32",
    )


def build_target(
    directory: str | Path,
    family: str = "llama",
    layers: int = 4,
    hidden: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    tie_word_embeddings: bool = False,
    tokenizer_dir: str | Path | None = None,
    head_std: float = 0.6,
    seed: int = 0,
    vocab_size: int | None = None,
    intermediate: int | None = None,
) -> Path:
    """A random causal LM with its tokenizer, saved as an HF checkpoint (safetensors, float32).

    vocab_size defaults to the tokenizer's size; a larger one (benchmark shapes, e.g. 32000) leaves ids the tokenizer
    cannot decode, so use it with token-id prompts and `skip_tokenizer_init`.

    Random LM heads give nearly flat next-token distributions, which make the relative-top filter keep every token
    and greedy ties likely; a head with std `head_std` gives entropies like a trained model's (a few nats).
    """
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else build_tokenizer(directory, seed=seed)
    vocab_size = max(vocab_size or 0, tokenizer_size(tokenizer_dir))
    torch.manual_seed(seed)
    config = _config(family, vocab_size, layers, hidden, heads, kv_heads, tie_word_embeddings)
    if intermediate is not None:
        config.intermediate_size = intermediate
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.08)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.02)
        model.get_output_embeddings().weight.normal_(0.0, head_std / hidden**0.5 * 4)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer_dir != directory:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return directory


def build_full_assistant(
    target_dir: str | Path, directory: str | Path, layers: int, noise: float = 0.05, seed: int = 1
) -> Path:
    """The ULD assistant as a full HF checkpoint: target's first K layers (+ noise, standing in for training)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    config = assistant_config(AutoConfig.from_pretrained(target_dir), layers)
    tensors = assistant_tensors_from_target(target_dir, layers)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in tensors.items():
        if ".layers." in name and tensor.ndim == 2:
            tensors[name] = tensor + noise * torch.randn(tensor.shape, generator=generator)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(not k.endswith("lm_head.weight") for k in missing):
        raise RuntimeError(f"assistant fixture: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def build_lora_assistant(
    target_dir: str | Path,
    directory: str | Path,
    layers: int,
    r: int = 8,
    alpha: int = 16,
    scale: float = 0.2,
    seed: int = 1,
) -> Path:
    """A PEFT LoRA adapter over the target's first K layers with random (non-zero) A and B."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = assistant_tensors_from_target(target_dir, layers)
    generator = torch.Generator().manual_seed(seed)
    adapter = {}
    for name, tensor in sorted(tensors.items()):
        module = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
        if module in LORA_TARGET_MODULES and tensor.ndim == 2:
            out_features, in_features = tensor.shape
            base = f"base_model.model.{name[: -len('.weight')]}"
            adapter[f"{base}.lora_A.weight"] = scale * torch.randn(r, in_features, generator=generator)
            adapter[f"{base}.lora_B.weight"] = scale * torch.randn(out_features, r, generator=generator)
    save_file(adapter, str(directory / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(target_dir),
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "bias": "none",
        "target_modules": list(LORA_TARGET_MODULES),
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return directory


def build_random_bundle(
    root: str | Path,
    family: str = "llama",
    layers: int = 4,
    assistant_layers: int = 2,
    assistant: str = "lora",
    weight: float = -0.8,
    filter: float = 0.0,
    tie_word_embeddings: bool = False,
    hidden: int = 128,
    seed: int = 0,
    target_kwargs: dict | None = None,
    min_keep: int | None = None,
) -> Path:
    """target + assistant + bundle under root; returns the bundle directory (target_kwargs go to build_target)."""
    from uld_vllm.bundle import build_bundle

    root = Path(root)
    target = build_target(
        root / "target",
        family=family,
        layers=layers,
        hidden=hidden,
        tie_word_embeddings=tie_word_embeddings,
        seed=seed,
        **(target_kwargs or {}),
    )
    if assistant == "lora":
        assistant_dir = build_lora_assistant(target, root / "assistant", assistant_layers, seed=seed + 1)
    else:
        assistant_dir = build_full_assistant(target, root / "assistant", assistant_layers, seed=seed + 1)
    return build_bundle(target, assistant_dir, root / "bundle", weight=weight, filter=filter, min_keep=min_keep).path
