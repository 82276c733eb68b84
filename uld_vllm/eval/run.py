"""Running a TOFU evaluation: teacher-forced answer losses and greedy generations, through vLLM or the HF oracle.

One code path for every row of the paper's table: a ULD bundle runs through the ULD engine (losses from its prompt
log-probs, i.e. ULD's scoring mode), a plain HF checkpoint (target, retain model, baseline) through plain vLLM, in
large batches that vLLM schedules itself. The `reference` backend runs the same evaluation through the HF reference
decoder (two HF models, batched, what the paper's code does): the oracle the engine is tested against, and the
baseline of the evaluation-throughput ratio.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from uld_vllm.answer_scoring import ScoredAnswer
from uld_vllm.eval.data import SPLIT_FILES, EvalExample, read_eval_data
from uld_vllm.eval.metrics import (
    FACTS_KEY,
    FLUENCY_KEY,
    FORGET_LOG,
    REAL_AUTHORS_LOG,
    REAL_WORLD_LOG,
    REPETITION_KEY,
    RETAIN_LOG,
    EvalError,
    example_log_entries,
    facts_stated,
    memorization_entries,
    repetitive,
    rouge_l_recall,
)
from uld_vllm.qa import answer_ids, prompt_ids
from uld_vllm.ray_replicas import ray_connection, replica_memory
from uld_vllm.staging import write_text_atomic

if TYPE_CHECKING:
    from uld_vllm.engine import CheckedModel

# Data split -> TOFU eval-log file (TOFU's names: the retain split's log is plain eval_log.json).
LOG_FILE = {"forget": FORGET_LOG, "retain": RETAIN_LOG, "real_authors": REAL_AUTHORS_LOG, "world_facts": REAL_WORLD_LOG}
BackendName = Literal["vllm", "reference"]  # which `Backend` runs the evaluation


@dataclass(frozen=True)
class EvalSettings:
    """What `uld-eval run` evaluates and how; everything that changes a number is here."""

    model: str  # ULD bundle or plain HF checkpoint directory
    data: str  # directory with forget/retain/real_authors/world_facts.jsonl, or tofu:forget01|forget05|forget10
    output: str | None = None  # directory for the four TOFU eval logs (None: return them only)
    backend: BackendName = "vllm"
    dtype: str | None = None  # None: uld_vllm.engine.default_dtype() ($ULD_DTYPE, else by CPU flags)
    weight: float | None = None  # ULD overrides (bundles only)
    filter: float | None = None
    splits: tuple[str, ...] = tuple(SPLIT_FILES)  # which of the four splits to evaluate (Model Utility needs all)
    max_new_tokens: int = 64  # greedy generation length for ROUGE (stops at EOS)
    reference_batch_size: int = 32  # sequences per forward pass of the HF reference
    engine_args: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM arguments
    ray: bool = False
    num_replicas: int = 1
    progress: bool = True
    # A plain HF checkpoint that judges each greedy answer's fluency (metrics.FLUENCY_KEY): the pretrained model before
    # fine-tuning on real TOFU, the retain model on mini-TOFU. None: no fluency measure.
    judge: str | None = None


@dataclass
class EvalTimings:
    """Where an evaluation's time went: the basis of the engine-vs-reference throughput ratio."""

    load_seconds: float = 0.0  # engine start or HF load
    score_seconds: float = 0.0
    generate_seconds: float = 0.0
    judge_seconds: float = 0.0  # the fluency judge: its engine start and its scoring of the greedy answers
    scored_tokens: int = 0  # answer tokens scored (teacher-forced)
    generated_tokens: int = 0

    def add(self, other: EvalTimings) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class EvalResult:
    logs: dict[str, dict[str, dict[str, Any]]]  # TOFU layout: log file -> metric -> example index (str) -> value
    timings: EvalTimings


