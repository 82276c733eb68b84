"""LoRA fine-tuning of a pretrained chat model on QA rows (loss on answer tokens): the real-TOFU target and retain
models.

TOFU fine-tunes its pretrained chat model on the fictional authors; we do the same with LoRA so the result is a small
delta (the adapter, stored in float16) that a repository can hold. Every model of a study is `merge(base, adapter)`:
the rebuild evaluates exactly what a fresh clone reassembles from the committed adapter.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from uld_train.config import TrainError
from uld_train.data import encode_all
from uld_train.models import add_lora, load_target, load_tokenizer
from uld_train.sft import file_hash, fit
from uld_vllm import stamps
from uld_vllm.qa import read_rows
from uld_vllm.staging import staged_dir

ADAPTER_FILE = "adapter_model.safetensors"
MARKER = "finetune.json"  # written last into the adapter directory: recipe, data, base and per-epoch loss


@dataclass(frozen=True)
class FinetuneConfig:
    """The recipe: everything that decides an adapter's weights."""

    epochs: int = 8  # fixed passes (never a time cap: truth-ratio scales depend on it); 8 memorise TOFU QA with r 16
    batch_size: int = 8  # QA rows per optimizer step
    lr: float = 1e-3  # peak AdamW learning rate (LoRA)
    beta2: float = 0.999  # AdamW beta2 (beta1 0.9); no weight decay
    warmup_steps: int = 20  # linear warmup steps
    final_lr_ratio: float = 0.1  # cosine decay ends at this fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm
    lora_r: int = 16  # LoRA rank on every linear layer of every decoder layer
    lora_alpha: float = 32.0  # updates scaled by alpha / r
    max_length: int = 512  # tokens per row; TOFU's longest QA is about 200 in a chat template
    seed: int = 0  # LoRA init and data order
    autocast: str = "float32"  # compute dtype of the forward (bfloat16 where the CPU has bf16 matmuls)


def record(base: Path, data: Path, config: FinetuneConfig) -> dict:
    """What decides an adapter: the recipe and the hashes of the data and the base."""
    return {
        "recipe": asdict(config),
        "data_sha256": file_hash(data),
        "base_sha256": file_hash(base / "model.safetensors"),
    }


def finished(adapter: Path, made_by: dict) -> dict | None:
    """The adapter's marker if it names the same recipe, data and base (`made_by`: record's)."""
    return stamps.matching(adapter / MARKER, made_by, subset=True)


def finetune(base: Path, data: Path, adapter: Path, config: FinetuneConfig, progress: bool = True) -> dict:
    """Train a LoRA adapter on base over data's QA rows and save it in float16; reused when already finished."""
    rows = read_rows(data, "fine-tuning data")
    if not rows:
        raise TrainError(f"fine-tuning data {data} has no rows")
    made_by = record(base, data, config)
    found = finished(adapter, made_by)
    if found is not None:
        return found
    from uld_train.data import QA

    tokenizer = load_tokenizer(base)
    pairs = [QA(row["question"], row["answer"], f"{data.name} row {i}") for i, row in enumerate(rows)]
    examples = encode_all(tokenizer, pairs, config.max_length)
    torch.manual_seed(config.seed)
    model = add_lora(load_target(base, torch.float32), config.lora_r, config.lora_alpha, 0.0).train()
    autocast = None if config.autocast == "float32" else getattr(torch, config.autocast)
    began = time.perf_counter()
    losses = fit(model, examples, tokenizer.pad_token_id, config, f"fine-tune {adapter.name}", progress, autocast)
    seconds = round(time.perf_counter() - began, 1)
    tokens = sum(len(e.input_ids) for e in examples) * config.epochs
    with staged_dir(adapter) as staging:
        model.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # peft's model-card template: nothing the study needs
        weights = load_file(staging / ADAPTER_FILE)
        save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()}, staging / ADAPTER_FILE)
        marker = made_by | {"epoch_losses": losses, "seconds": seconds, "rows": len(examples), "tokens": tokens}
        stamps.write(staging / MARKER, marker)
    return marker
