"""TOFU's own QA files, shipped in uld_vllm/tofu-data/: contents, derived splits, subsets, and `tofu:NAME` specs in
uld-train's and uld-eval's data readers. Fast: no engine, no training."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
from helpers import refusal

from uld_train import cli as train_cli
from uld_train.config import TrainConfig
from uld_train.data import read_qa
from uld_train.loop import check_config, config_record
from uld_vllm import tofu
from uld_vllm.eval import cli as eval_cli
from uld_vllm.eval.data import SPLIT_FILES, read_eval_data
from uld_vllm.qa import read_rows
from uld_vllm.rows import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu" / "qa"  # the copies TOFU's files came from
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"TOFU's files not found at {SHARED}")


def _qa(rows: list[dict]) -> list[tuple[str, str]]:
    return [(row["question"], row["answer"]) for row in rows]


@needs_shared
def test_shipped_files_are_tofus_own():
    for name in tofu.SHIPPED:
        assert (tofu.DATA_DIR / f"{name}.jsonl").read_bytes() == (SHARED / f"{name}.jsonl").read_bytes(), name
    assert (tofu.DATA_DIR / "LICENSE").read_bytes() == (SHARED.parent / "LICENSE").read_bytes()


@needs_shared
@pytest.mark.parametrize("percent", ["01", "05", "10"])
def test_derived_splits_equal_tofus_files_row_for_row(percent):
    retain = f"retain{100 - int(percent)}"
    assert tofu.rows(f"forget{percent}") == read_rows(SHARED / f"forget{percent}.jsonl", "TOFU's forget")
    assert tofu.rows(retain) == read_rows(SHARED / f"{retain}.jsonl", "TOFU's retain")


def test_package_data_ships_every_file():
    """setuptools installs uld_vllm's package-data globs: every file of tofu-data/ must match one."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["uld_vllm"]
    files = sorted(p.relative_to(tofu.DATA_DIR.parent).as_posix() for p in tofu.DATA_DIR.iterdir())
    assert {f"tofu-data/{name}.jsonl" for name in tofu.SHIPPED} | {"tofu-data/LICENSE"} <= set(files)
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)


def test_sizes_and_perturbed_splits_ask_the_forget_questions():
    full = tofu.rows("full")
    assert len(full) == 200 * tofu.QA_PER_AUTHOR
    for split, count in zip(tofu.FORGET_SPLITS, (40, 200, 400), strict=True):
        forget, perturbed = tofu.rows(split), tofu.rows(f"{split}_perturbed")
        assert len(forget) == count and forget == full[-count:]
        assert tofu.rows(f"retain{100 - int(split[-2:])}") == full[:-count]
        assert _qa(perturbed) == _qa(forget)
        assert all(len(row["perturbed_answer"]) == 5 and row["paraphrased_answer"] for row in perturbed)


def test_retain_perturbed_is_the_first_20_authors_of_full():
    """400 QA, exactly rows 0..399 of full (full repeats one question, rows 100 and 440, with different answers)."""
    retain = tofu.rows("retain_perturbed")
    assert _qa(retain) == _qa(tofu.rows("full")[:400])
    assert tofu.authors(retain) == list(range(20))


def test_authors_and_subset():
    assert tofu.authors(tofu.rows("forget05_perturbed")) == list(range(190, 200))
    assert tofu.authors(tofu.rows("forget01")) == [198, 199]
    full = tofu.rows("full")
    small = tofu.subset([*range(190, 200), *range(22), 3])  # any order, repeats once: full's order
    assert len(small) == 640 and small == full[:440] + full[3800:]
    assert tofu.subset([]) == []
    with pytest.raises(DataError, match=r"out of range .*0\.\.199"):
        tofu.subset([0, 200])
    perturbed = tofu.subset([18, 3], "retain_perturbed")  # the same authors, with the truth ratio's answers
    assert [r["question"] for r in perturbed] == [r["question"] for r in tofu.subset([3, 18])]
    assert all(len(r["perturbed_answer"]) == 5 for r in perturbed)
    with pytest.raises(DataError, match=r"out of range \(retain_perturbed has authors 0\.\.19\)"):
        tofu.subset([20], "retain_perturbed")
    with pytest.raises(DataError, match="not a question-answer pair of TOFU's full"):
        tofu.authors(tofu.rows("world_facts_perturbed")[:1])