class Backend(Protocol):
    """What an evaluation needs from a model: answer-token log-probs and greedy continuations."""

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[ScoredAnswer]:
        """log p(answer token | prompt, earlier answer tokens), and whether it is the greedy choice, for each
        (prompt ids, answer ids) pair."""

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy token ids after each prompt (EOS included when reached)."""

    def swap(self, model: CheckedModel) -> None:
        """Evaluate `model` from now on: another checkpoint of the same model (a training run's next snapshot)."""

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------------ backends


class VllmBackend:
    """ULD engine for a bundle, plain vLLM for an HF checkpoint."""

    def __init__(
        self, settings: EvalSettings, model: CheckedModel, max_model_len: int, engine_args: dict[str, Any]
    ) -> None:
        from uld_vllm.engine import has_cuda, make_llm

        # Eager: compiling saves about a quarter of the scoring time but costs 80 s per new model on 2 cores (vLLM keys
        # its graph cache by model path, so every checkpoint of a sweep compiles anew); bench/results/README.md.
        kwargs = {"max_model_len": max_model_len, "enforce_eager": True, "seed": 0, "dtype": settings.dtype}
        # A question's prompt is cached in whole blocks only: vLLM's CPU default (128 tokens) is longer than a TOFU
        # prompt; 32 is the smallest the CPU attention takes.
        kwargs |= {"enable_prefix_caching": True} | ({} if has_cuda() else {"block_size": 32})
        if model.bundle is not None and not has_cuda():
            # The merged assistant copy: on CPU an evaluation is compute-bound, where the shared weights' LoRA passes
            # cost more than the copy's memory (K of the target's layers) saves (bench/results/README.md).
            kwargs["hf_overrides"] = {"uld_share_weights": False}
        self.llm = make_llm(model, **(kwargs | engine_args))  # checked by evaluate() (a Ray shard's driver)
        self.progress = settings.progress

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[ScoredAnswer]:
        from uld_vllm.answer_scoring import score_answers

        return score_answers(self.llm, pairs, self.progress)

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=self.progress)
        return [list(o.outputs[0].token_ids) for o in outputs]

    def swap(self, model: CheckedModel) -> None:
        """The new weights go into this engine through vLLM's in-place reload (no new engine start); the prefix
        cache, computed with the old weights, is dropped. The caller has checked `check_swappable` (before the
        engine started); a bundle's target is checked again by the served model itself (`ULDForCausalLM.serve`)."""
        if model.bundle is not None:
            bundle = model.bundle
            self.llm.apply_model(lambda served: served.serve(bundle))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model.path)})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        from uld_vllm.engine import shutdown_llm

        shutdown_llm(self.llm)


class ReferenceBackend:
    """The HF reference decoder (plain transformers, two KV caches): a bundle's ULD, or one HF model alone."""

    def __init__(self, settings: EvalSettings, model: CheckedModel, eos_token_id: int | None) -> None:
        import torch

        self.dtype = getattr(torch, "float32" if settings.dtype == "auto" else settings.dtype)
        self.swap(model)
        self.batch_size = settings.reference_batch_size
        self.eos_token_id = eos_token_id
        self.progress = settings.progress

    def _chunks(self, items: list, desc: str) -> Iterator[list]:
        from tqdm import tqdm

        for start in tqdm(range(0, len(items), self.batch_size), desc=desc, disable=not self.progress):
            yield items[start : start + self.batch_size]

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[ScoredAnswer]:
        scores = []
        for chunk in self._chunks(pairs, "reference scoring"):
            scores.extend(ScoredAnswer(lp.tolist(), g.tolist()) for lp, g in self.decoder.score_batch(chunk))
        return scores

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        out = []
        for chunk in self._chunks(prompts, "reference generation"):
            out.extend(self.decoder.generate(chunk, max_tokens, eos_token_id=self.eos_token_id))
        return out

    def swap(self, model: CheckedModel) -> None:
        """Loads `model` (an HF load takes about a second: nothing to reuse)."""
        from uld_vllm.reference import ReferenceDecoder

        if model.bundle is not None:
            self.decoder = ReferenceDecoder.from_bundle(model.bundle, dtype=self.dtype)
        else:
            from transformers import AutoModelForCausalLM

            hf_model = AutoModelForCausalLM.from_pretrained(model.path, dtype=self.dtype)
            self.decoder = ReferenceDecoder.single(hf_model)

    def close(self) -> None:
        pass


SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "tie_word_embeddings")  # fmt: skip


def check_swappable(served: CheckedModel, model: CheckedModel) -> None:
    """Whether `model` can take `served`'s place in an open engine (`Backend.swap`): another assistant of the same
    target for a bundle (`Bundle.check_same_target`), the same shapes for a plain checkpoint."""
    if (model.bundle is None) != (served.bundle is None):
        raise EvalError(f"{model.path} and {served.path} are not both ULD bundles or both plain checkpoints")
    if model.bundle is not None and served.bundle is not None:
        served.bundle.check_same_target(model.bundle)
        return
    differ = [k for k in SHAPE_KEYS if model.config.get(k) != served.config.get(k)]
    if differ:
        raise EvalError(f"{model.path} differs from {served.path} in {', '.join(differ)}: not the same model's weights")


# ---------------------------------------------------------------------------------------------------- evaluating


