"""ULD end to end: `uld-train` on a toy forget set, then the assistant and the bundle's ULD log-probs are measured."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import torch_threads
from safetensors import safe_open

from uld_train import losses
from uld_train.cli import main
from uld_train.config import TrainConfig
from uld_train.data import answer_ids as answer_token_ids
from uld_train.data import collate, encode_all, prompt_ids, read_qa
from uld_train.loop import train
from uld_train.models import build_assistant_base, load_tokenizer, logits
from uld_vllm.assistant import LORA_TARGET_MODULES
from uld_vllm.bundle import read_bundle
from uld_vllm.random_models import build_target
from uld_vllm.reference import ReferenceDecoder

EPOCHS = 20  # 12 forget examples (4 QA + 8 paraphrases) in 3 micro-batches of 4: 60 steps, ~10 s on one core


@pytest.fixture(scope="session")
def uld_bundle(train_root, train_target, forget_file, retain_file):
    output = train_root / "uld_bundle"
    argv = [
        "--target", str(train_target), "--forget", str(forget_file), "--retain", str(retain_file),
        "--output", str(output), "--epochs", str(EPOCHS), "--batch-size", "4", "--grad-accum", "1",
        "--lr", "3e-3", "--seed", "0", "--no-progress",
    ]  # fmt: skip
    with torch_threads(1):
        assert main(argv) == 0
    return output


def forget_and_retain(target, forget_file, retain_file):
    tokenizer = load_tokenizer(target)
    forget = read_qa(forget_file, "forget set").pairs
    retain = read_qa(retain_file, "retain set").pairs
    return tokenizer, forget, retain


@torch.no_grad()
def nll_and_entropy(model, examples, pad_id: int) -> tuple[float, float]:
    """Answer NLL, and the mean next-token entropy over every position that predicts a real token."""
    batch = collate(examples, pad_id)
    out = logits(model.eval(), batch)
    logprobs = torch.log_softmax(out[:, :-1].float(), dim=-1)
    entropy = -(logprobs.exp() * logprobs).sum(dim=-1)[batch.attention_mask[:, 1:].bool()]
    return losses.answer_nll(out, batch.labels).item(), entropy.mean().item()


def test_bundle_is_written_with_lora_assistant_and_training_log(uld_bundle, train_target):
    bundle = read_bundle(uld_bundle)
    assert bundle.settings.assistant_layers == 1  # default K = max(1, 4 // 4)
    assert (bundle.settings.assistant_format, bundle.settings.weight, bundle.settings.filter) == ("lora", -0.8, 0.0)
    assert (uld_bundle / "model.safetensors").is_symlink()  # link_target: no copy of the target's weights
    with safe_open(str(uld_bundle / "assistant" / "adapter_model.safetensors"), framework="pt") as f:
        modules = {name.split(".")[-3] for name in f.keys()}
        assert all(".layers.0." in name for name in f.keys())
    assert modules == set(LORA_TARGET_MODULES)
    records = [json.loads(line) for line in (uld_bundle / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 3 * EPOCHS + 1))
    assert {"loss", "forget_nll", "retain_uniform_kl", "lr", "grad_norm"} <= set(records[0])
    assert records[-1]["forget_nll"] < records[0]["forget_nll"] / 4
    assert not (uld_bundle.parent / "uld_bundle.train").exists()  # checkpoints are gone after a finished run


def test_assistant_remembers_forget_and_flattens_on_retain(uld_bundle, train_target, forget_file, retain_file):
    tokenizer, forget, retain = forget_and_retain(train_target, forget_file, retain_file)
    forget_examples, retain_examples = encode_all(tokenizer, forget, 512), encode_all(tokenizer, retain, 512)
    before = build_assistant_base(train_target, 1, torch.float32)
    after = ReferenceDecoder.from_bundle(uld_bundle).assistant
    forget_before, _ = nll_and_entropy(before, forget_examples, tokenizer.pad_token_id)
    forget_after, _ = nll_and_entropy(after, forget_examples, tokenizer.pad_token_id)
    _, entropy_before = nll_and_entropy(before, retain_examples, tokenizer.pad_token_id)
    _, entropy_after = nll_and_entropy(after, retain_examples, tokenizer.pad_token_id)
    log_v = math.log(len(tokenizer))
    print(
        f"\nforget NLL {forget_before:.3f} -> {forget_after:.3f}; retain entropy {entropy_before:.3f} -> {entropy_after:.3f} (log V {log_v:.3f})"
    )
    assert forget_after < forget_before / 2
    assert entropy_after > entropy_before + 1.0
    assert log_v - entropy_after < 0.35 * (log_v - entropy_before)


def test_uld_lowers_forget_answers_and_keeps_retain_answers(uld_bundle, train_target, forget_file, retain_file):
    tokenizer, forget, retain = forget_and_retain(train_target, forget_file, retain_file)
    decoder = ReferenceDecoder.from_bundle(uld_bundle)
    target = ReferenceDecoder(decoder.target, decoder.assistant, weight=0.0, filter=0.0)  # w = 0: the target alone

    def mean_logprob(model: ReferenceDecoder, qa) -> float:
        return model.score(prompt_ids(tokenizer, qa.question), answer_token_ids(tokenizer, qa.answer)).mean().item()

    forget_shift = [mean_logprob(decoder, qa) - mean_logprob(target, qa) for qa in forget]
    retain_shift = [mean_logprob(decoder, qa) - mean_logprob(target, qa) for qa in retain]
    target_forget = sum(mean_logprob(target, qa) for qa in forget) / len(forget)
    print(f"\ntarget forget log-prob/token {target_forget:.4f}; ULD shift: forget {sum(forget_shift) / len(forget):.3f}, "
          f"retain {sum(retain_shift) / len(retain):.4f} (max |retain| {max(map(abs, retain_shift)):.4f})")  # fmt: skip
    assert target_forget > -0.05  # the target knows the forget answers
    assert sum(forget_shift) / len(forget) < -0.5 and max(forget_shift) < -0.2
    assert max(abs(s) for s in retain_shift) < 0.05


def test_qwen2_with_tied_embeddings_trains_into_a_loadable_bundle(tmp_path, forget_file, retain_file):
    """Qwen2 layout (q/k/v biases, per-layer layer_types) with a tied LM head: the assistant reuses the embedding."""
    target = build_target(tmp_path / "qwen2", family="qwen2", layers=2, hidden=64, tie_word_embeddings=True, seed=3)
    config = TrainConfig(
        target=str(target), forget=str(forget_file), retain=str(retain_file), output=str(tmp_path / "bundle"),
        epochs=1, batch_size=4, grad_accum=3, progress=False,
    )  # fmt: skip
    result = train(config)
    assert result.layers == 1 and result.steps == 1
    decoder = ReferenceDecoder.from_bundle(result.output)
    assert decoder.assistant.config.num_hidden_layers == 1 and decoder.assistant.config.tie_word_embeddings
    tokenizer = load_tokenizer(target)
    scores = decoder.score(prompt_ids(tokenizer, "Who?"), answer_token_ids(tokenizer, "Kalomi."))
    assert torch.isfinite(scores).all()


@pytest.mark.vllm
def test_trained_bundle_runs_in_uld_batch_with_reference_tokens(uld_bundle, forget_file, tmp_path):
    """The trainer's output is a bundle the product serves: uld-batch on it gives the reference decoder's tokens."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers import batch_config

    from uld_vllm.batch import run

    questions = [row.question for row in read_qa(forget_file, "forget set").pairs][:4]
    messages = [[{"role": "user", "content": q}] for q in questions]
    pq.write_table(pa.table({"messages": messages}), tmp_path / "in.parquet")
    run(batch_config(uld_bundle, tmp_path / "in.parquet", tmp_path / "out.parquet", max_tokens=10))
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    tokenizer = load_tokenizer(uld_bundle)
    prompts = [tokenizer(r["prompt"], add_special_tokens=False).input_ids for r in out]
    want = ReferenceDecoder.from_bundle(uld_bundle).generate(prompts, 10, eos_token_id=tokenizer.eos_token_id)
    assert [r["generated_token_ids"] for r in out] == want
