"""The bench model's LM head made realistic: trained LMs' next-token distributions, which the sparse head acts on."""

from __future__ import annotations

from pathlib import Path

from bench.throughput_parts.settings import FILTER

TARGET_ENTROPY = 3.0  # nats: the middle of trained models' 2-4
# Std of the context-dependent part of the bench head's logits: how much contexts differ. At 3.0 the union of 64 rows'
# keep sets (r = 0.01) is about 7,800 of 32,000 tokens, the middle of the 3,700-15,000 that simulations of trained
# (frequent tokens lead every row) and unrelated rows gave; a head of context parts only gives about 14,700.
CONTEXT_STD = 3.0


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
