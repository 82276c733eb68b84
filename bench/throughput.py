"""ULD vs plain vLLM vs the HF reference decoder: decode and scoring throughput, side by side in one run.

    .venv/bin/python bench/throughput.py                  # the bench shape (about 150M, vocab 32000, K = L/4)
    .venv/bin/python bench/throughput.py --shape large    # hidden 2048, vocab 128256
    .venv/bin/python bench/throughput.py --quick          # a tiny shape: checks the script, not speed

Systems (engine starts and peak memory: each system in its own processes, cold starts (an empty compile cache) and
warm ones, each best of 1 + --repeats, the systems taking turns; throughput: every vLLM system in one process, each
measurement interleaved across them (the order rotating), best of --repeats rounds, so that ratios compare side by
side; the HF reference in its own process; torch's tensors on huge pages in every process):
    plain            vLLM on the target alone
    uld-f0           the ULD engine, shared weights, filter 0 (dense assistant head: log_softmax needs every logit)
    uld-f0.01        the ULD engine, shared weights, filter 0.01 (sparse assistant head, chosen by cost)
    uld-f0.01-dense  the same with the sparse head off: what the sparse head is measured against (its throughput on
                     uld-f0.01's engine, the head switched off for its turns: HEAD_OFF_ON)
    uld-merged-f0    the merged-copy fallback (the design before shared weights), filter 0
    hf-reference     the HF reference decoder, batched, two KV caches (what the paper's code does), filter 0.01

Workloads: decode (B requests at once, prompts of 16-256 tokens, max_tokens drawn from 16-128, EOS ignored, greedy)
at each batch size B, with time to first token (the same B prompts, max_tokens 1); scoring (teacher-forced prompt
log-probs of 256 texts of 64-192 tokens, what TOFU evaluation does). Beside every ULD/plain ratio: the limits the
model's shape implies for the work actually done (FLOPs and bytes per token, from the config, the LoRA rank, the
mean union of kept tokens). Writes bench/results/throughput[-large].{json,md,png}.

The bench model is random, with an LM head made realistic (`realistic_head`): trained LMs put the same frequent
tokens near the top in every context and have next-token entropies of 2-4 nats; a random head is either flat (the
filter keeps nearly everything) or keeps unrelated sets per row (a union far larger than a trained model's).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from statistics import median

from tqdm import tqdm

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's large tensors on transparent huge pages (madvise; every system alike, the HF reference too), as a tuned CPU
# deployment runs. It is no cure for the spread between identical engines (bench/results/README.md).
# Set THP_MEM_ALLOC_ENABLE=0 to measure without; the report records which (uld_vllm.machine.huge_pages).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.steps import best_steps, clock_steps, steps_speedup, take_steps  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SYSTEMS = {
    "plain": {},
    "uld-f0": {"filter": 0.0},
    "uld-f0.01": {"filter": 0.01},
    "uld-f0.01-dense": {"filter": 0.01, "hf_overrides": {"uld_sparse_head": False}},
    "uld-merged-f0": {"filter": 0.0, "hf_overrides": {"uld_share_weights": False}},
    "hf-reference": {"filter": 0.01},
}
# Systems measured on another system's engine, with its assistant head switched off for their turns (what
# uld_sparse_head False starts): the same weights, memory and process, so sparse / dense compares the head alone.
# Runs of identical code also drift over minutes, on one shared engine too, by more than the head choice moves where it
# is close (bench/results/README.md): sharing removes only the engine-to-engine part; bench/head_choice.py pairs
# adjacent runs for the rest. Engine starts and peak memory stay each system's own.
HEAD_OFF_ON = {"uld-f0.01-dense": "uld-f0.01"}
SHAPES = {
    "bench": dict(hidden=1024, layers=8, heads=16, kv_heads=4, intermediate=2816, vocab=32000),
    "large": dict(hidden=2048, layers=8, heads=16, kv_heads=4, intermediate=5632, vocab=128256),
    "quick": dict(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=344, vocab=2048),
}
TARGET_ENTROPY = 3.0  # nats: the middle of trained models' 2-4
# Std of the context-dependent part of the bench head's logits: how much contexts differ. At 3.0 the union of 64 rows'
# keep sets (r = 0.01) is about 7,800 of 32,000 tokens, the middle of the 3,700-15,000 that simulations of trained
# (frequent tokens lead every row) and unrelated rows gave; a head of context parts only gives about 14,700.
CONTEXT_STD = 3.0
FILTER = 0.01
LORA_RANK = 16
STEP_NOTE = "each engine step's best round"  # how best_steps rebuilds a round, as reports name it


# ------------------------------------------------------------------------------------------------------- the model


def assistant_depth(layers: int) -> int:
    """K = L/4: the bench assistant's depth."""
    return max(1, layers // 4)


def build_model(work: Path, shape: dict, seed: int = 0) -> Path:
    """A random Llama with a realistic head, as a ULD bundle (LoRA assistant over K = L/4 layers); cached."""
    from uld_vllm.testing import build_test_bundle

    bundle = work / "bundle"
    if (work / "head.json").exists():
        return bundle
    build_test_bundle(
        work,
        layers=shape["layers"],
        assistant_layers=assistant_depth(shape["layers"]),
        hidden=shape["hidden"],
        filter=FILTER,
        seed=seed,
        target_kwargs={
            "vocab_size": shape["vocab"],
            "heads": shape["heads"],
            "kv_heads": shape["kv_heads"],
            "intermediate": shape["intermediate"],
        },
    )
    report = realistic_head(work, shape, seed)
    (work / "head.json").write_text(json.dumps(report, indent=2))
    return bundle


def final_hidden(target_dir: Path, vocab: int, rows: int, seed: int):
    """Final (normed) hidden states of the target at the last position of random prompts: (rows, H)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (rows, 48), generator=generator)
    with torch.no_grad():
        return model.model(input_ids=ids).last_hidden_state[:, -1]


def keep_stats(logits, filter: float, group: int = 64) -> dict:
    """Entropy, kept tokens per row and union of kept tokens over `group` rows, under the relative-top filter."""
    import torch

    from uld_vllm.combine import relative_top_mask

    logprobs = torch.log_softmax(logits, dim=-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1).mean().item()
    keep = ~relative_top_mask(logits, filter)
    unions = [keep[i : i + group].any(0).sum().item() for i in range(0, keep.shape[0] - group + 1, group)]
    return {
        "entropy_nats": entropy,
        "mean_kept_per_row": keep.sum(-1).float().mean().item(),
        "union": sum(unions) / len(unions),
    }


def realistic_head(work: Path, shape: dict, seed: int) -> dict:
    """Make the bench model's next-token distributions look like a trained LM's, in every context.

    Trained LMs carry a near-constant direction in the residual stream, and their head maps it to a log-frequency
    prior, so the same frequent tokens lead everywhere. A random Llama has neither: we add a random vector (3x an
    embedding's norm) to every token embedding, so every final hidden state shares a direction u (the mean of the
    final states; cosine about 0.9 with each), and rewrite the LM head (target and bundle) as
    CONTEXT_STD * W_ctx + s * z u^T / m:  W_ctx is the random head blind to u (each context's own logits, unit std),
    z = -log(rank) a Zipf prior over shuffled ids, m the mean projection of the final states on u. The steepness s is
    set by bisection for a mean next-token entropy of TARGET_ENTROPY nats on 256 contexts; the returned keep-set
    statistics come from 256 other contexts (what the engine will see), beside those of a head of context parts only
    (unrelated rows) with the same entropy."""
    import torch
    from safetensors.torch import load_file

    vocab = shape["vocab"]
    generator = torch.Generator().manual_seed(seed)
    files = (work / "target" / "model.safetensors", work / "bundle" / "model.safetensors")
    weights = load_file(files[0])
    embed, random_head = weights["model.embed_tokens.weight"], weights["lm_head.weight"]
    shared = torch.randn(embed.shape[1], generator=generator)
    embed = embed + 3.0 * embed.norm(dim=1).mean() * shared / shared.norm()
    _rewrite(files, {"model.embed_tokens.weight": embed})

    hidden = final_hidden(work / "target", vocab, 256, seed)  # (256, H): for fitting
    held_out = final_hidden(work / "target", vocab, 256, seed + 1)  # (256, H): for the report
    direction = hidden.mean(0) / hidden.mean(0).norm()
    projection = (hidden @ direction).mean()
    context_head = random_head - torch.outer(random_head @ direction, direction)  # sees each context, not u
    context_head = context_head / (hidden @ context_head.T).std()
    zipf = -torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
    zipf = zipf[torch.randperm(vocab, generator=generator)]  # frequent ids spread over the vocabulary
    prior = torch.outer(zipf - zipf.mean(), direction) / projection  # (V, H): logit prior z in every context

    def entropy(head) -> float:
        return keep_stats(hidden @ head.T, FILTER)["entropy_nats"]

    def bisect(make_head) -> float:
        """The parameter (in 1e-3 .. 1e2, entropy falling as it grows) that gives TARGET_ENTROPY."""
        low, high = 1e-3, 1e2
        for _ in range(30):
            middle = (low * high) ** 0.5
            low, high = (middle, high) if entropy(make_head(middle)) > TARGET_ENTROPY else (low, middle)
        return (low * high) ** 0.5

    steepness = bisect(lambda s: CONTEXT_STD * context_head + s * prior)
    head = (CONTEXT_STD * context_head + steepness * prior).contiguous()
    random_scale = bisect(lambda a: a * context_head)
    _rewrite(files, {"lm_head.weight": head})
    return {
        "realistic": keep_stats(held_out @ head.T, FILTER) | {"zipf_steepness": steepness, "context_std": CONTEXT_STD},
        "random_same_entropy": keep_stats(held_out @ (random_scale * context_head).T, FILTER),
        "filter": FILTER,
        "rows_per_union": 64,
        "contexts": "256 random prompts of 48 tokens, not those the head was fitted on",
    }


def _rewrite(files, tensors: dict) -> None:
    """Replace tensors (cast to each file's dtype) in safetensors files."""
    from safetensors.torch import load_file, save_file

    for path in files:
        stored = load_file(path)
        stored |= {name: t.to(stored[name].dtype).contiguous() for name, t in tensors.items()}
        save_file(stored, path, metadata={"format": "pt"})


# -------------------------------------------------------------------------------------------------------- workloads


def decode_requests(count: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens): prompts of 16-256 tokens, outputs of 16-128 tokens, as users' jobs look."""
    rng = random.Random(seed)
    return [
        ([1] + [rng.randrange(4, vocab) for _ in range(rng.randint(15, 255))], rng.randint(16, 128))
        for _ in range(count)
    ]


def spec_requests(spec: dict) -> list[tuple[list[int], int]]:
    """The decode requests every worker runs (the first B of them at batch size B), and the report's limits count."""
    return decode_requests(max(spec["batch_sizes"]), spec["vocab"], seed=1)


def scoring_texts(count: int, vocab: int, seed: int) -> list[list[int]]:
    """Prompt + answer token ids of 64-192 tokens: what TOFU's teacher-forced metrics score."""
    rng = random.Random(seed)
    return [[1] + [rng.randrange(4, vocab) for _ in range(rng.randint(63, 191))] for _ in range(count)]


def model_costs(config, rank: int, head_stats: dict | None) -> dict[str, float]:
    """Per-token weight parameters of the target and of ULD's extra work, and the limits of ULD / plain they imply.

    bytes (weight-bound decoding): plain reads the target's weights once per step; shared-weight ULD adds only the
    LoRA (r * (in + out) per linear of K layers); the merged copy adds K layers. FLOPs (compute-bound): ULD adds K
    layers (2 multiply-adds per weight per row, as the target's), the LoRA, and the assistant's head over V (dense)
    or, with the union head, over V on the calls its rule left dense and over the mean union on the others."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    layers = config.num_hidden_layers
    k = assistant_depth(layers)
    layer = h * h * 2 + h * kv * 2 + 3 * h * i
    lora = rank * ((h + h + 2 * kv) + (h + h) + (h + 2 * i) + (i + h))  # qkv, o, gate_up, down
    head = h * v
    target = layers * layer + head
    sparse_head = head
    if head_stats and head_stats.get("calls"):
        share = head_stats["sparse_calls"] / head_stats["calls"]
        sparse_head = head * (share * head_stats["mean_union"] / v + 1 - share)
    return {
        "target_params": target,
        "layer_params": layer,
        "lora_params_per_layer": lora,
        "lm_head_params": head,
        "sparse_head_params": sparse_head,
        "assistant_layers": k,
        "byte_limit_shared": target / (target + k * lora),
        "byte_limit_merged": target / (target + k * layer),
        "flop_limit_dense": target / (target + k * (layer + lora) + head),
        "flop_limit_sparse": target / (target + k * (layer + lora) + sparse_head),
    }


def decode_limits(costs: dict, requests: list[tuple[list[int], int]]) -> dict[str, float]:
    """The FLOP limits for one decode batch's work (model_costs' are per token: right for scoring, where every token
    gets logits). In decode every prompt token and every output token but the last passes the layers (the target's L,
    the assistant's K), while the heads run once per output token (vLLM computes logits only where it samples): the
    prompts dilute the heads' share, and with it what a sparse head can save."""
    layer_tokens = sum(len(prompt) + new - 1 for prompt, new in requests)
    head_rows = sum(new for _, new in requests)
    c = costs
    plain = layer_tokens * (c["target_params"] - c["lm_head_params"]) + head_rows * c["lm_head_params"]
    extra = layer_tokens * c["assistant_layers"] * (c["layer_params"] + c["lora_params_per_layer"])
    dense = plain + extra + head_rows * c["lm_head_params"]
    sparse = plain + extra + head_rows * c["sparse_head_params"]
    return {"flop_limit_dense": plain / dense, "flop_limit_sparse": plain / sparse, "sparse_over_dense": dense / sparse}


# ----------------------------------------------------------------------------------------------------- the workers


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_worker(worker: str, spec: dict) -> dict:
    """One worker process: `start:SYSTEM` (one engine start), `engines` (every vLLM system's throughput, interleaved)
    or `hf-reference`."""
    import torch

    torch.manual_seed(0)
    requests = spec_requests(spec)
    texts = scoring_texts(spec["scoring_texts"], spec["vocab"], seed=2)
    if worker == "hf-reference":
        return reference_worker(spec, requests, texts)
    if worker.startswith("start:"):
        return start_worker(worker.removeprefix("start:"), spec, requests)
    return engines_worker(spec, requests, texts)


def start_engine(system: str, spec: dict):
    """A vLLM engine of one system (quiet), as every worker starts it."""
    from vllm import LLM

    from uld_vllm.engine import make_llm, quiet_vllm

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
    return make_llm(
        spec["bundle"], filter=options["filter"], check=False, hf_overrides=options.get("hf_overrides"), **kwargs
    )


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
            engines[system].apply_model(partial(_switch_head, on=system not in host_of))
        return engines[system]

    results = {system: {"decode": {}} for system in systems}

    def interleaved(prompts: list[list[int]], max_tokens: list[int] | None = None) -> dict[str, tuple]:
        """(seconds, seconds of them in compute_logits, `best_steps`) to generate (max_tokens each, EOS ignored) or
        score (None: prompt log-probs), the best of `repeats` rounds, the systems taking turns within each round, in
        an order that rotates from round to round."""
        if max_tokens is None:
            params = SamplingParams(max_tokens=1, prompt_logprobs=0)
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


def timed_generate(llm, inputs: list[dict], params) -> tuple[float, list, list]:
    """(seconds, the model's steps as `bench.steps` clocks them, outputs) of one generate call: the one timed call
    every measurement on a shared process makes."""
    llm.apply_model(take_steps)  # drop what earlier calls left
    begin = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - begin
    (steps,) = llm.apply_model(take_steps)
    return seconds, steps, outputs


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


def _switch_head(model, on: bool) -> None:
    """The engine's assistant head as started (on) or none (off: the dense head, as uld_sparse_head False starts the
    engine). Its clocks and stats stay with it while it is off."""
    if not hasattr(model, "started_head"):
        model.started_head = model.head
    model.head = model.started_head if on else None


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


# ----------------------------------------------------------------------------------------------------- the driver


def measure(worker: str, spec: dict, cache: Path | None = None) -> dict:
    """Run one worker in a fresh process (vLLM's compile cache under `cache`); its JSON result is stdout's last line.
    The long phases' stderr (their progress bars; vLLM is quiet there) is relayed as it comes: the engines' phase runs
    for half an hour. An engine start's is kept back (its progress is the caller's bar) and shown if it fails."""
    command = [sys.executable, __file__, "--worker", worker, "--spec", json.dumps(spec)]
    env = os.environ | ({"VLLM_CACHE_ROOT": str(cache)} if cache else {})
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as process:
        tail = bytearray()  # the last 4000 bytes, for the error message

        def relay() -> None:
            for chunk in iter(lambda: process.stderr.read1(4096), b""):
                if not worker.startswith("start:"):
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                tail.extend(chunk)
                del tail[:-4000]

        relaying = threading.Thread(target=relay, daemon=True)
        relaying.start()
        stdout = process.stdout.read().decode()
        process.wait()
        relaying.join()
    if process.returncode != 0:
        raise RuntimeError(f"{worker} failed:\n{tail.decode(errors='replace')}")
    return json.loads(stdout.strip().splitlines()[-1])


class Phases:
    """Each finished phase's result, saved under the work folder as it ends: `--resume` reuses those an earlier run
    of the same spec finished (a full run takes over an hour; a killed one should not start over). A phase's file is
    named by its spec's digest too, so a partial run (other systems, repeats) never overwrites a full run's."""

    def __init__(self, work: Path, spec: dict, resume: bool) -> None:
        self.folder, self.spec, self.resume = work / "phases", spec, resume
        self.digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def run(self, name: str, measure_phase, *args) -> dict:
        path = self.folder / f"{name}-{self.digest}.json"
        if self.resume and path.exists():
            saved = json.loads(path.read_text())
            if saved["spec"] == self.spec:
                print(f"{name}: reusing {path}", flush=True)
                return saved["result"]
        result = measure_phase(*args)
        self.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"spec": self.spec, "result": result}))
        return result


