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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Its parts, one job each, live in bench/throughput_parts/ (importing them sets the environment before torch loads).
from bench.throughput_parts.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__.split("\n")[0]))
