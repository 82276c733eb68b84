"""uld-eval run: TOFU's per-example values through the engine equal the HF reference decoder's, in TOFU's layout."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from eval_data import write_eval_dir
from helpers import SMALL_ENGINE, count_model_reads, refusal

from uld_vllm.eval.cli import main
from uld_vllm.eval.metrics import (
    FACTS_KEY,
    FORGET_LOG,
    MEMORIZATION_KEYS,
    REAL_AUTHORS_LOG,
    REAL_WORLD_LOG,
    REPETITION_KEY,
    RETAIN_LOG,
    load_eval_logs,
)
from uld_vllm.eval.run import EvalSettings, evaluate

LOSS_KEYS = ("avg_gt_loss", "gt_loss", "avg_paraphrased_loss", "paraphrased_loss", "truth_ratio")


def settings(model: Path, data: Path, **options) -> EvalSettings:
    return EvalSettings(
        model=str(model), data=str(data), dtype="float32", max_new_tokens=8, engine_args=SMALL_ENGINE, **options
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_eval_dir(tmp_path_factory.mktemp("eval-data"))


CASES = {
    "llama-lora-filter0.1": dict(family="llama", assistant="lora", filter=0.1),
    "qwen2-full-nofilter": dict(family="qwen2", assistant="full", filter=0.0, tie_word_embeddings=True),
    "plain-hf-target": dict(family="llama", assistant="lora", filter=0.0),
}


@pytest.mark.vllm
@pytest.mark.parametrize("case", CASES)
def test_engine_eval_equals_the_reference_decoder(case, bundle_factory, data):
    bundle = bundle_factory(**CASES[case])
    model = bundle.parent / "target" if case == "plain-hf-target" else bundle
    engine = evaluate(settings(model, data))
    reference = evaluate(settings(model, data, backend="reference"))
    assert set(engine.logs) == {FORGET_LOG, RETAIN_LOG, REAL_AUTHORS_LOG, REAL_WORLD_LOG}
    for name, log in engine.logs.items():
        want = reference.logs[name]
        assert set(log) == set(want) and list(log["avg_gt_loss"]) == [str(i) for i in range(len(want["avg_gt_loss"]))]
        for key in LOSS_KEYS:
            for index, value in log[key].items():
                assert math.isclose(value, want[key][index], rel_tol=1e-4, abs_tol=1e-4), (name, key, index)
        for index, values in log["average_perturb_loss"].items():
            assert len(values) == 3
            assert all(
                math.isclose(a, b, abs_tol=1e-4)
                for a, b in zip(values, want["average_perturb_loss"][index], strict=True)
            )
        assert log["generated_text"] == want["generated_text"]  # greedy, token for token
        assert log["rougeL_recall"] == want["rougeL_recall"]
        assert log["num_token_gt"] == want["num_token_gt"]
        for key in MEMORIZATION_KEYS:  # from the greedy flags of the true answer's tokens
            assert log[key] == want[key]
        assert (FACTS_KEY in log) == (name == FORGET_LOG)  # only the forget rows list facts
        assert log.get(FACTS_KEY) == want.get(FACTS_KEY)
        assert log[REPETITION_KEY] == want[REPETITION_KEY] and set(log[REPETITION_KEY].values()) <= {0.0, 1.0}
    assert engine.timings.scored_tokens == reference.timings.scored_tokens > 0


@pytest.mark.vllm
@pytest.mark.parametrize("backend", ["vllm", "reference"])
def test_an_evaluation_reads_the_bundles_config_and_adapter_once(backend, llama_bundle, data, monkeypatch):
    reads = count_model_reads(monkeypatch, llama_bundle)
    evaluate(settings(llama_bundle, data, backend=backend, splits=("forget",)))
    assert reads == {"config": 1, "adapter": 1}, reads


@pytest.mark.vllm
def test_cli_writes_tofu_logs_that_aggregate(llama_bundle, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ULD_DTYPE", "float32")
    out = tmp_path / "logs"
    assert main(["run", "--model", str(llama_bundle), "--data", str(data), "--output", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"uld-eval: wrote {out} | Model Utility ")
    logs = load_eval_logs(out)  # the directory layout TOFU writes, checked on load
    assert len(logs[FORGET_LOG]["avg_gt_loss"]) == 6 and len(logs[RETAIN_LOG]["avg_gt_loss"]) == 8
    prompt, generated, truth = logs[FORGET_LOG]["generated_text"]["0"]  # TOFU's order
    first = json.loads((data / "forget.jsonl").read_text().splitlines()[0])
    assert first["question"] in prompt and truth == first["answer"]
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["model"] == str(llama_bundle) and run["timings"]["scored_tokens"] > 0
    assert main(["aggregate", "--logs", str(out), "--retain-logs", str(out), "--output", str(tmp_path / "a.json")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["forget_quality"] == 1.0 and 0 <= summary["model_utility"] < 1  # random weights: may be 0
    written = json.loads((tmp_path / "a.json").read_text())
    assert written["Forget Quality"] == 1.0
    stated = list(logs[FORGET_LOG][FACTS_KEY].values())
    assert summary[FACTS_KEY] == written["Facts Stated Forget"] == pytest.approx(sum(stated) / len(stated))


def edit_rows(directory: Path, split: str, edit) -> None:
    path = directory / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))


def drop_field(field: str):
    return lambda rows: [{k: v for k, v in r.items() if k != field} for r in rows]


BAD_DATA = {
    "missing answer": ("forget", drop_field("answer"), "forget.jsonl row 0: field 'answer' must be a non-empty string"),
    "missing paraphrase": (
        "retain",
        drop_field("paraphrased_answer"),
        "retain.jsonl row 0: field 'paraphrased_answer'",
    ),
    "perturbed not a list": (
        "world_facts",
        lambda rows: [r | {"perturbed_answer": "wrong"} for r in rows],
        "field 'perturbed_answer' must be a non-empty list",
    ),
    "uneven perturbed": (
        "real_authors",
        lambda rows: [rows[0] | {"perturbed_answer": ["a b"]}] + rows[1:],
        "different numbers of perturbed answers",
    ),
    "empty split": ("real_authors", lambda rows: [], "real_authors split"),
    "facts not a list": (
        "forget",
        lambda rows: [r | {"facts": "born"} for r in rows],
        "forget.jsonl row 0: field 'facts' must be a list of strings",
    ),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_before_any_engine_starts(case, llama_bundle, data, tmp_path, capsys):
    split, edit, message = BAD_DATA[case]
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    edit_rows(bad, split, edit)
    assert message in refusal(capsys, main, "run", "--model", llama_bundle, "--data", bad, "--output", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_missing_split_file_and_missing_model_are_one_line(llama_bundle, data, tmp_path, capsys):
    partial = tmp_path / "data"
    shutil.copytree(data, partial)
    (partial / "world_facts.jsonl").unlink()
    assert "world_facts split not found" in refusal(
        capsys, main, "run", "--model", str(llama_bundle), "--data", str(partial), "--output", str(tmp_path / "o")
    )
    assert "model not found" in refusal(
        capsys, main, "run", "--model", str(tmp_path / "nope"), "--data", str(data), "--output", str(tmp_path / "o")
    )


def test_tokenizer_that_does_not_match_the_model_is_refused(bundle_factory, data, tmp_path, capsys):
    """A checkpoint whose tokenizer produces ids beyond the model's embedding rows (a tokenizer from elsewhere)."""
    target = tmp_path / "target"
    shutil.copytree(bundle_factory(family="llama").parent / "target", target)
    config = json.loads((target / "config.json").read_text())
    config["vocab_size"] = 40  # the fixture tokenizer has 512 tokens
    (target / "config.json").write_text(json.dumps(config))
    assert "tokenizer and model do not match" in refusal(
        capsys, main, "run", "--model", str(target), "--data", str(data), "--output", str(tmp_path / "o")
    )


def test_ulds_weight_on_a_plain_checkpoint_is_refused(llama_bundle, data, tmp_path, capsys):
    target = llama_bundle.parent / "target"
    argv = ["run", "--model", str(target), "--data", str(data), "--output", str(tmp_path / "o"), "--weight", "-1"]
    assert "apply to ULD bundles" in refusal(capsys, main, *argv)


def test_retain_logs_of_another_forget_set_are_refused(tmp_path, capsys):
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tofu" / "eval_logs"
    if not shared.is_dir():
        pytest.skip("../shared/data/tofu is not present")
    argv = ["aggregate", "--logs", str(shared / "llama2-7b_full.json"), "--retain-logs"]
    assert "different forget set" in refusal(capsys, main, *argv, shared / "llama2-7b_retain95.json")
