"""Several checkpoints of one model through one engine (a training run's snapshots): each checkpoint's logs equal the
HF reference decoder's for that checkpoint alone, the engine starts once, and mismatched checkpoints are refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from eval_data import write_eval_dir
from helpers import SMALL_ENGINE, refusal

from uld_vllm.bundle import build_bundle
from uld_vllm.eval.cli import main
from uld_vllm.eval.metrics import FORGET_LOG, load_eval_logs
from uld_vllm.eval.run import EvalSettings, evaluate_checkpoints
from uld_vllm.random_models import build_lora_assistant, build_target

LOSS_KEYS = ("avg_gt_loss", "avg_paraphrased_loss", "truth_ratio")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_eval_dir(tmp_path_factory.mktemp("eval-data"))


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict[str, list[Path]]:
    """Three ULD bundles linked to one target (as uld-train's snapshots), and two plain targets of equal shapes."""
    root = tmp_path_factory.mktemp("snapshots")
    target = build_target(root / "target", layers=4, seed=0)
    bundles = []
    for seed in (1, 2, 3):
        adapter = build_lora_assistant(target, root / f"adapter-{seed}", 2, seed=seed)
        bundles.append(build_bundle(target, adapter, root / f"epoch-{seed}", filter=0.1, link_target=True).path)
    other = build_target(root / "other-target", layers=4, seed=5, tokenizer_dir=target)
    return {"bundles": bundles, "plain": [target, other]}


def settings(data: Path, **options) -> EvalSettings:
    options = {"engine_args": SMALL_ENGINE} | options
    return EvalSettings(model="", data=str(data), dtype="float32", max_new_tokens=8, **options)


def assert_same_logs(got: dict, want: dict) -> None:
    for name, log in got.items():
        for key in LOSS_KEYS:
            for index, value in log[key].items():
                assert math.isclose(value, want[name][key][index], rel_tol=1e-4, abs_tol=1e-4), (name, key, index)
        assert log["generated_text"] == want[name]["generated_text"]


@pytest.mark.vllm
@pytest.mark.parametrize(
    "kind,engine_args",
    [
        ("bundles", {}),  # CPU evaluation's default: the merged assistant copy
        ("bundles", {"hf_overrides": {"uld_share_weights": True}}),  # shared weights: the LoRA buffers are swapped
        ("plain", {}),
    ],
    ids=["bundles-merged", "bundles-shared", "plain"],
)
def test_each_checkpoint_through_one_engine_equals_the_reference_alone(
    kind, engine_args, snapshots, data, tmp_path, monkeypatch
):
    import uld_vllm.engine

    models = [str(m) for m in snapshots[kind]]
    starts = []
    make_llm = uld_vllm.engine.make_llm
    monkeypatch.setattr(uld_vllm.engine, "make_llm", lambda *a, **k: starts.append(1) or make_llm(*a, **k))
    outputs = [str(tmp_path / Path(m).name) for m in models]
    engine_settings = settings(data, engine_args=SMALL_ENGINE | engine_args)
    engine = evaluate_checkpoints(engine_settings, models, outputs)
    assert len(starts) == 1
    alone = [evaluate_checkpoints(settings(data, backend="reference"), [m], [None])[0] for m in models]
    assert alone[0].logs[FORGET_LOG]["avg_gt_loss"] != alone[1].logs[FORGET_LOG]["avg_gt_loss"]  # they differ
    for got, want, output, model in zip(engine, alone, outputs, models, strict=True):
        assert_same_logs(got.logs, want.logs)
        assert load_eval_logs(output)[FORGET_LOG]["avg_gt_loss"] == got.logs[FORGET_LOG]["avg_gt_loss"]
        assert f'"model": "{model}"' in (Path(output) / "run.json").read_text()


def test_a_checkpoint_of_another_model_is_refused_in_one_line_before_any_engine(snapshots, data, tmp_path, capsys):
    bundle, target = snapshots["bundles"][0], snapshots["plain"][0]
    message = refusal(capsys, main, "run", "--model", bundle, target, "--data", data, "--output", tmp_path / "o")
    assert "not both ULD bundles or both plain checkpoints" in message and not (tmp_path / "o").exists()


def test_checkpoints_whose_logs_would_collide_are_refused_before_any_engine(snapshots, data, tmp_path, capsys):
    bundle = snapshots["bundles"][0]
    message = refusal(capsys, main, "run", "--model", bundle, bundle, "--data", data, "--output", tmp_path / "o")
    assert "share a name" in message and not (tmp_path / "o").exists()


def test_a_bundle_over_another_target_is_refused(snapshots, tmp_path):
    from uld_vllm.bundle import BundleError, read_bundle

    first = read_bundle(snapshots["bundles"][0])
    other_target = snapshots["plain"][1]
    adapter = snapshots["bundles"][1].parent / "adapter-2"
    foreign = read_bundle(build_bundle(other_target, adapter, tmp_path / "foreign", link_target=True).path)
    with pytest.raises(BundleError, match="other target weights"):
        first.check_same_target(foreign)
    first.check_same_target(read_bundle(snapshots["bundles"][2]))  # a snapshot of the same run is fine


@pytest.mark.vllm
def test_the_cli_writes_each_checkpoints_logs_under_its_name(snapshots, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ULD_DTYPE", "float32")
    first, second = snapshots["bundles"][:2]
    argv = [
        "run",
        "--model",
        str(first),
        str(second),
        "--data",
        str(data),
        "--output",
        str(tmp_path),
        "--splits",
        "forget",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"uld-eval: wrote {tmp_path / b.name}" for b in (first, second)]
    assert all(load_eval_logs(tmp_path / b.name)[FORGET_LOG]["avg_gt_loss"] for b in (first, second))
