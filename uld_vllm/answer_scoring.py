"""Answer scoring: the log-prob of each answer token after its prompt, only at the answer's rows, in one batched
LM-head call per engine step.

TOFU's metrics read the log-probs of answer tokens only. vLLM 0.32's V1 runner computes prompt log-probs request by
request at every prompt row (the question's too), then log-softmax, top-k and rank over the vocabulary; and vLLM
skips the prefix cache for such requests, so the 7 answers scored per question recompute its prompt 7 times. A
request opts in to this path with `answer_params(score_from)`: its rows before token `score_from` get NaN (no logits
are computed there), every answer token gets its exact log-prob (ULD's scoring mode for a ULD engine) and its rank
(1: the model's greedy choice there; -1 where not computed), and it may read the prefix cache. A cache hit that
reaches into the answer leaves those rows NaN: `uncomputed()` finds them, and the caller scores them again without
the cache. Requests that do not opt in take vLLM's own path, unchanged.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

SCORE_FROM = "uld_score_from"  # SamplingParams.extra_args key: the first prompt token whose log-prob is wanted


def answer_params(score_from: int, read_cache: bool = True):
    """SamplingParams that score a prompt's tokens from `score_from` on through this path."""
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        prompt_logprobs=0,
        detokenize=False,
        skip_reading_prefix_cache=not read_cache,
        extra_args={SCORE_FROM: int(score_from)},
    )


class ScoredAnswer(NamedTuple):
    """An answer's tokens as the model scores them, teacher-forced after its prompt."""

    logprobs: list[float]  # log p(token | prompt, earlier answer tokens)
    greedy: list[bool]  # the token is the model's most likely one there (Exact Memorization, Extraction Strength)


def answer_logprobs(output, score_from: int) -> ScoredAnswer:
    """The answer tokens' log-probs and greedy flags from a RequestOutput of `answer_params(score_from)` (log-prob
    NaN where not computed)."""
    tokens = output.prompt_token_ids[score_from:]
    entries = [entry[token] for token, entry in zip(tokens, output.prompt_logprobs[score_from:], strict=True)]
    return ScoredAnswer([e.logprob for e in entries], [e.rank == 1 for e in entries])


def uncomputed(scored: ScoredAnswer) -> bool:
    return any(math.isnan(value) for value in scored.logprobs)


def score_answers(llm, pairs: list[tuple[list[int], list[int]]], progress: bool = False) -> list[ScoredAnswer]:
    """Each (prompt, answer) pair's answer-token log-probs. Pairs go to the engine in prompt order, so a question's
    answers meet its prompt in the prefix cache; pairs whose cache hit reached into the answer are scored again
    without the cache."""
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    scores: list[ScoredAnswer] = [ScoredAnswer([], []) for _ in pairs]
    todo, read_cache = order, True
    while todo:
        outputs = llm.generate(
            [{"prompt_token_ids": pairs[i][0] + pairs[i][1]} for i in todo],
            [answer_params(len(pairs[i][0]), read_cache) for i in todo],
            use_tqdm=progress,
        )
        for i, output in zip(todo, outputs, strict=True):
            scores[i] = answer_logprobs(output, len(pairs[i][0]))
        todo = [i for i in todo if uncomputed(scores[i])] if read_cache else []
        read_cache = False
    return scores


ROWS_PER_CALL = 32  # the head's (rows, vocab) tensors stay small enough to be reused, not allocated (page-faulted)


