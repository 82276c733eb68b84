"""What each worker process measures: one engine start, every vLLM system interleaved, or the HF reference."""

from __future__ import annotations

import gc
import resource
import time
from functools import partial

from tqdm import tqdm

from bench.steps import best_steps, clock_steps
from bench.throughput_parts.engine import start_engine, switch_head, timed_generate
from bench.throughput_parts.settings import FILTER
from bench.throughput_parts.workloads import spec_requests, spec_scoring_texts


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_worker(worker: str, spec: dict) -> dict:
    """One worker process: `start:SYSTEM` (one engine start), `engines` (every vLLM system's throughput, interleaved)
    or `hf-reference`."""
    import torch

    torch.manual_seed(0)
    requests = spec_requests(spec)
    texts = spec_scoring_texts(spec)
    if worker == "hf-reference":
        return reference_worker(spec, requests, texts)
    if worker.startswith("start:"):
        return start_worker(worker.removeprefix("start:"), spec, requests)
    return engines_worker(spec, requests, texts)


def start_worker(system: str, spec: dict, requests) -> dict:
    """Engine start (compile cache as the caller left it: empty for a cold start), weights, KV blocks, and the peak
    memory of the largest batch's prefill. Its own process, so the start and the memory are this system's alone."""
    from vllm import SamplingParams

    from uld_vllm.engine import shutdown_llm

    started = time.perf_counter()
    llm = start_engine(system, spec)
    result = {"start_seconds": time.perf_counter() - started}
    try:
        (result["weight_bytes"],) = llm.apply_model(_weight_bytes)
        result["kv_blocks"] = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
        if spec.get("measure_memory"):
            params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
            llm.generate([{"prompt_token_ids": p} for p, _ in requests], params, use_tqdm=False)
    finally:
        shutdown_llm(llm)
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def engines_worker(spec: dict, requests, texts) -> dict:
    """Every vLLM system's throughput in ONE process, interleaved: each measurement runs once per system in turn,
    `repeats` rounds (4x for batches of 8 or fewer), best kept: ratios between separate processes vary far more than
    side by side (bench/results/README.md)."""
    from vllm import SamplingParams

    from uld_vllm.answer_scoring import answer_params
    from uld_vllm.engine import shutdown_llm

    systems = spec["engine_systems"]
    host_of = spec.get("head_off_on", {})
    engines = {system: start_engine(system, spec) for system in systems if system not in host_of}
    engines |= {system: engines[host] for system, host in host_of.items()}
    distinct = list({id(llm): llm for llm in engines.values()}.values())
    for llm in distinct:
        llm.apply_model(clock_steps)

    def turn(system: str):
        """The system's engine, its head switched on or off for this system where engines are shared."""
        if system in host_of or system in host_of.values():
            engines[system].apply_model(partial(switch_head, on=system not in host_of))
        return engines[system]

    results = {system: {"decode": {}} for system in systems}

    def interleaved(prompts: list[list[int]], max_tokens: list[int] | None = None) -> dict[str, tuple]:
        """(seconds, seconds of them in compute_logits, `best_steps`) to generate (max_tokens each, EOS ignored) or
        score (None: each prompt's log-probs through uld_vllm.answer_scoring, plain vLLM's too), the best of `repeats` rounds, the systems taking turns within each round, in
        an order that rotates from round to round."""
        if max_tokens is None:  # every token after the first scored as uld-eval scores answers, the cache not read
            params = answer_params(1, read_cache=False)
        else:
            params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in max_tokens]
        inputs = [{"prompt_token_ids": p} for p in prompts]
        best = {system: (float("inf"), 0.0) for system in systems}
        steps: dict[str, list] = {system: [] for system in systems}
        # Small batches finish in about a second, where one process's timings vary most: 4x the rounds.
        rounds = spec["repeats"] * (4 if len(prompts) <= 8 else 1)
        for round in range(rounds):
            for system in rotated(systems, round):
                seconds, taken, outputs = timed_generate(turn(system), inputs, params)
                steps[system].append(taken)
                best[system] = min(best[system], (seconds, sum(step[3] for step in taken)))
                if max_tokens is not None:
                    assert [len(o.outputs[0].token_ids) for o in outputs] == max_tokens
        return {system: (*best[system], best_steps(steps[system])) for system in systems}

    try:
        interleaved([r[0] for r in requests[:2]], [4, 4])  # warm-up: first shapes, the prompt log-prob path
        interleaved(texts[:2])
        for size in tqdm(spec["batch_sizes"], desc="batch sizes", unit="size"):
            prompts, max_tokens = [p for p, _ in requests[:size]], [m for _, m in requests[:size]]
            decode = interleaved(prompts, max_tokens)
            ttft = interleaved(prompts, [1] * size)
            for system in systems:
                seconds, logits_seconds, by_step = decode[system]
                results[system]["decode"][size] = {
                    "tok_s": sum(max_tokens) / seconds,
                    "logits_share": logits_seconds / seconds,
                    "ttft_s": ttft[system][0],
                    "output_tokens": sum(max_tokens),
                    "steps": by_step,
                }
        scored = sum(len(t) - 1 for t in texts)
        for system, (seconds, logits_seconds, by_step) in interleaved(texts).items():
            results[system]["scoring"] = {
                "tok_s": scored / seconds,
                "logits_share": logits_seconds / seconds,
                "steps": by_step,
            }
        for system in systems:
            if system != "plain":
                (results[system]["head"],) = turn(system).apply_model(_head_stats)
    finally:
        for llm in distinct:
            shutdown_llm(llm)
        gc.collect()
    return results


