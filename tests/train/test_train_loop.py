"""The loop's guarantees: a resumed run ends with the uninterrupted run's exact weights; checkpointing loses no gradient."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from uld_train import loop, losses
from uld_train.config import TrainConfig, TrainError
from uld_train.data import collate, encode_all, read_qa
from uld_train.loop import train
from uld_train.models import add_lora, build_assistant_base, enable_gradient_checkpointing, load_tokenizer, logits


class Crash(RuntimeError):
    pass


def adapter(bundle) -> dict[str, torch.Tensor]:
    return load_file(str(bundle / "assistant" / "adapter_model.safetensors"))


@pytest.fixture()
def config(tmp_path, train_target, forget_file, retain_file) -> TrainConfig:
    # 12 forget examples, micro-batches of 4, 2 per step: 2 steps per epoch, 6 steps, LoRA dropout on (RNG matters).
    return TrainConfig(
        target=train_target,
        forget=forget_file,
        retain=retain_file,
        output=tmp_path / "bundle",
        epochs=3,
        batch_size=4,
        grad_accum=2,
        lr=3e-3,
        warmup_steps=2,
        save_every=2,
        progress=False,
    )


def test_resume_after_interruption_gives_the_same_weights(config, tmp_path, monkeypatch):
    straight = train(replace(config, output=tmp_path / "straight"))

    save = loop.save_checkpoint

    def save_then_crash(work, step, *args):
        path = save(work, step, *args)
        if step == 4:
            raise Crash("simulated crash after the step-4 checkpoint")
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train(config)
    assert [p.name for p in (config.work_dir / "checkpoints").iterdir()] == ["step-00000004.pt"]  # older ones removed
    monkeypatch.setattr(loop, "save_checkpoint", save)

    resumed = train(replace(config, resume=True))
    assert resumed.steps == straight.steps == 6
    a, b = adapter(straight.output), adapter(resumed.output)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (resumed.output / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    straight_records = [json.loads(line) for line in (straight.output / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == [r["loss"] for r in straight_records]


def test_resume_refuses_a_checkpoint_of_different_settings(config, monkeypatch):
    save = loop.save_checkpoint

    def save_then_crash(work, step, *args):
        save(work, step, *args)
        raise Crash

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train(config)
    monkeypatch.setattr(loop, "save_checkpoint", save)
    with pytest.raises(TrainError, match="lr=0.003"):
        train(replace(config, resume=True, lr=1e-3))


def test_resume_without_checkpoint_starts_fresh(config):
    result = train(replace(config, resume=True, epochs=1, save_every=0))
    assert result.steps == 2 and (result.output / "train_log.jsonl").exists()


def test_gradient_checkpointing_keeps_lora_gradients(tmp_path, train_target, forget_file, retain_file):
    """The LoRA pitfall: with checkpointing and frozen embeddings, gradients must still reach the adapters."""
    config = TrainConfig(
        target=train_target,
        forget=forget_file,
        retain=retain_file,
        output=tmp_path / "plain",
        epochs=1,
        batch_size=4,
        grad_accum=1,
        lr=3e-3,
        lora_dropout=0.0,
        augment=False,
        progress=False,
    )
    plain = train(config)
    checkpointed = train(replace(config, output=tmp_path / "checkpointed", gradient_checkpointing=True))
    a = load_file(str(plain.output / "assistant" / "adapter_model.safetensors"))
    b = load_file(str(checkpointed.output / "assistant" / "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") and a[name].abs().max() > 0 for name in a)  # B starts at 0: it learned
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_gradient_checkpointing_recomputes_and_reaches_lora(train_target, forget_file):
    tokenizer = load_tokenizer(train_target)
    batch = collate(encode_all(tokenizer, read_qa(forget_file, "forget set").pairs, 512), tokenizer.pad_token_id)
    base = build_assistant_base(train_target, 2, torch.float32)
    enable_gradient_checkpointing(base, lora=True)
    model = add_lora(base, r=4, alpha=8, dropout=0.0).train()
    calls = []
    base.model.layers[1].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    losses.answer_nll(logits(model, batch), batch.labels).backward()
    assert len(calls) == 2  # forward, then the recomputation in backward
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]  # A gets no grad while B is 0
    assert len(lora_b) == 2 * 7 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


@pytest.mark.parametrize("method", ["uld", "ga_gd", "npo"])
def test_snapshots_are_the_model_after_each_epoch_and_the_last_one_is_the_output(config, method):
    """--snapshot-every 1 over 3 epochs: epochs 1 and 2 as usable outputs, and the final output unchanged by them."""
    from transformers import AutoModelForCausalLM

    from uld_vllm.bundle import read_bundle

    config = replace(config, method=method, snapshot_every=1, save_every=0, lr=None if method == "uld" else 1e-4)
    baseline = train(replace(config, snapshot_every=0, output=config.output.with_name("plain")))
    train(config)
    found = sorted(p.name for p in config.snapshot_dir.iterdir())
    assert found == ["epoch-1", "epoch-2"]
    for snapshot in found:
        if method == "uld":
            assert read_bundle(config.snapshot_dir / snapshot).settings.assistant_layers == baseline.layers
        else:
            AutoModelForCausalLM.from_pretrained(config.snapshot_dir / snapshot)
    final = adapter if method == "uld" else lambda d: load_file(str(d / "model.safetensors"))
    got, want = final(config.output), final(baseline.output)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    early = final(config.snapshot_dir / "epoch-1")
    assert early.keys() == got.keys() and any(not torch.equal(early[k], got[k]) for k in got)  # training went on


@pytest.mark.parametrize("method", ["uld", "ga_gd"])
def test_a_run_stopped_early_ends_as_the_whole_runs_snapshot_of_that_epoch(config, method):
    """--stop-epoch 2 of --epochs 3: the same schedule cut short, so its output is the whole run's epoch-2 snapshot
    (what the quality study's test runs rely on) and it took two epochs' steps."""
    config = replace(config, method=method, snapshot_every=1, save_every=0, lr=None if method == "uld" else 1e-4)
    whole = train(replace(config, output=config.output.with_name("whole")))
    stopped = train(replace(config, stop_epoch=2))
    assert (stopped.steps, whole.steps) == (4, 6)
    assert sorted(p.name for p in config.snapshot_dir.iterdir()) == ["epoch-1"]
    weights = adapter if method == "uld" else lambda d: load_file(str(d / "model.safetensors"))
    for mine, theirs in ((config.output, "epoch-2"), (config.snapshot_dir / "epoch-1", "epoch-1")):
        got, want = weights(mine), weights(whole.output.with_name("whole.snapshots") / theirs)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    with pytest.raises(TrainError, match="--stop-epoch must be in"):
        train(replace(config, stop_epoch=4))


def test_a_stamp_written_before_a_newer_config_field_still_matches():
    """The committed SmolLM2 assistant's stamp predates --stop-epoch: the record its build makes today must equal it,
    or every rebuild would retrain it (a field added to TrainConfig goes into NEWER_FIELDS with its neutral value)."""

    from uld_train.config import stamp_fields
    from uld_vllm.smollm2_tofu import ADAPTERS

    committed = json.loads((ADAPTERS / "assistant" / "uld-train.json").read_text())["config"]
    config = TrainConfig(**committed)
    record = stamp_fields(config)  # train/tofu_study.py's
    assert {k: committed[k] for k in record} == record and set(committed) - set(record) == {"progress"}
    assert stamp_fields(replace(config, progress=not config.progress)) == record  # the bar decides nothing
    assert "stop_epoch" in stamp_fields(replace(config, stop_epoch=2))  # set, it is part of what decides the run


@pytest.mark.vllm
def test_eval_data_scores_each_snapshot_and_the_output_through_one_engine(config, tmp_path, capsys, monkeypatch):
    from eval.eval_data import write_eval_dir

    import uld_vllm.engine
    from uld_train.cli import main
    from uld_vllm.eval.metrics import FORGET_LOG, load_eval_logs

    monkeypatch.setenv("ULD_DTYPE", "float32")
    starts = []
    make_llm = uld_vllm.engine.make_llm
    monkeypatch.setattr(uld_vllm.engine, "make_llm", lambda *a, **k: starts.append(1) or make_llm(*a, **k))
    data = write_eval_dir(tmp_path / "eval-data")
    argv = ["--target", config.target, "--forget", config.forget, "--retain", config.retain, "--output", config.output,
            "--epochs", 2, "--batch-size", 4, "--snapshot-every", 1, "--no-progress", "--eval-data", data]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    root = config.output.with_name("bundle.eval")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("uld-train: evaluated")]
    assert [line.split(" | ")[0] for line in lines] == [
        f"uld-train: evaluated {root / n}" for n in ("epoch-1", "bundle")
    ]
    assert len(starts) == 1
    early, final = (load_eval_logs(root / n)[FORGET_LOG]["avg_gt_loss"] for n in ("epoch-1", "bundle"))
    assert early != final  # the snapshot's assistant, not the final one, scored epoch 1


def test_eval_data_refuses_a_run_that_trains_on_what_it_scores(config, tmp_path, capsys):
    from eval.eval_data import write_eval_dir

    from uld_train.cli import main

    data = write_eval_dir(tmp_path / "eval-data")  # its forget file carries the truth ratio's paraphrased answers
    argv = ["--target", config.target, "--forget", data / "forget.jsonl", "--retain", config.retain,
            "--output", config.output, "--no-progress", "--eval-data", data]  # fmt: skip
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uld-train: error:") and "which the evaluation scores (forget example 0)" in err
    assert err.count("\n") == 1 and not config.output.exists()