def start_key(spec: dict) -> dict:
    """What an engine start depends on (start_engine, start_worker): the key its saved phase is reused by."""
    return {key: spec[key] for key in ("target", "bundle", "vocab", "dtype", "kv_cache_bytes", "huge_pages")} | {
        "max_batch": max(spec["batch_sizes"])
    }


def measure_start(system: str, spec: dict, work: Path) -> dict:
    """In fresh processes: a cold start (empty compile cache), then a warm one (the cache it left), which also
    measures the peak memory of the largest batch's prefill."""
    import shutil

    cache = work / "vllm-cache" / system
    shutil.rmtree(cache, ignore_errors=True)
    cold = measure(f"start:{system}", spec, cache)
    warm = measure(f"start:{system}", spec | {"measure_memory": True}, cache)
    return warm | {"start_cold_seconds": cold["start_seconds"]}


def measure_start_rounds(systems: list[str], spec: dict, work: Path, cold: bool, rounds: int) -> dict[str, list[float]]:
    """More starts (each in a fresh process), the systems taking turns for `rounds` rounds: single starts vary widely
    between processes (bench/results/README.md), so one start per system says little. Warm: with the compile cache
    measure_start left; cold: each start empties it first (and leaves a fresh one behind)."""
    import shutil

    samples: dict[str, list[float]] = {system: [] for system in systems}
    kind = "cold" if cold else "warm"
    for _ in tqdm(range(rounds), desc=f"{kind} starts, interleaved", unit="round"):
        for system in systems:
            cache = work / "vllm-cache" / system
            if cold:
                shutil.rmtree(cache, ignore_errors=True)
            samples[system].append(measure(f"start:{system}", spec, cache)["start_seconds"])
    return samples