def rotated(items: list, round: int) -> list:
    """`items` starting at round's turn: interleaved measurements where no item always follows the same neighbour."""
    return items[round % len(items) :] + items[: round % len(items)]


def _weight_bytes(model) -> int:
    """Parameter and buffer bytes the model holds (the LoRA is held as buffers), each tensor counted once. On CPU
    vLLM re-packs every linear layer's weight for oneDNN and empties the parameter: those count at their shape."""
    from vllm.model_executor.layers.linear import LinearBase

    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    held = sum(t.numel() * t.element_size() for t in tensors.values() if t.is_floating_point())
    packed = sum(
        m.input_size_per_partition * m.output_size_per_partition * m.params_dtype.itemsize
        for m in model.modules()  # each module once
        if isinstance(m, LinearBase) and m.weight.numel() == 0
    )
    return held + packed


def _head_stats(model) -> dict:
    return model.head.report() if model.head is not None else {}


def reference_worker(spec: dict, requests, texts) -> dict:
    import torch

    from uld_vllm.reference import ReferenceDecoder

    started = time.perf_counter()
    reference = ReferenceDecoder.from_bundle(spec["bundle"], filter=FILTER, dtype=getattr(torch, spec["dtype"]))
    result = {"system": "hf-reference", "start_seconds": time.perf_counter() - started, "decode": {}}
    result["weight_bytes"] = sum(
        p.numel() * p.element_size() for m in (reference.target, reference.assistant) for p in m.parameters()
    )
    for size in spec["reference_batch_sizes"]:
        batch = requests[:size]
        tokens = sum(m for _, m in batch)
        begin = time.perf_counter()
        # Batched HF generation decodes every row for the longest request: the work the paper's code does.
        reference.generate([p for p, _ in batch], max(m for _, m in batch))
        seconds = time.perf_counter() - begin
        begin = time.perf_counter()
        reference.generate([p for p, _ in batch], 1)
        result["decode"][size] = {
            "tok_s": tokens / seconds,
            "ttft_s": time.perf_counter() - begin,
            "output_tokens": tokens,
        }
    begin = time.perf_counter()
    for i in range(0, len(texts), 32):
        reference.score_batch([(t[:1], t[1:]) for t in texts[i : i + 32]])
    result["scoring"] = {"tok_s": sum(len(t) - 1 for t in texts) / (time.perf_counter() - begin)}
    result["peak_rss_gib"] = peak_rss_gib()
    return result