@dataclass(frozen=True)
class EncodedExample:
    prompt: list[int]
    answers: list[list[int]]  # true, paraphrased, perturbed...: EvalExample.answers() order, EOS appended


def encode_examples(tokenizer, split: str, examples: list[EvalExample], vocab_size: int) -> list[EncodedExample]:
    """Token ids exactly as uld-train builds them (uld_vllm.qa); refuses text the model cannot represent."""
    unk = tokenizer.unk_token_id
    encoded = []
    for number, example in enumerate(examples):
        prompt = prompt_ids(tokenizer, example.question)
        answers = [answer_ids(tokenizer, answer) for answer in example.answers()]
        for ids in [prompt, *answers]:
            where = f"{SPLIT_FILES[split]} row {number}"
            if not ids or (unk is not None and unk in ids):
                raise EvalError(f"{where}: the model's tokenizer cannot encode the text (unknown tokens)")
            if max(ids) >= vocab_size:
                raise EvalError(
                    f"{where}: the tokenizer gives token id {max(ids)}, the model has {vocab_size} embedding rows "
                    "(tokenizer and model do not match)"
                )
        encoded.append(EncodedExample(prompt, answers))
    return encoded


def needed_context(encoded: dict[str, list[EncodedExample]], max_new_tokens: int) -> int:
    longest = 0
    for examples in encoded.values():
        for example in examples:
            longest = max(longest, len(example.prompt) + max(max(map(len, example.answers)), max_new_tokens))
    return longest


def evaluate_examples(
    backend: Backend,
    tokenizer,
    encoded: dict[str, list[tuple[int, EncodedExample]]],
    examples: dict[str, list[EvalExample]],
    max_new_tokens: int,
) -> tuple[dict[str, dict[int, dict[str, Any]]], EvalTimings]:
    """Per-example TOFU entries for (index, example) pairs of each split: all scoring in one batch, then generation."""
    timings = EvalTimings()
    items = [(split, index, ex) for split, pairs in encoded.items() for index, ex in pairs]
    pairs = [(ex.prompt, answer) for _, _, ex in items for answer in ex.answers]
    started = time.perf_counter()
    scores = iter(backend.score(pairs))
    timings.score_seconds = time.perf_counter() - started
    timings.scored_tokens = sum(len(answer) for _, answer in pairs)
    started = time.perf_counter()
    generations = backend.generate([ex.prompt for _, _, ex in items], max_new_tokens)
    timings.generate_seconds = time.perf_counter() - started
    timings.generated_tokens = sum(map(len, generations))

    records: dict[str, dict[int, dict[str, Any]]] = {split: {} for split in encoded}
    for (split, index, ex), generated in zip(items, generations, strict=True):
        gt, paraphrased, *perturbed = (next(scores) for _ in ex.answers)
        entry = example_log_entries(gt.logprobs, paraphrased.logprobs, [p.logprobs for p in perturbed])
        entry |= memorization_entries(gt.greedy)
        source = examples[split][index]
        text = tokenizer.decode(generated, skip_special_tokens=True).strip()
        # TOFU's order: [input, generation, ground truth].
        entry["generated_text"] = [tokenizer.decode(ex.prompt, skip_special_tokens=True), text, source.answer]
        entry["rougeL_recall"] = rouge_l_recall(text, source.answer)
        entry[REPETITION_KEY] = float(repetitive(text))
        if source.facts:
            entry[FACTS_KEY] = facts_stated(text, source.facts)
        records[split][index] = entry
    return records, timings