def engine_spec(work_root: Path, shape_name: str, dtype: str | None, batch_sizes: list[int]) -> tuple[Path, dict]:
    """The bench model of a shape (built once under work_root) and what every engine start reads: (work folder,
    spec). dtype None: $ULD_DTYPE, else by CPU flags."""
    from uld_vllm.engine import resolve_dtype

    dtype = resolve_dtype(dtype)
    shape = SHAPES[shape_name]
    work = work_root / f"{shape_name}-h{shape['hidden']}-L{shape['layers']}-V{shape['vocab']}"
    return work, {
        "target": str(work / "target"),
        "bundle": str(build_model(work, shape)),
        "vocab": shape["vocab"],
        "dtype": "bfloat16" if dtype == "auto" else dtype,  # CUDA: the HF reference needs a concrete dtype too
        "batch_sizes": batch_sizes,
        "kv_cache_bytes": 3 << 29,  # 1.5 GiB: B=128 at up to 384 tokens needs 1 GiB (ULD's 10 layers)
        "huge_pages": os.environ["THP_MEM_ALLOC_ENABLE"] == "1",
    }


def rotated(items: list, round: int) -> list:
    """`items` starting at round's turn: interleaved measurements where no item always follows the same neighbour."""
    return items[round % len(items) :] + items[: round % len(items)]