def _chosen_logprobs(
    model, hidden_states: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and target's rank (vLLM's: 1 + the tokens more likely) at each of `rows`, through the model's
    compute_logits, ROWS_PER_CALL rows at a time."""
    chosen = torch.empty(rows.numel(), dtype=torch.float32)
    ranks = torch.empty(rows.numel(), dtype=torch.int32)
    for start in range(0, rows.numel(), ROWS_PER_CALL):
        part = slice(start, start + ROWS_PER_CALL)
        logits = model.compute_logits(hidden_states.index_select(0, rows[part].to(hidden_states.device)))
        logprobs = logits.log_softmax(dim=-1, dtype=torch.float32)
        picked = logprobs.gather(-1, targets[part].to(logprobs.device).unsqueeze(-1))
        chosen[part] = picked.squeeze(-1).cpu()
        ranks[part] = ((logprobs > picked).sum(-1) + 1).to(torch.int32).cpu()
    return chosen, ranks


def score_from(request: Any) -> int | None:
    params = getattr(request, "sampling_params", None)
    extra = getattr(params, "extra_args", None) or {}
    return extra.get(SCORE_FROM)


def prompt_logprobs_dict(runner: Any, hidden_states: torch.Tensor, num_scheduled_tokens: dict[str, int], vllm_path):
    """The V1 runner's `_get_prompt_logprobs_dict`: opted-in requests here, the others through `vllm_path`."""
    pending = runner.num_prompt_logprobs
    ours = {r: n for r, n in pending.items() if score_from(runner.requests[r]) is not None}
    for request_id in ours:
        del pending[request_id]
    try:
        result = vllm_path(runner, hidden_states, num_scheduled_tokens)
    finally:
        pending.update(ours)
    return result | _score_answers(runner, hidden_states, num_scheduled_tokens, ours)


def _score_answers(
    runner: Any, hidden_states: torch.Tensor, num_scheduled_tokens: dict[str, int], requests: dict[str, int]
) -> dict:
    """vLLM's bookkeeping (chunks, completion, the CPU tensors it returns), with the head run once over every
    request's answer rows of this step."""
    from vllm.v1.outputs import LogprobsTensors

    finished: dict[str, LogprobsTensors] = {}
    rows: list[torch.Tensor] = []  # indices into hidden_states
    targets: list[torch.Tensor] = []  # the token each row predicts
    places: list[tuple[LogprobsTensors, int, int]] = []  # (tensors, first row, count) in each request's tensors
    for request_id in list(requests):
        scheduled = num_scheduled_tokens.get(request_id)
        request = runner.requests[request_id]
        if scheduled is None or request.prompt_token_ids is None:  # preempted in prefill; prompt embeddings
            continue
        prompt = request.prompt_token_ids
        tensors = request.in_progress_prompt_logprobs_cpu
        if tensors is None:
            tensors = LogprobsTensors.empty_cpu(len(prompt) - 1, 1)
            tensors.logprob_token_ids[:, 0] = torch.tensor(prompt[1:], dtype=torch.int32)
            tensors.logprobs.fill_(math.nan)  # rows never computed (the prompt's, a cache hit's) stay NaN
            tensors.selected_token_ranks.fill_(-1)
            request.in_progress_prompt_logprobs_cpu = tensors
        start = request.num_computed_tokens  # row i predicts prompt token i + 1
        remaining = len(prompt) - 1 - start
        count = scheduled
        if scheduled > remaining:  # the last chunk of the prompt
            count = remaining
            finished[request_id] = tensors
        first = max(start, score_from(request) - 1)
        if count > 0 and first < start + count:
            offset = int(runner.query_start_loc.np[runner.input_batch.req_id_to_index[request_id]])
            rows.append(torch.arange(offset + first - start, offset + count))
            targets.append(torch.tensor(prompt[first + 1 : start + count + 1], dtype=torch.long))
            places.append((tensors, first, start + count - first))
    if rows:
        chosen, ranks = _chosen_logprobs(runner.model, hidden_states, torch.cat(rows), torch.cat(targets))
        done = 0
        for tensors, first, count in places:
            tensors.logprobs[first : first + count, 0] = chosen[done : done + count]
            tensors.selected_token_ranks[first : first + count] = ranks[done : done + count]
            done += count
    for request_id in finished:
        del runner.num_prompt_logprobs[request_id]
        runner.requests[request_id].in_progress_prompt_logprobs_cpu = None
    return finished
