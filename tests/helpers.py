"""Helpers every test directory shares (on pytest's pythonpath): small engines, CLI refusals, batch configs, edits.

The environment (in-process vLLM engine cores, offline hub, one tokenizer thread) is set once, in conftest.py.
"""

from __future__ import annotations

import gc
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

# Eager mode and a small explicit KV cache keep engine start-up short on CPU (vLLM otherwise claims a share of host
# memory per engine). `SMALL_ENGINE` is what commands take as their engine arguments (BatchConfig, EvalSettings).
SMALL_ENGINE: dict[str, Any] = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}
# make_llm / vllm.LLM arguments of a test engine: float32, because the oracle (the HF reference decoder) is float32 and
# the default dtype depends on the CPU's flags.
ENGINE_KWARGS: dict[str, Any] = dict(dtype="float32", max_model_len=256, seed=0, **SMALL_ENGINE)


@contextmanager
def torch_threads(threads: int = 1) -> Iterator[None]:
    """Torch's intra-op threads for the block, restored after. One: tiny models on a shared 2-core CPU run several
    times faster than with two threads contending."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def engine(bundle: Path | str, **kwargs: Any) -> Iterator:
    """A real in-process ULD engine on `bundle`, shut down on exit."""
    from uld_vllm.engine import make_llm, shutdown_llm

    llm = make_llm(bundle, **(ENGINE_KWARGS | kwargs))
    try:
        yield llm
    finally:
        shutdown_llm(llm)
        gc.collect()


@contextmanager
def plain_engine(model_dir: Path | str, **kwargs: Any) -> Iterator:
    """Plain vLLM on an HF checkpoint, with the test engine settings."""
    from vllm import LLM

    from uld_vllm.engine import shutdown_llm

    llm = LLM(model=str(model_dir), **(ENGINE_KWARGS | kwargs))
    try:
        yield llm
    finally:
        shutdown_llm(llm)
        gc.collect()


def refusal(capsys, main: Callable[[list[str]], int], *argv: Any) -> str:
    """Run a command's main expecting a refusal: exit 2 and exactly one stderr line `PROG: error: MESSAGE`.
    Returns MESSAGE."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    _, sep, message = err.partition(": error: ")
    assert sep and err.endswith("\n") and err.count("\n") == 1, err
    assert message.strip(), err
    return message[:-1]


def batch_config(bundle: Path, input: Path, output: Path, **options: Any):
    """A small uld-batch job (8 tokens, context 128, float32, small engine); options override any field."""
    from uld_vllm.batch import BatchConfig

    defaults: dict[str, Any] = dict(max_tokens=8, max_model_len=128, dtype="float32", engine_args=SMALL_ENGINE)
    return BatchConfig(input=str(input), output=str(output), model=str(bundle), **(defaults | options))


WORDS = "who wrote the book where was author born city award genre father mother novel".split()


def write_prompts(path: Path, rows: int, seed: int = 0, **extra_columns: Any) -> Path:
    """A parquet of `rows` short text prompts with string ids `q{i}` and a passthrough column `topic`."""
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(rows)]
    table = pa.table(
        {
            "id": [f"q{i}" for i in range(rows)],
            "prompt": prompts,
            "topic": [f"t{i % 3}" for i in range(rows)],
            **extra_columns,
        }
    )
    pq.write_table(table, path)
    return path


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_tensors(path: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite a safetensors file after `edit` changed its tensors dict in place."""
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def count_model_reads(monkeypatch, model: Path) -> Counter[str]:
    """Counts, from now on, uld's reads of `model`'s config.json and of adapter weights: {"config": n, "adapter": m}.
    (vLLM and transformers parse the config themselves with open(), which this does not count.)"""
    import uld_vllm.assistant

    counts: Counter[str] = Counter()
    read_text, read_adapter = Path.read_text, uld_vllm.assistant.read_adapter_weights

    def counted_read_text(self, *args, **kwargs):
        if self.name == "config.json" and self.parent.resolve() == model.resolve():
            counts["config"] += 1
        return read_text(self, *args, **kwargs)

    def counted_adapter(directory, *args, **kwargs):
        counts["adapter"] += 1
        return read_adapter(directory, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted_read_text)
    monkeypatch.setattr(uld_vllm.assistant, "read_adapter_weights", counted_adapter)
    return counts
