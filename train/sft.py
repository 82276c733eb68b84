"""Supervised fine-tuning on QA rows, shared by from-scratch pretraining (mini-TOFU) and LoRA fine-tuning (real
TOFU): the schedule, the flat loop, and the cache key of a run's data."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from uld_train.data import Example, collate
from uld_train.loop import warmup_cosine
from uld_train.losses import answer_nll
from uld_train.models import logits
from uld_vllm import stamps
from uld_vllm.qa import read_rows
from uld_vllm.tofu import is_tofu_spec


class Recipe(Protocol):
    """The fields of a recipe (PretrainConfig, FinetuneConfig) that the loop reads."""

    epochs: int
    batch_size: int
    lr: float
    beta2: float
    warmup_steps: int
    final_lr_ratio: float
    grad_clip: float
    seed: int


def file_hash(*paths: Path) -> str:
    """sha256 over files (a directory: its files, sorted), names included, or a tofu: spec's rows: the cache key of
    data and tokenizer."""
    digest = hashlib.sha256()
    for path in paths:
        if is_tofu_spec(path):  # not a file: its rows are the data
            digest.update(str(path).encode() + b"\0" + json.dumps(read_rows(path, "data")).encode())
            continue
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                digest.update(file.name.encode() + b"\0")
                stamps.update(digest, file)
    return digest.hexdigest()


def lr_factor(config: Recipe, total_steps: int) -> Callable[[int], float]:
    """Linear warmup, then cosine from the peak down to final_lr_ratio (uld_train.loop's shape, lifted off 0)."""
    base = warmup_cosine(config.warmup_steps, total_steps)
    floor = config.final_lr_ratio
    return lambda step: base(step) if step < config.warmup_steps else floor + (1.0 - floor) * base(step)


def fit(
    model,
    examples: list[Example],
    pad_id: int,
    config: Recipe,
    desc: str,
    progress: bool,
    autocast: torch.dtype | None = None,
    bar_row: int = 0,
) -> list[float]:
    """Shuffled epochs (order fixed by config.seed), loss on answer tokens, AdamW on the trainable parameters;
    returns each epoch's token-weighted mean loss. autocast: the forward's compute dtype on CPU (None: as stored);
    bar_row: the progress bar's terminal row, for runs side by side."""
    order_rng = torch.Generator().manual_seed(config.seed)
    total = math.ceil(len(examples) / config.batch_size) * config.epochs
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, config.beta2), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total))
    bar = tqdm(total=total, desc=desc, disable=not progress, position=bar_row)
    epoch_losses: list[float] = []
    for _ in range(config.epochs):
        order = torch.randperm(len(examples), generator=order_rng).tolist()
        loss_sum, tokens = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = collate([examples[i] for i in order[start : start + config.batch_size]], pad_id)
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                out = logits(model, batch)
            loss = answer_nll(out, batch.labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() * batch.answer_tokens
            tokens += batch.answer_tokens
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        epoch_losses.append(loss_sum / tokens)
    bar.close()
    return epoch_losses
