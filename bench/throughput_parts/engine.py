"""One vLLM engine as every bench process starts it, times a generate call on it and switches its assistant head."""

from __future__ import annotations

import time

from bench.steps import take_steps
from bench.throughput_parts.settings import SYSTEMS


def start_engine(system: str, spec: dict):
    """A vLLM engine of one system (quiet), as every worker starts it."""
    from vllm import LLM

    from uld_vllm.engine import check_model, make_llm, quiet_vllm

    quiet_vllm()
    kwargs = {
        "dtype": spec["dtype"],
        "max_model_len": 512,
        "skip_tokenizer_init": True,
        "kv_cache_memory_bytes": spec["kv_cache_bytes"],
        "max_num_seqs": max(spec["batch_sizes"]),
        "max_num_batched_tokens": 4096,
        "enable_prefix_caching": False,
        "seed": 0,
    }
    if system == "plain":
        return LLM(model=spec["target"], **kwargs)
    options = SYSTEMS[system]
    model = check_model(spec["bundle"], filter=options["filter"])
    return make_llm(model, hf_overrides=options.get("hf_overrides"), **kwargs)


def timed_generate(llm, inputs: list[dict], params) -> tuple[float, list, list]:
    """(seconds, the model's steps as `bench.steps` clocks them, outputs) of one generate call: the one timed call
    every measurement on a shared process makes."""
    llm.apply_model(take_steps)  # drop what earlier calls left
    begin = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - begin
    (steps,) = llm.apply_model(take_steps)
    return seconds, steps, outputs


def switch_head(model, on: bool) -> None:
    """The engine's assistant head as started (on) or none (off: the dense head, as uld_sparse_head False starts the
    engine). Its clocks and stats stay with it while it is off."""
    if not hasattr(model, "started_head"):
        model.started_head = model.head
    model.head = model.started_head if on else None
