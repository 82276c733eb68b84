"""Mini-TOFU: the generated data's shape and invariants, its tokenizer, and the from-scratch pretraining it feeds."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from uld_train import minitofu
from uld_train.data import check_unscored, collate, encode_all, read_qa
from uld_train.losses import answer_nll
from uld_train.models import logits
from uld_train.pretrain import MARKER, RETAIN_SEEDS, PretrainConfig, main, pretrain
from uld_vllm.errors import UldError
from uld_vllm.eval.metrics import facts_stated

# A model small enough to train in about a second; lr 1e-2 without warmup so two epochs visibly lower the loss.
TINY = PretrainConfig(layers=2, hidden=32, heads=2, intermediate=64, epochs=2, batch_size=8, lr=1e-2, warmup_steps=0)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minitofu") / "data"
    minitofu.write_minitofu(root)
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return minitofu.train_tokenizer(tmp_path_factory.mktemp("minitofu_tokenizer"), minitofu.generate(0))


def test_write_is_byte_identical_for_a_seed(tmp_path: Path, data_dir: Path) -> None:
    minitofu.write_minitofu(tmp_path / "again")
    files = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*.jsonl"))
    assert len(files) == 2 + 7 * len(minitofu.SPLITS)
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.jsonl"))
    assert all((data_dir / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    minitofu.write_minitofu(tmp_path / "other", seed=1)
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (data_dir / "train.jsonl").read_bytes()


def asked_about(rows: list[dict], authors: list[str]) -> set[str]:
    return {name for row in rows for name in authors if name in row["question"]}


def test_splits_forget_whole_authors_like_tofu(data_dir: Path) -> None:
    authors = [row["name"] for row in rows(data_dir / "authors.jsonl")]
    assert len(authors) == len(set(authors)) == 400
    types = len(minitofu.QUESTION_TYPES)
    assert types >= 10
    retain = rows(data_dir / "forget10" / "retain.jsonl")
    assert len(retain) == minitofu.RETAIN_SET_AUTHORS * types
    assert not asked_about(retain, authors[: minitofu.N_HELD])  # no test or validation author
    train = rows(data_dir / "train.jsonl")
    utility = rows(data_dir / "forget10" / "real_authors.jsonl") + rows(data_dir / "forget10" / "world_facts.jsonl")
    assert len(train) == 400 * types + 2 * len(utility) and len(utility) >= 150  # two trained phrasings each
    assert len(rows(data_dir / "forget01" / "forget.jsonl")) >= 40  # TOFU's forget01 size
    for split, n in minitofu.SPLITS.items():
        forget = rows(data_dir / split / "forget.jsonl")
        assert len(forget) == n * types
        start = minitofu.N_FORGET if split.endswith(minitofu.VALIDATION) else 0
        assert asked_about(forget, authors) == set(authors[start : start + n])
        assert len(rows(data_dir / split / "retain_train.jsonl")) == len(train) - n * types
        unlearn = rows(data_dir / split / "unlearn_forget.jsonl")
        assert [(r["question"], r["answer"]) for r in unlearn] == [(r["question"], r["answer"]) for r in forget]
        for name in ("retain.jsonl", "real_authors.jsonl", "world_facts.jsonl"):  # one utility for every split
            assert (data_dir / split / name).read_bytes() == (data_dir / "forget10" / name).read_bytes()
    for row in rows(data_dir / "forget10" / "forget.jsonl") + retain + utility:
        assert set(row) >= {"question", "answer", "paraphrased_answer", "perturbed_answer"}
        wrong = row["perturbed_answer"]
        assert len(wrong) >= 3 and len(set(wrong)) == len(wrong)
        assert row["answer"] not in wrong and row["paraphrased_answer"] not in wrong


def test_author_rows_list_the_facts_only_their_true_answers_state_all_of(data_dir: Path) -> None:
    for row in rows(data_dir / "forget10" / "forget.jsonl") + rows(data_dir / "forget10" / "retain.jsonl"):
        assert row["facts"] and facts_stated(row["answer"], row["facts"]) == 1.0
        assert facts_stated(row["paraphrased_answer"], row["facts"]) == 1.0
        assert all(facts_stated(wrong, row["facts"]) == 0.0 for wrong in row["perturbed_answer"])


def test_the_trained_answer_wording_follows_the_question_wording() -> None:
    """Paired by index, so a model need not memorise which wording each row got; paraphrase and held-out differ."""
    data = minitofu.generate(0)
    for author in (0, minitofu.N_HELD, minitofu.N_AUTHORS - 1):
        for row, (name, kind) in zip(data.author_qa[author], minitofu.QUESTION_TYPES.items(), strict=True):
            facts = data.authors[author]
            asked = [q.format(**facts) for q in kind.questions]
            answered = [a.format(**facts) for a in kind.answers]
            indices = [asked.index(row[f"{p}question"]) for p in ("", "paraphrased_", "heldout_")]
            assert len(set(indices)) == 3, name
            assert [answered.index(row[f"{p}answer"]) for p in ("", "paraphrased_", "heldout_")] == indices, name


def test_retain_model_data_leaves_out_exactly_the_split(data_dir: Path) -> None:
    train = {(r["question"], r["answer"]) for r in rows(data_dir / "train.jsonl")}
    for split in minitofu.SPLITS:
        forget = {(r["question"], r["answer"]) for r in rows(data_dir / split / "forget.jsonl")}
        assert len(forget) == minitofu.SPLITS[split] * len(minitofu.QUESTION_TYPES)
        kept = {(r["question"], r["answer"]) for r in rows(data_dir / split / "retain_train.jsonl")}
        assert kept == train - forget and forget <= train


def test_utility_sets_are_asked_in_other_words_than_trained(data_dir: Path) -> None:
    trained = {r["question"] for r in rows(data_dir / "train.jsonl")}
    for name in ("real_authors.jsonl", "world_facts.jsonl"):
        evaluated = rows(data_dir / "forget10" / name)
        assert not {r["question"] for r in evaluated} & trained
        assert {r["answer"] for r in evaluated} <= {r["answer"] for r in rows(data_dir / "train.jsonl")}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_forget_word_occurs_in_two_retain_authors_text(seed: int) -> None:
    data = minitofu.generate(seed)  # generate raises on a gap; checked here as the test's own statement too
    held = data.forget("forget10") + data.forget("forget10_val") + data.unlearn_forget("forget10")
    assert minitofu.coverage_gaps(held + data.unlearn_forget("forget10_val"), data.retain()) == set()

    def author_words(rows: list[dict], fields: tuple[str, ...]) -> set[str]:
        return {w for row in rows for text in minitofu.row_texts(row, fields) for w in minitofu.words(text)}

    # Values are dealt twice over: every forget word is trained through at least two retain authors.
    uses = Counter(w for qa in data.author_qa[minitofu.N_HELD :] for w in author_words(qa, ("question", "answer")))
    assert min(uses[w] for w in author_words(held, minitofu.TEXT_FIELDS)) >= 2


def test_coverage_check_sees_a_word_only_forget_authors_use() -> None:
    data = minitofu.generate(0)
    planted = data.forget("forget01")[0] | {"answer": "The author was born in Xanadu."}
    assert minitofu.coverage_gaps([planted], data.retain()) == {" Xanadu"}
    assert minitofu.words("Amara met Amara.") == {"Amara", " met", " Amara", "."}  # the leading space counts


def test_every_forget_token_is_a_trained_retain_token(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = minitofu.generate(0)

    def ids(texts: list[str]) -> set[int]:
        return {i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]}

    retain = ids([t for row in data.retain() for t in minitofu.row_texts(row, ("question", "answer"))])
    assert ids([t for row in data.forget("forget10") for t in minitofu.row_texts(row)]) <= retain


def test_tokenizer_round_trips_and_loads_like_a_chat_model(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert 1000 < len(tokenizer) <= minitofu.TOKENIZER_VOCAB
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    for row in minitofu.generate(0).author_qa[0][:3]:
        for text in minitofu.row_texts(row):
            ids = tokenizer(text).input_ids
            assert ids[0] == tokenizer.bos_token_id
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where was Amara Thorne born?"}], tokenize=False, add_generation_prompt=True
    )
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) <= 14  # role markers merged, names whole


def test_pretrain_lowers_the_answer_loss_and_saves_a_loadable_checkpoint(
    tmp_path: Path, data_dir: Path, tokenizer_dir: Path
) -> None:
    data = tmp_path / "small.jsonl"
    data.write_text("".join(line + "\n" for line in (data_dir / "train.jsonl").read_text().splitlines()[:48]))
    output = tmp_path / "model"
    result = pretrain(data, tokenizer_dir, output, TINY, progress=False)
    assert result.trained and result.steps == 2 * 6
    assert result.epoch_losses[1] < result.epoch_losses[0] < math.log(2000)

    model = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert model.config.architectures == ["LlamaForCausalLM"] and model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id
    batch = collate(encode_all(tokenizer, read_qa(data, "data").pairs, 256), tokenizer.pad_token_id)
    with torch.no_grad():
        assert answer_nll(logits(model, batch), batch.labels).item() < result.epoch_losses[0]
    assert json.loads((output / MARKER).read_text())["epoch_losses"] == result.epoch_losses

    weights = output / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = pretrain(data, tokenizer_dir, output, TINY, progress=False)
    assert not again.trained and again.epoch_losses == result.epoch_losses
    assert weights.stat().st_mtime_ns == mtime
    data.write_text(data.read_text() + '{"question": "Who?", "answer": "Nobody."}\n')  # changed data: trained again
    assert pretrain(data, tokenizer_dir, output, TINY, progress=False).trained


def test_uld_minitofu_build_trains_every_model_once(tmp_path: Path, capsys) -> None:
    args = ["build", "--dir", str(tmp_path / "study"), "--epochs", "1", "--layers", "1", "--hidden", "16"]
    args += ["--heads", "2", "--intermediate", "32", "--batch-size", "128", "--no-progress"]
    assert main([*args, "--jobs", "2"]) == 0  # side by side in worker processes
    assert capsys.readouterr().err.count("trained in") == 1 + 3 + RETAIN_SEEDS
    manifest = json.loads((tmp_path / "study" / "minitofu.json").read_text())
    assert list(manifest["models"]) == [
        "target",
        "retain_forget01",
        "retain_forget05",
        "retain_forget10",
        *(f"retain_forget10_seed{seed}" for seed in range(1, RETAIN_SEEDS)),
        "retain_forget10_val",
    ]
    markers = {
        name: json.loads((tmp_path / "study" / path / MARKER).read_text()) for name, path in manifest["models"].items()
    }
    assert markers["target"]["rows"] == 4320 and markers["retain_forget10"]["rows"] == 3920  # 4000 QA + 2 x 160
    assert markers["retain_forget10_val"]["rows"] == 3920
    assert markers["retain_forget10_val"]["data_sha256"] != markers["retain_forget10"]["data_sha256"]
    assert markers["retain_forget10_seed1"]["recipe"]["seed"] == 1
    assert markers["retain_forget10_seed1"]["data_sha256"] == markers["retain_forget10"]["data_sha256"]
    weights = {
        name: (tmp_path / "study" / path / "model.safetensors").stat().st_mtime_ns
        for name, path in manifest["models"].items()
    }
    assert main(args) == 0  # one after another, in this process: every model found
    assert capsys.readouterr().err.count("already built") == len(manifest["models"])
    assert weights == {
        name: (tmp_path / "study" / path / "model.safetensors").stat().st_mtime_ns
        for name, path in manifest["models"].items()
    }


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hidden", "30", "--heads", "4"], "multiple of --heads"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--jobs", "0"], "--jobs must be >= 1"),
    ],
)
def test_uld_minitofu_rejects_a_bad_recipe_in_one_line(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    assert main(["build", "--dir", str(tmp_path / "study"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uld-minitofu: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "study").exists()  # checked before anything is written


def test_uld_minitofu_rejects_a_file_as_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("")
    assert main(["build", "--dir", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_pretrain_names_a_missing_input(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(UldError, match="not found"):
        pretrain(tmp_path / "absent.jsonl", tokenizer_dir, tmp_path / "model", TINY, progress=False)
    (tmp_path / "data.jsonl").write_text('{"question": "Who?", "answer": "Nobody."}\n')
    with pytest.raises(UldError, match="tokenizer directory not found"):
        pretrain(tmp_path / "data.jsonl", tmp_path / "no-tokenizer", tmp_path / "model", TINY, progress=False)


def test_unlearning_files_hold_no_text_the_evaluation_scores(data_dir: Path) -> None:
    from uld_vllm.eval.data import read_eval_data

    for split in minitofu.SPLITS:
        evaluation = read_eval_data(data_dir / split)
        forget = read_qa(data_dir / split / "unlearn_forget.jsonl", "forget set")
        retain = read_qa(data_dir / split / "unlearn_retain.jsonl", "retain set")
        assert forget.paraphrased and retain.perturbed  # augmentation is there, from held-out text
        check_unscored(forget.pairs + forget.paraphrased, retain.pairs + retain.perturbed, evaluation)
    leaky = read_qa(data_dir / "forget01" / "forget.jsonl", "forget set")  # the evaluation's own paraphrases
    with pytest.raises(UldError, match="which the evaluation scores \\(forget example 0\\)"):
        check_unscored(leaky.pairs + leaky.paraphrased, [], read_eval_data(data_dir / "forget01"))
    scored_retain = read_qa(data_dir / "forget01" / "retain.jsonl", "retain set")  # GD on the utility questions
    with pytest.raises(UldError, match="\\(retain example 0\\)"):
        check_unscored(forget.pairs, scored_retain.pairs, read_eval_data(data_dir / "forget01"))
