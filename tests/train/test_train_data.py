"""Data loading, augmentation, question masking and the seeded batch plan."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from train_toy import FORGET, RETAIN

from uld_train.data import QA, batch_plan, collate, encode, read_qa, unique
from uld_train.losses import IGNORE_INDEX
from uld_train.models import load_tokenizer


def test_augmentation_columns_become_extra_pairs(forget_file, retain_file):
    forget, retain = read_qa(forget_file, "forget set"), read_qa(retain_file, "retain set")
    assert [(qa.question, qa.answer) for qa in forget.pairs] == [(r["question"], r["answer"]) for r in FORGET]
    assert len(forget.paraphrased) == 2 * len(
        FORGET
    )  # (paraphrased question, answer) and (question, paraphrased answer)
    assert (FORGET[0]["paraphrased_question"], FORGET[0]["answer"]) in [
        (qa.question, qa.answer) for qa in forget.paraphrased
    ]
    assert (FORGET[0]["question"], FORGET[0]["paraphrased_answer"]) in [
        (qa.question, qa.answer) for qa in forget.paraphrased
    ]
    assert [(qa.question, qa.answer) for qa in retain.perturbed] == [(RETAIN[0]["question"], "Doran was born in Phan.")]
    assert retain.paraphrased == []


def test_parquet_reads_like_json_lines(tmp_path, forget_file):
    path = tmp_path / "forget.parquet"
    pq.write_table(pa.Table.from_pylist(FORGET), path)
    assert read_qa(path, "forget set").pairs == [
        QA(qa.question, qa.answer, qa.source.replace("forget.jsonl", "forget.parquet"))
        for qa in read_qa(forget_file, "forget set").pairs
    ]


def test_chat_template_prompt_is_masked_and_answer_ends_with_eos(train_target):
    tokenizer = load_tokenizer(train_target)
    example = encode(tokenizer, QA("Where was Kalomi born?", "In Tersuvel.", "test"), max_length=512)
    prompt = tokenizer(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "Where was Kalomi born?"}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
    )["input_ids"]
    answer = tokenizer("In Tersuvel.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example.input_ids == prompt + answer
    assert example.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert prompt.count(tokenizer.bos_token_id) == 1


def test_collate_pads_right_and_never_labels_padding(train_target):
    tokenizer = load_tokenizer(train_target)
    short = encode(tokenizer, QA("Who?", "Mido.", "a"), 512)
    long = encode(tokenizer, QA("Who was the father of Kalomi?", "His father was Velorin.", "b"), 512)
    batch = collate([short, long], pad_id=tokenizer.pad_token_id)
    n = len(short.input_ids)
    assert batch.attention_mask[0].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
    assert (batch.labels[0, n:] == IGNORE_INDEX).all() and (batch.input_ids[0, n:] == tokenizer.pad_token_id).all()


def test_unique_drops_repeated_pairs():
    pairs = [QA("q", "a", "1"), QA("q", "a", "2"), QA("q", "b", "3")]
    assert [qa.source for qa in unique(pairs)] == ["1", "3"]


def test_batch_plan_is_seeded_and_covers_the_forget_set_each_epoch():
    plan = batch_plan(n_forget=10, n_retain=3, batch_size=4, grad_accum=2, epochs=2, seed=7)
    assert plan == batch_plan(10, 3, 4, 2, 2, seed=7) and plan != batch_plan(10, 3, 4, 2, 2, seed=8)
    assert len(plan) == 4  # 3 micro-batches per epoch -> steps of 2 + 1
    micro = [m for step in plan for m in step]
    for epoch in (micro[:3], micro[3:]):
        assert sorted(i for forget, _ in epoch for i in forget) == list(range(10))
    assert all(len(retain) == len(forget) and set(retain) <= {0, 1, 2} for forget, retain in micro)