def main(argv: list[str] | None = None) -> int:
    from uld_vllm.engine import DTYPES
    from uld_vllm.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=[s for s in SHAPES if s != "quick"], default="bench")
    parser.add_argument("--batch-sizes", default="1,8,32,64,128")
    parser.add_argument("--reference-batch-sizes", default="1,8,64", help="the HF reference is slow: a subset")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--scoring-texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="best of N per measurement")
    for kind in ("warm", "cold"):
        parser.add_argument(
            f"--{kind}-start-rounds",
            type=int,
            default=None,
            help=f"interleaved {kind} start rounds after each system's first one (default: --repeats; 0: none)",
        )
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: $ULD_DTYPE, else by CPU flags")
    parser.add_argument("--work", default="out/bench-models")
    parser.add_argument("--quick", action="store_true", help="tiny shape and sizes: checks the script, not speed")
    parser.add_argument("--tag", help="results as throughput[-shape]-TAG.*: a partial run beside the full one")
    parser.add_argument("--resume", action="store_true", help="reuse the phases an earlier run of this spec finished")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, json.loads(args.spec))))
        return 0
    shape_name = "quick" if args.quick else args.shape
    work, spec = engine_spec(
        Path(args.work), shape_name, args.dtype, [1, 4] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    )
    spec |= {
        "reference_batch_sizes": [1] if args.quick else [int(b) for b in args.reference_batch_sizes.split(",")],
        "scoring_texts": 8 if args.quick else args.scoring_texts,
        "repeats": 1 if args.quick else args.repeats,
    }
    shape, dtype, bundle = SHAPES[shape_name], spec["dtype"], spec["bundle"]
    systems = args.systems.split(",")
    engine_systems = [s for s in systems if s != "hf-reference"]
    # "clocks": what the engines worker records beside each round (a new digest: runs from before keep their phases).
    spec["head_off_on"] = {s: host for s, host in HEAD_OFF_ON.items() if {s, host} <= set(engine_systems)}
    engines_spec = spec | {"engine_systems": engine_systems, "clocks": "steps"}
    phases = Phases(work, engines_spec, args.resume)
    starts = Phases(work, start_key(spec), args.resume)  # a start does not depend on the systems measured beside it
    results = {}
    for system in tqdm(engine_systems, desc="engine starts", unit="system"):
        results[system] = starts.run(f"start-{system}", measure_start, system, spec, work)
    start_rounds = {}
    for kind, key in (("warm", "start_seconds"), ("cold", "start_cold_seconds")):
        count = getattr(args, f"{kind}_start_rounds")
        start_rounds[kind] = count = spec["repeats"] if count is None else count
        phase = f"{kind}-starts-{'+'.join(engine_systems)}-x{count}"
        rounds = starts.run(phase, measure_start_rounds, engine_systems, spec, work, kind == "cold", count)
        for system in engine_systems:  # best of measure_start's and the interleaved rounds'
            results[system][f"{kind}_start_samples"] = [results[system][key], *rounds[system]]
            results[system][key] = min(results[system][f"{kind}_start_samples"])
    print("throughput: every vLLM system in one process, interleaved ...", flush=True)
    throughput = phases.run("engines", measure, "engines", engines_spec, work / "vllm-cache" / "engines")
    for system in engine_systems:
        results[system] |= throughput[system]
    if "hf-reference" in systems:
        print("throughput: the HF reference ...", flush=True)
        results["hf-reference"] = phases.run("hf-reference", measure, "hf-reference", spec)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(bundle)
    head = json.loads((work / "head.json").read_text())
    costs = model_costs(config, LORA_RANK, results.get("uld-f0.01", {}).get("head"))
    requests = spec_requests(spec)
    report = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in ["bench/throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(dtype),
        "shape": shape | {"assistant_layers": assistant_depth(shape["layers"]), "lora_rank": LORA_RANK},
        "head_realism": head,
        "costs": costs,
        "start_rounds": start_rounds,
        "decode_limits": {str(b): decode_limits(costs, requests[:b]) for b in spec["batch_sizes"]},
        "spec": spec,
        "results": results,
    }
    report["goals"] = goals(report)
    name = "throughput-quick" if args.quick else ("throughput" if shape_name == "bench" else f"throughput-{shape_name}")
    name += f"-{args.tag}" if args.tag else ""
    write_report(report, name)
    return 0