def tofu_layout(records: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{log file: {metric: {"0": value, "1": ...}}} in example order, as TOFU writes its eval logs."""
    logs: dict[str, dict[str, dict[str, Any]]] = {}
    for split, by_index in records.items():
        metrics: dict[str, dict[str, Any]] = {}
        for index in sorted(by_index):
            for metric, value in by_index[index].items():
                metrics.setdefault(metric, {})[str(index)] = value
        logs[LOG_FILE[split]] = metrics
    return logs


@contextmanager
def _timed(timings: EvalTimings) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings.load_seconds += time.perf_counter() - started


def evaluate(settings: EvalSettings) -> EvalResult:
    """Check everything that can fail cheaply, then evaluate all four splits and (optionally) write the logs."""
    return evaluate_checkpoints(settings, [settings.model], [settings.output])[0]


def evaluate_checkpoints(
    settings: EvalSettings, models: Sequence[str], outputs: Sequence[str | None]
) -> list[EvalResult]:
    """`evaluate` for checkpoints of one model (a training run's snapshots) through one engine: the first starts it,
    each next one's weights are swapped in (`Backend.swap`); the judge scores all their answers in one pass.
    `settings.model` is ignored; model i's logs go to outputs[i]."""
    from transformers import AutoTokenizer

    from uld_vllm.engine import check_model, resolve_dtype

    settings = replace(settings, dtype=resolve_dtype(settings.dtype))  # run.json records the dtype that ran
    if settings.max_new_tokens < 1 or settings.num_replicas < 1 or settings.reference_batch_size < 1:
        raise EvalError("--max-new-tokens, --num-replicas and --reference-batch-size must be >= 1")
    if settings.ray and settings.backend != "vllm":
        raise EvalError("--ray runs vLLM engine replicas; the reference backend runs in one process")
    if len(models) != len(outputs) or not models:
        raise EvalError(f"{len(models)} models for {len(outputs)} outputs")
    written = [o for o in outputs if o is not None]
    if len({Path(o).resolve() for o in written}) != len(written):
        raise EvalError("two models would write their logs to the same output directory")
    if settings.ray and len(models) > 1:
        raise EvalError("--ray evaluates one model (its replicas split the questions, not the checkpoints)")
    checked = [check_model(model, settings.weight, settings.filter) for model in models]
    for model in checked[1:]:
        check_swappable(checked[0], model)
    judge = None if settings.judge is None else check_model(settings.judge)
    if judge is not None and judge.bundle is not None:
        raise EvalError(f"--judge {settings.judge} is a ULD bundle; the judge is a plain LM (e.g. the pretrained base)")
    if any(model.bundle is not None for model in checked):
        from uld_vllm.plugin import install_scoring_hooks, scoring_hooks_installed

        install_scoring_hooks()  # idempotent; vLLM installs it too, but only once an engine starts
        if settings.backend == "vllm" and not scoring_hooks_installed():
            raise EvalError(
                "this vLLM's prompt-logprob entry point could not be hooked (see the uld warning above): a ULD engine "
                "would score in generation mode; use the vLLM version uld pins or --backend reference"
            )
    examples = read_eval_data(settings.data, settings.splits)
    settings = replace(settings, model=str(models[0]))  # its tokenizer serves all: the checkpoints are one model's
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    config = checked[0].config
    encoded = {split: encode_examples(tokenizer, split, rows, config["vocab_size"]) for split, rows in examples.items()}
    needed = needed_context(encoded, settings.max_new_tokens)
    context = config.get("max_position_embeddings")
    if context is not None and needed > context:
        raise EvalError(
            f"the longest question + answer (or + --max-new-tokens {settings.max_new_tokens}) needs {needed} tokens, "
            f"over the model's context of {context}"
        )
    indexed = {split: list(enumerate(rows)) for split, rows in encoded.items()}
    runs: list[tuple[dict[str, dict[int, dict[str, Any]]], EvalTimings]] = []
    if settings.ray:
        runs.append(_evaluate_with_ray(settings, checked[0], indexed, examples, needed + 1))
    else:
        backend: Backend | None = None
        try:
            for model in checked:
                timings = EvalTimings()
                with _timed(timings):
                    if backend is None:
                        backend = _open_backend(settings, model, needed + 1, tokenizer.eos_token_id, {})
                    else:
                        backend.swap(model)
                records, work = evaluate_examples(backend, tokenizer, indexed, examples, settings.max_new_tokens)
                timings.add(work)
                runs.append((records, timings))
        finally:
            if backend is not None:
                backend.close()
    if judge is not None:
        judge_answers(settings, judge, examples, runs)
    results = []
    for model, output, (records, timings) in zip(models, outputs, runs, strict=True):
        result = EvalResult(tofu_layout(records), timings)
        if output:
            write_logs(result, Path(output), replace(settings, model=str(model), output=str(output)))
        results.append(result)
    return results


def judge_answers(
    settings: EvalSettings,
    judge: CheckedModel,
    examples: dict[str, list[EvalExample]],
    runs: list[tuple[dict[str, dict[int, dict[str, Any]]], EvalTimings]],
) -> None:
    """Adds FLUENCY_KEY to every record of every run: the judge's mean NLL per token of the greedy answer after its
    question, in the judge's prompt format; one scoring pass of the judge over all runs, after the evaluated model's
    engine is closed. Each run's judge_seconds is its share of that pass."""
    keys = [
        (run, split, index) for run, (records, _) in enumerate(runs) for split in records for index in records[split]
    ]
    questions = [examples[split][index].question for _, split, index in keys]
    answers = [runs[run][0][split][index]["generated_text"][1] for run, split, index in keys]
    started = time.perf_counter()
    for (run, split, index), value in zip(keys, judge_nll(settings, judge, questions, answers), strict=True):
        runs[run][0][split][index][FLUENCY_KEY] = value
    share = (time.perf_counter() - started) / len(runs)
    for _, timings in runs:
        timings.judge_seconds += share


def judge_nll(
    settings: EvalSettings, judge: CheckedModel, questions: list[str], answers: list[str]
) -> list[float | None]:
    """The judge's mean NLL per token of each answer after its question (its prompt format), through the backend
    and dtype of `settings`; None for an empty answer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(judge.path)
    pairs = [
        (prompt_ids(tokenizer, q), answer_ids(tokenizer, a) if a else [])
        for q, a in zip(questions, answers, strict=True)
    ]
    judged = [i for i, (_, ids) in enumerate(pairs) if ids]
    values: list[float | None] = [None] * len(pairs)
    if not judged:
        return values
    judged_pairs = [pairs[i] for i in judged]
    context = max(len(p) + len(a) for p, a in judged_pairs) + 1
    backend = _open_backend(replace(settings, weight=None, filter=None), judge, context, None, {})
    try:
        scores = backend.score(judged_pairs)
    finally:
        backend.close()
    for i, (logprobs, _) in zip(judged, scores, strict=True):
        values[i] = -sum(logprobs) / len(logprobs)
    return values


def _open_backend(
    settings: EvalSettings,
    model: CheckedModel,
    max_model_len: int,
    eos_token_id: int | None,
    engine_args: dict[str, Any],
) -> Backend:
    if settings.backend == "reference":
        return ReferenceBackend(settings, model, eos_token_id)
    return VllmBackend(settings, model, max_model_len, settings.engine_args | engine_args)


def write_logs(result: EvalResult, output: Path, settings: EvalSettings) -> None:
    """The four TOFU eval logs, plus run.json (settings and timings), each written atomically."""
    from dataclasses import asdict

    output.mkdir(parents=True, exist_ok=True)
    files = dict(result.logs)
    files["run.json"] = {"settings": asdict(settings), "timings": asdict(result.timings)}
    for name, content in files.items():
        write_text_atomic(output / name, json.dumps(content, indent=1))


# ------------------------------------------------------------------------------------------------------------ Ray


def _evaluate_with_ray(
    settings: EvalSettings,
    model: CheckedModel,
    indexed: dict[str, list[tuple[int, EncodedExample]]],
    examples: dict[str, list[EvalExample]],
    max_model_len: int,
) -> tuple[dict[str, dict[int, dict[str, Any]]], EvalTimings]:
    """Replica r evaluates examples r, r + N, ... of every split with its own engine; the driver merges by index.

    Each replica returns per-example entries keyed by index, so the merged logs equal the single-process ones.
    """
    import ray

    from uld_vllm.engine import has_cuda

    replicas = settings.num_replicas
    memory = replica_memory(settings.engine_args, replicas, has_cuda())
    records: dict[str, dict[int, dict[str, Any]]] = {split: {} for split in indexed}
    timings = EvalTimings()
    with ray_connection():
        task = ray.remote(num_cpus=1, num_gpus=1 if has_cuda() else 0, max_retries=2)(_evaluate_shard)
        shards = [{split: pairs[r::replicas] for split, pairs in indexed.items()} for r in range(replicas)]
        futures = [task.remote(settings, model, shard, examples, max_model_len, memory) for shard in shards]
        for shard_records, shard_timings in ray.get(futures):
            for split, by_index in shard_records.items():
                records[split].update(by_index)
            timings.add(shard_timings)
    return records, timings


def _evaluate_shard(
    settings: EvalSettings,
    model: CheckedModel,
    shard: dict[str, list[tuple[int, EncodedExample]]],
    examples: dict[str, list[EvalExample]],
    max_model_len: int,
    engine_args: dict[str, Any],
) -> tuple[dict[str, dict[int, dict[str, Any]]], EvalTimings]:
    from transformers import AutoTokenizer

    from uld_vllm.engine import in_process_engine_core

    in_process_engine_core()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    timings = EvalTimings()
    with _timed(timings):
        backend = _open_backend(settings, model, max_model_len, tokenizer.eos_token_id, engine_args)
    try:
        records, work = evaluate_examples(backend, tokenizer, shard, examples, settings.max_new_tokens)
    finally:
        backend.close()
    timings.add(work)
    return records, timings
