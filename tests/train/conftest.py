"""Session fixtures for the trainer tests: one tiny Llama target and toy TOFU-style forget / retain files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import torch_threads
from train_toy import FORGET, RETAIN, write_jsonl

from uld_train import losses
from uld_train.data import QA, collate, encode_all
from uld_train.models import load_tokenizer, logits
from uld_vllm.random_models import build_target


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uld_train")


@pytest.fixture(scope="session")
def random_target(train_root) -> Path:
    """Llama, 4 layers, hidden 128, vocab 512, random weights: the default assistant depth is K = 1."""
    with torch_threads(1):
        return build_target(train_root / "random_target", family="llama", layers=4, hidden=128, seed=0)


@pytest.fixture(scope="session")
def train_target(train_root, random_target) -> Path:
    """The random target fine-tuned until it knows every forget and retain answer (NLL ~1e-3 per token).

    Unlearning needs a target that knows the facts: a random one is confidently wrong on every answer, and ULD's
    effect is then swamped by the assistant's imperfect flatness (measured: retain answers moved by 2 nats/token).
    """
    from transformers import AutoModelForCausalLM

    directory = train_root / "target"
    with torch_threads(1):
        tokenizer = load_tokenizer(random_target)
        pairs = [QA(row["question"], row["answer"], "fixture") for row in FORGET + RETAIN]
        batch = collate(encode_all(tokenizer, pairs, 512), tokenizer.pad_token_id)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(random_target, dtype=torch.float32).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(30):
            losses.answer_nll(logits(model, batch), batch.labels).backward()
            optimizer.step()
            optimizer.zero_grad()
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def forget_file(train_root) -> Path:
    return write_jsonl(train_root / "forget.jsonl", FORGET)


@pytest.fixture(scope="session")
def retain_file(train_root) -> Path:
    return write_jsonl(train_root / "retain.jsonl", RETAIN)