def measured(results: dict, system: str, size: int, workload: str = "decode") -> dict:
    """One system's measurement: the decode workload at batch `size`, or scoring (KeyError where it was not run)."""
    return results[system]["scoring"] if workload == "scoring" else results[system]["decode"][str(size)]


def ratio(results: dict, system: str, base: str, size: int, workload: str = "decode") -> float | None:
    try:
        return measured(results, system, size, workload)["tok_s"] / measured(results, base, size, workload)["tok_s"]
    except KeyError:
        return None


def step_ratio(
    results: dict, system: str, base: str, size: int, workload: str = "decode", part: str = "model_s"
) -> float | None:
    """system / base speed from their rounds rebuilt step by step (`best_steps`): `part` is model_s (every step),
    decode_s (the decode-only steps) or logits_s (compute_logits alone). None where the two did not run the same
    schedule, or for runs from before step clocks."""
    try:
        mine, theirs = (measured(results, s, size, workload)["steps"] for s in (system, base))
    except KeyError:
        return None
    return steps_speedup(mine, theirs, part)


def free_head_ceiling(results: dict, size: int, workload: str = "decode") -> float | None:
    """sparse / dense if the dense system's compute_logits cost only what plain's does (the target's head alone: the
    assistant's head, ULD's mask and combination free). A measured bound on any assistant head: the sparse path still
    computes the target's logits in full (the keep set needs every one)."""
    try:
        dense, plain = (measured(results, system, size, workload) for system in ("uld-f0.01-dense", "plain"))
        dense_s, plain_s = 1.0 / dense["tok_s"], 1.0 / plain["tok_s"]  # seconds per token: both did the same tokens
        return dense_s / (dense_s - dense["logits_share"] * dense_s + plain["logits_share"] * plain_s)
    except KeyError:
        return None