def test_eval_rows_and_read_eval_data_from_a_spec():
    assert list(tofu.eval_rows("forget01")) == list(SPLIT_FILES)
    data = read_eval_data("tofu:forget05")
    assert list(data) == list(SPLIT_FILES)
    sizes = {split: len(examples) for split, examples in data.items()}
    assert sizes == {"forget": 200, "retain": 400, "real_authors": 100, "world_facts": 117}
    perturbed = {split: {len(e.perturbed_answers) for e in examples} for split, examples in data.items()}
    assert perturbed == {"forget": {5}, "retain": {5}, "real_authors": {3}, "world_facts": {3}}
    forget = tofu.rows("forget05_perturbed")[0]
    assert data["forget"][0].answers() == [forget["answer"], forget["paraphrased_answer"], *forget["perturbed_answer"]]
    world = data["world_facts"][0]
    assert world.paraphrased_answer == world.answer  # the utility sets score the answer itself
    assert len(read_eval_data(Path("tofu:forget10"))["forget"]) == 400


def test_bad_names_are_one_line_naming_the_valid_ones():
    with pytest.raises(DataError) as error:
        tofu.rows("forget5")
    message = str(error.value)
    assert "\n" not in message and "'forget5'" in message and all(name in message for name in tofu.NAMES)
    with pytest.raises(DataError, match=r"^forget set: unknown TOFU file 'forget05\.jsonl'"):
        read_rows(Path("tofu:forget05.jsonl"), "forget set")
    with pytest.raises(DataError, match="unknown TOFU forget split 'full' .*forget01, forget05, forget10"):
        read_eval_data("tofu:full")


def test_uld_train_reads_specs():
    forget = read_qa("tofu:forget05", "forget set")
    assert len(forget.pairs) == 200 and not forget.paraphrased and not forget.perturbed  # full's rows: no extra columns
    assert forget.pairs[0].source == "forget set tofu:forget05 row 0"
    perturbed = read_qa("tofu:forget05_perturbed", "forget set")  # the same questions, with TOFU's paraphrases
    assert [(qa.question, qa.answer) for qa in perturbed.pairs] == [(qa.question, qa.answer) for qa in forget.pairs]
    assert len(perturbed.paraphrased) == 400 and len(perturbed.perturbed) == 1000
    assert len(read_qa(Path("tofu:retain95"), "retain set").pairs) == 3800


def test_train_config_keeps_specs_as_written(tmp_path, monkeypatch):
    """A spec is no file: resolving it would glue the working directory on, and a resume elsewhere would differ."""
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(target=tmp_path / "t", forget="tofu:forget05", retain="tofu:retain95", output="out")
    check_config(config)
    record = config_record(config)
    assert (record["forget"], record["retain"]) == ("tofu:forget05", "tofu:retain95")
    assert record["output"] == str(tmp_path / "out")
    assert tofu.is_tofu_spec(config.forget) and not tofu.is_tofu_spec(config.output) and not tofu.is_tofu_spec(None)


def test_uld_train_cli_takes_specs(capsys, tmp_path):
    """A spec gets as far as the data: a missing target is the error; with a target, a bad name is the data error."""
    from uld_vllm.random_models import build_target

    argv = ["--forget", "tofu:forget05", "--retain", "tofu:retain95", "--output", tmp_path / "out", "--no-progress"]
    assert "target checkpoint directory not found" in refusal(
        capsys, train_cli.main, "--target", tmp_path / "no", *argv
    )
    target = build_target(tmp_path / "target", layers=1, hidden=32, heads=2, kv_heads=1)
    argv[1] = "tofu:forget5"
    assert refusal(capsys, train_cli.main, "--target", target, *argv).startswith("forget set: unknown TOFU file")
    assert not (tmp_path / "out").exists()


def test_uld_eval_cli_takes_specs(capsys, tmp_path):
    """The model is checked first, then the data, all before a tokenizer or engine loads."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    out = tmp_path / "out"
    assert "model not found" in refusal(
        capsys, eval_cli.main, "run", "--model", tmp_path / "no", "--data", "tofu:forget05", "--output", out
    )
    message = refusal(capsys, eval_cli.main, "run", "--model", model, "--data", "tofu:forget5", "--output", out)
    assert "unknown TOFU forget split 'forget5'" in message
    message = refusal(capsys, eval_cli.main, "run", "--model", model, "--data", tmp_path / "nodir", "--output", out)
    assert "data directory not found" in message and "tofu:forget05" in message
    assert not out.exists()


def test_training_caches_key_a_tofu_spec_by_its_rows():
    from uld_train.pretrain import file_hash

    assert file_hash("tofu:forget01") == file_hash("tofu:forget01")
    assert len({file_hash("tofu:forget01"), file_hash("tofu:forget05"), file_hash("tofu:retain90")}) == 3
