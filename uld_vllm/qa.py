"""The question-answer format shared by training and evaluation: files of QA rows, and how a QA pair becomes tokens.

Training (uld_train) and TOFU evaluation (uld_vllm.eval) must see a question exactly as the other does, or the
evaluation measures a different prompt than the one trained: both call these functions, nothing else.
"""

from __future__ import annotations

from pathlib import Path

from uld_vllm import tofu
from uld_vllm.rows import DataError, read_file


def read_rows(path: str | Path, what: str) -> list[dict]:
    """Rows of a QA file; `tofu:NAME` gives TOFU's own file NAME (uld_vllm.tofu), so every reader of QA files
    (training, evaluation) accepts TOFU's names through this one function."""
    if tofu.is_tofu_spec(path):
        try:
            return tofu.rows(tofu.spec_name(path))
        except DataError as e:
            raise DataError(f"{what}: {e}") from None
    return read_file(Path(path), what)


# ---------------------------------------------------------------------------------------------------- tokenising


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Question as the model sees it at inference: the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes BOS itself
    return tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=True)["input_ids"]


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Answer tokens plus EOS, so the model also learns where the answer stops (as TOFU trains)."""
    text = answer if getattr(tokenizer, "chat_template", None) else " " + answer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return []
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