def goals(report: dict) -> list[dict]:
    """The issue's goals, each with its measured value and whether it is met."""
    r, c = report["results"], report["costs"]
    sizes = report["spec"]["batch_sizes"]
    big = 64 if 64 in sizes else sizes[-1]
    out = []

    def goal(name: str, value: float | None, target: float, unit: str = "x") -> None:
        out.append(
            {"goal": name, "value": value, "target": target, "met": value is not None and value >= target, "unit": unit}
        )

    goal("batch 1 decode, filter 0: ULD / plain", ratio(r, "uld-f0", "plain", 1), 0.90)
    sparse, limits = ratio(r, "uld-f0.01", "plain", big), report["decode_limits"][str(big)]
    goal(
        f"batch {big} decode, filter 0.01: ULD / plain, as a share of its FLOP limit ({limits['flop_limit_sparse']:.3f})",
        sparse / limits["flop_limit_sparse"] if sparse else None,
        0.95,
        "of limit",
    )

    def bounds(flop_limit: float, ceiling: float | None) -> str:
        free = "" if ceiling is None else f"; measured, a free assistant head: {ceiling:.3f}"
        return f" (FLOP limit {flop_limit:.3f}{free})"

    goal(
        f"batch {big} decode, filter 0.01: sparse head / dense head"
        + bounds(limits["sparse_over_dense"], free_head_ceiling(r, big)),
        ratio(r, "uld-f0.01", "uld-f0.01-dense", big),
        1.05,
    )
    goal(
        "scoring, filter 0.01: sparse head / dense head"
        + bounds(c["flop_limit_sparse"] / c["flop_limit_dense"], free_head_ceiling(r, big, "scoring")),
        ratio(r, "uld-f0.01", "uld-f0.01-dense", big, "scoring"),
        1.05,
    )
    # The same goals on model time rebuilt step by step (best_steps): identical engines land closer this way than in
    # whole rounds (bench/results/README.md).
    by_step = f"model time step by step ({STEP_NOTE})"
    has_steps = any("steps" in res.get("scoring", {}) for res in r.values())  # runs from before step clocks: none
    if has_steps:
        goal(f"batch 1 decode, filter 0: ULD / plain, {by_step}", step_ratio(r, "uld-f0", "plain", 1), 0.90)
        sparse_steps = step_ratio(r, "uld-f0.01", "plain", big)
        goal(
            f"batch {big} decode, filter 0.01: ULD / plain as a share of its FLOP limit, {by_step}",
            sparse_steps / limits["flop_limit_sparse"] if sparse_steps else None,
            0.95,
            "of limit",
        )
        for workload in ("decode", "scoring"):
            what = f"batch {big} decode" if workload == "decode" else "scoring"
            goal(
                f"{what}, filter 0.01: sparse head / dense head, {by_step}",
                step_ratio(r, "uld-f0.01", "uld-f0.01-dense", big, workload),
                1.05,
            )
    chosen = {s: x for s in sizes if (x := ratio(r, "uld-f0.01", "uld-f0.01-dense", s)) is not None}
    goal("cost-based head choice vs dense, worst batch size", min(chosen.values(), default=None), 1.0)
    # Below the rule's row minimum both systems run the same code: there the ratio is the measurement's spread.
    from uld_vllm.head import DEFAULT_RULES

    min_rows = DEFAULT_RULES["cuda" if "gpu" in report["machine"] else "cpu"].min_rows
    looked_at = [x for s, x in chosen.items() if s >= min_rows]
    goal(
        "the same, batch sizes the rule looks at (below them both run the same code)",
        min(looked_at, default=None),
        1.0,
    )
    inside = [x for s in sizes if s >= min_rows and (x := split_speedup(r, s, inside=True)) is not None]
    if inside:
        goal("the same, compute_logits alone (where the choice acts; the rest runs the same code)", min(inside), 1.0)
    stepped = [x for s in sizes if s >= min_rows and (x := step_ratio(r, "uld-f0.01", "uld-f0.01-dense", s))]
    if stepped:
        goal(f"the same, batch sizes the rule looks at, {by_step}", min(stepped), 1.0)
    for size in (1, big):
        plain = ratio(r, "plain", "hf-reference", size)  # ULD's ceiling: it runs plain vLLM's work and more
        ceiling = "" if plain is None else f" (plain vLLM / HF reference: {plain:.2f})"
        goal(
            f"batch {size} decode: ULD (filter 0.01) / HF reference{ceiling}",
            ratio(r, "uld-f0.01", "hf-reference", size),
            2.0,
        )
    if "uld-f0" in r and "plain" in r:
        overhead = r["uld-f0"]["weight_bytes"] / r["plain"]["weight_bytes"] - 1
        out.append(
            {
                "goal": "weight-memory overhead of ULD (shared weights)",
                "value": overhead,
                "target": 0.02,
                "met": overhead < 0.02,
                "unit": "fraction",
            }
        )
        for cache, kind, key in (
            ("warm compile cache", "warm", "start_seconds"),
            ("cold: compiles", "cold", "start_cold_seconds"),
        ):
            if key in r["uld-f0"] and key in r["plain"]:
                start = r["uld-f0"][key] / r["plain"][key]
                samples = [r[s].get(f"{kind}_start_samples", []) for s in ("uld-f0", "plain")]
                medians = f" (best of {len(samples[0])}; medians {median(samples[0]) / median(samples[1]):.3f})"
                out.append(
                    {
                        "goal": f"engine start ({cache}), ULD / plain" + (medians if all(samples) else ""),
                        "value": start,
                        "target": 1.15,
                        "met": start <= 1.15,
                        "unit": "x at most",
                    }
                )
    return out


def batch_table_head(first: str, sizes: list[int], *after: str) -> list[str]:
    """A markdown table's header and rule: `first`, one column per batch size, then the columns `after`."""
    columns = [first, *(f"B={b}" for b in sizes), *after]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def per_batch_table(results: dict, sizes: list[int], key: str, fmt: str) -> list[str]:
    """Markdown rows: one per system, one column per batch size, the decode measurement `key`."""
    lines = batch_table_head("system", sizes)
    for system, res in results.items():
        cells = [format(res["decode"][str(b)][key], fmt) if str(b) in res["decode"] else "-" for b in sizes]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return lines


