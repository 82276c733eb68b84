"""The limits the model's shape implies for ULD / plain: FLOPs and bytes per token, and per decode batch's work."""

from __future__ import annotations


def model_costs(config, rank: int, head_stats: dict | None) -> dict[str, float]:
    """Per-token weight parameters of the target and of ULD's extra work, and the limits of ULD / plain they imply.

    bytes (weight-bound decoding): plain reads the target's weights once per step; shared-weight ULD adds only the
    LoRA (r * (in + out) per linear of K layers); the merged copy adds K layers. FLOPs (compute-bound): ULD adds K
    layers (2 multiply-adds per weight per row, as the target's), the LoRA, and the assistant's head over V (dense)
    or, with the union head, over V on the calls its rule left dense and over the mean union on the others."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    layers = config.num_hidden_layers
    k = config.uld["assistant_layers"]  # the bundle's K (the random shapes' is assistant_depth, the real one's 8)
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
