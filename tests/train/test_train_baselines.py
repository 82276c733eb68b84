"""Each baseline trains a few steps and writes a loadable HF checkpoint that has started to forget."""

from __future__ import annotations

import json

import pytest
import torch
from train_toy import FORGET
from transformers import AutoModelForCausalLM, AutoTokenizer

from uld_train import losses
from uld_train.config import TrainConfig
from uld_train.data import QA, collate, encode_all
from uld_train.loop import train
from uld_train.models import logits


def forget_nll(model_dir, tokenizer) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = collate(
        encode_all(tokenizer, [QA(r["question"], r["answer"], "") for r in FORGET], 512), tokenizer.pad_token_id
    )
    with torch.no_grad():
        return losses.answer_nll(logits(model, batch), batch.labels).item()


@pytest.mark.parametrize(
    ("method", "lora"),
    [
        ("ga", False),
        ("ga_gd", False),
        ("ga_kl", False),
        ("npo", False),
        ("npo_gd", False),
        ("ga_kl", True),
        ("npo_gd", True),
    ],
)
def test_baseline_writes_loadable_checkpoint_that_forgets(
    method, lora, tmp_path, train_target, forget_file, retain_file
):
    config = TrainConfig(
        target=train_target,
        forget=forget_file,
        retain=retain_file,
        output=tmp_path / method,
        method=method,
        lora=lora,
        lr=1e-3 if lora else 1e-4,
        epochs=1,
        batch_size=4,
        grad_accum=1,
        augment=False,  # 4 forget pairs: one step
        progress=False,
    )
    result = train(config)
    assert result.steps == 1 and result.layers is None
    tokenizer = AutoTokenizer.from_pretrained(result.output)
    assert tokenizer.chat_template is not None
    assert not (result.output / "adapter_config.json").exists()  # LoRA baselines are merged into a plain checkpoint
    record = json.loads((result.output / "train_log.jsonl").read_text().splitlines()[0])
    assert torch.isfinite(torch.tensor(record["loss"]))
    before, after = forget_nll(train_target, tokenizer), forget_nll(result.output, tokenizer)
    assert after > before * 1.5, f"{method}: forget NLL {before:.4f} -> {after:.4f}"