def write_report(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    r, c, m, s = report["results"], report["costs"], report["machine"], report["shape"]
    sizes = report["spec"]["batch_sizes"]
    lines = [
        f"# ULD throughput: hidden {s['hidden']}, {s['layers']} layers, K = {s['assistant_layers']}, vocab {s['vocab']}, {m['dtype']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or '(none of the speed flags)'}; dtype {m['dtype']}; "
        f"huge pages: {m.get('huge_pages', 'not recorded')}. "
        "Throughput: every vLLM system in one process, each measurement interleaved across systems (the order rotating "
        "each round), best of "
        f"{report['spec']['repeats']} rounds (ratios between processes vary by +-10-30% here; side by side they do not). "
        "Engine starts and peak memory: each system in its own processes; cold starts best of "
        f"{report['start_rounds']['cold'] + 1} and warm ones of {report['start_rounds']['warm'] + 1}, the systems taking "
        "turns (every sample in the JSON). The HF reference: its own process."
        + "".join(
            f" {system}'s throughput: {host}'s engine with its assistant head switched off for its turns (the same "
            "weights and memory; identical code still drifts 4-7% over minutes here, so its best rounds can land that "
            "far apart: bench/head_choice.py pairs adjacent runs instead)."
            for system, host in report["spec"].get("head_off_on", {}).items()
        ),
        "",
        "## Decode: output tokens/s (prompts 16-256 tokens, 16-128 new tokens each, EOS ignored, greedy)",
        "",
        *per_batch_table(r, sizes, "tok_s", ".1f"),
    ]
    lines += [
        "",
        *batch_table_head("ratio", sizes, "limit per token (one decode step)"),
    ]
    for system, base, limit in (
        ("uld-f0", "plain", f"bytes {c['byte_limit_shared']:.3f} / FLOPs {c['flop_limit_dense']:.3f}"),
        ("uld-f0.01", "plain", f"bytes {c['byte_limit_shared']:.3f} / FLOPs {c['flop_limit_sparse']:.3f}"),
        ("uld-f0.01-dense", "plain", f"bytes {c['byte_limit_shared']:.3f} / FLOPs {c['flop_limit_dense']:.3f}"),
        ("uld-merged-f0", "plain", f"bytes {c['byte_limit_merged']:.3f} / FLOPs {c['flop_limit_dense']:.3f}"),
        (
            "uld-f0.01",
            "uld-f0.01-dense",
            f"FLOPs {c['flop_limit_sparse'] / c['flop_limit_dense']:.3f} (sparse / dense head)",
        ),
        ("uld-f0.01", "hf-reference", "ULD / paper's decoder"),
    ):
        cells = [f"{v:.2f}" if (v := ratio(r, system, base, b)) else "-" for b in sizes]
        lines.append(f"| {system} / {base} | " + " | ".join(cells) + f" | {limit} |")
    limits = report["decode_limits"]
    for key, label in (
        ("flop_limit_dense", "FLOP limit, ULD dense head / plain"),
        ("flop_limit_sparse", "FLOP limit, ULD sparse head / plain"),
        ("sparse_over_dense", "FLOP limit, sparse / dense head"),
    ):
        cells = [f"{limits[str(b)][key]:.3f}" for b in sizes]
        lines.append(f"| {label}, this batch's work | " + " | ".join(cells) + " | |")
    lines += [
        "",
        "FLOP limits for a batch's work count every prompt token through the layers and the heads once per output "
        "token (vLLM computes logits only where it samples); the per-token limits hold for one decode step and for "
        "scoring, where every token gets logits.",
        *logits_share_lines(r, sizes),
        *step_lines(r, c, limits, sizes),
    ]
    lines += [
        "",
        "## Time to first token (s; the same B prompts, max_tokens 1)",
        "",
        *per_batch_table(r, sizes, "ttft_s", ".3f"),
    ]
    lines += [
        "",
        "## Scoring, engine start, memory",
        "",
        "| system | scored tok/s | start s, cold / warm cache | weight MB | KV blocks | peak RSS GiB | mean kept/row | "
        "mean union |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, res in r.items():
        head = res.get("head") or {}
        kept = f"{head['mean_kept_per_row']:.0f}" if head.get("calls") else "-"
        union = f"{head['mean_union']:.0f}" if head.get("calls") else "-"
        cold = res.get("start_cold_seconds")
        starts = f"{res['start_seconds']:.1f}" if cold is None else f"{cold:.1f} / {res['start_seconds']:.1f}"
        lines.append(
            f"| {system} | {res['scoring']['tok_s']:.1f} | {starts} | {res['weight_bytes'] / 1e6:.1f} | "
            f"{res.get('kv_blocks', '-')} | {res['peak_rss_gib']:.2f} | {kept} | {union} |"
        )
    h = report["head_realism"]
    lines += [
        "",
        "The engine's own head statistics (mean kept/row, mean union) count the logits calls the sparse head's rule"
        " looks at (on CPU 8 rows or more, on CUDA 256; decode and scoring); the realism table below is the bench head on random contexts"
        " it was not fitted on.",
        *head_clock_lines(r.get("uld-f0.01", {}).get("head") or {}),
        "",
        "## The bench head's keep sets (filter 0.01, 256 random contexts, unions over 64 rows)",
        "",
        "| head | entropy (nats) | kept per row | union of 64 rows |",
        "|---|---|---|---|",
        f"| realistic (Zipf prior shared by every context + random part) | {h['realistic']['entropy_nats']:.2f} | {h['realistic']['mean_kept_per_row']:.0f} | {h['realistic']['union']:.0f} |",
        f"| context parts only (unrelated rows), same entropy | {h['random_same_entropy']['entropy_nats']:.2f} | {h['random_same_entropy']['mean_kept_per_row']:.0f} | {h['random_same_entropy']['union']:.0f} |",
        "",
        "## Goals",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for g in report["goals"]:
        value = "-" if g["value"] is None else (f"{g['value']:.1%}" if g["unit"] == "fraction" else f"{g['value']:.3f}")
        target = f"{g['target']:.0%}" if g["unit"] == "fraction" else f"{g['target']:.2f}"
        bound = {"fraction": "<", "x at most": "<="}.get(g["unit"], ">=")
        lines.append(f"| {g['goal']} | {value} | {bound} {target} | {'yes' if g['met'] else 'no'} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(report, RESULTS / f"{name}.png")
    print("\n".join(lines))


def logits_share_lines(results: dict, sizes: list[int]) -> list[str]:
    """compute_logits' share of each round (absent in runs from before its clock): what the heads can save at most."""
    shared = [s for s, res in results.items() if "logits_share" in res.get("scoring", {})]
    if not shared:
        return []
    lines = [
        "",
        "## Where the time goes: compute_logits' share of each round",
        "",
        "The LM heads, ULD's mask and combination (not the sampler), timed around the model's compute_logits in the "
        "same rounds as the throughput above. Any assistant head saves only inside it, and the sparse path still "
        "computes the target's logits in full. 'A free assistant head': sparse / dense if the dense system's "
        "compute_logits cost only plain's; the last two rows split sparse / dense into compute_logits and the rest.",
        "",
        *batch_table_head("system", sizes, "scoring"),
    ]
    for system in shared:
        decode = results[system]["decode"]
        cells = [f"{decode[str(b)]['logits_share']:.1%}" if str(b) in decode else "-" for b in sizes]
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {results[system]['scoring']['logits_share']:.1%} |")
    ceilings = [free_head_ceiling(results, b) for b in sizes] + [free_head_ceiling(results, 0, "scoring")]
    if any(ceilings):
        cells = [f"{x:.3f}" if x else "-" for x in ceilings]
        lines.append("| sparse / dense, a free assistant head | " + " | ".join(cells) + " |")
    for inside, label in ((True, "compute_logits alone"), (False, "the rest of the round (the same code in both)")):
        splits = [split_speedup(results, b, inside) for b in sizes] + [split_speedup(results, 0, inside, "scoring")]
        if any(splits):
            cells = [f"{x:.3f}" if x else "-" for x in splits]
            lines.append(f"| sparse / dense, {label} | " + " | ".join(cells) + " |")
    return lines


def step_lines(results: dict, costs: dict, limits: dict, sizes: list[int]) -> list[str]:
    """The ratios again on model time rebuilt step by step (absent in runs from before step clocks)."""
    dense, sparse = costs["flop_limit_dense"], costs["flop_limit_sparse"]
    rows = [
        ("uld-f0", "plain", dense),
        ("uld-f0.01", "plain", sparse),
        ("uld-f0.01-dense", "plain", dense),
        ("uld-f0.01", "uld-f0.01-dense", sparse / dense),
    ]
    if not any(step_ratio(results, system, base, b) for system, base, _ in rows for b in sizes):
        return []
    lines = [
        "",
        f"## The same ratios, {STEP_NOTE}",
        "",
        "Model time: the model's forward and compute_logits, clocked per engine step (not vLLM's scheduler and "
        "sampler, the same code in every system, which whole rounds include). Every system runs the same schedule on "
        "the same requests (checked: '-' where it did not), so each step's fastest round can be kept and the round "
        "rebuilt from them: whole rounds keep every spike that hit them. bench/spread.py measured how far identical "
        "engines land apart this way: up to 4% (whole rounds: up to 8-10%). Limits: the FLOP limit of each batch's "
        "work for every step; per token (one decode step) for decode-only steps (every row decoding) and scoring.",
        "",
        *batch_table_head("ratio", sizes, "scoring", "FLOP limit per token"),
    ]
    for part, label in (("model_s", "every step"), ("decode_s", "decode-only steps"), ("logits_s", "compute_logits")):
        for system, base, per_token in rows:
            if part == "logits_s" and base == "plain":
                continue  # plain's compute_logits has no assistant head: only sparse / dense compares there
            cells = [f"{x:.3f}" if (x := step_ratio(results, system, base, b, part=part)) else "-" for b in sizes]
            scoring = step_ratio(results, system, base, 0, "scoring", part) if part != "decode_s" else None
            cells.append(f"{scoring:.3f}" if scoring else "-")
            lines.append(f"| {system} / {base}, {label} | " + " | ".join(cells) + f" | {per_token:.3f} |")
        if part == "model_s":
            for key, name in (
                ("flop_limit_sparse", "ULD sparse head / plain"),
                ("sparse_over_dense", "sparse / dense"),
            ):
                cells = [f"{limits[str(b)][key]:.3f}" for b in sizes]
                lines.append(f"| FLOP limit, {name}, this batch's work | " + " | ".join(cells) + " | | |")
    return lines


def split_speedup(results: dict, size: int, inside: bool, workload: str = "decode") -> float | None:
    """sparse / dense speed of one part of the round: compute_logits (where the head choice acts) or the rest (the
    same code in both systems, so its ratio is the measurement's spread)."""
    try:
        parts = []
        for system in ("uld-f0.01-dense", "uld-f0.01"):
            res = measured(results, system, size, workload)
            share = res["logits_share"] if inside else 1.0 - res["logits_share"]
            parts.append(share / res["tok_s"])  # seconds per token in that part
        return parts[0] / parts[1]
    except KeyError:
        return None


def head_clock_lines(head: dict) -> list[str]:
    """The timed rule's own clocks in uld-f0.01: the logits path of each head, per call size, in one process."""
    clocks = {rows: c for rows, c in head.get("logits_ms_by_rows", {}).items() if c["stacked"] and c["union"]}
    if not clocks:
        return []
    lines = [
        "",
        "The timed rule's clocks in uld-f0.01 (ms per compute_logits call, moving averages over the whole run): the"
        " head's own saving, without the noise of comparing whole rounds.",
        "",
        "| logits rows | calls | stacked dense head | union head | stacked / union |",
        "|---|---|---|---|---|",
    ]
    for rows, c in clocks.items():
        lines.append(
            f"| {rows} | {c['calls']} | {c['stacked']:.1f} | {c['union']:.1f} | {c['stacked'] / c['union']:.2f} |"
        )
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r, c = report["results"], report["costs"]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {system: palette[i % len(palette)] for i, system in enumerate(SYSTEMS)}  # the same in both panels
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system, res in r.items():
        sizes = sorted(int(b) for b in res["decode"])
        tok_s = [res["decode"][str(b)]["tok_s"] for b in sizes]
        left.plot(sizes, tok_s, "o-", color=color[system], label=system)
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="output tokens/s", title="decode throughput")
    left.legend(fontsize=8)
    sizes = report["spec"]["batch_sizes"]
    any_stepped = False
    for system in ("uld-f0", "uld-f0.01", "uld-f0.01-dense", "uld-merged-f0"):
        values = [ratio(r, system, "plain", b) for b in sizes]
        if any(values):
            right.plot(sizes, [v or float("nan") for v in values], "o-", color=color[system], label=f"{system} / plain")
        stepped = [step_ratio(r, system, "plain", b) for b in sizes]
        if any(stepped):
            right.plot(sizes, [v or float("nan") for v in stepped], "x--", color=color[system], alpha=0.6)
            any_stepped = True
    right.axhline(c["byte_limit_shared"], color="k", linestyle="--", label="weight-bound limit (shared)")
    limits = report["decode_limits"]
    for key, color, label in (("flop_limit_dense", "k", "dense head"), ("flop_limit_sparse", "g", "sparse head")):
        right.plot(
            sizes, [limits[str(b)][key] for b in sizes], color=color, linestyle=":", label=f"FLOP limit ({label})"
        )
    if any_stepped:
        right.plot([], [], "x--", color="gray", label="the same, step by step (model time)")
    right.set(xscale="log", ylim=(0, 1.1), xlabel="batch size", ylabel="ratio", title="ULD / plain vLLM vs limits")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
