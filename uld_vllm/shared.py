"""Shared-weight co-execution: the assistant's K layers run on the target's own first K layers, its LoRA unmerged.

ULD's assistant is the target's first K layers plus LoRA (paper section 3). Copying those layers with the LoRA merged
(the fallback, `ULDForCausalLM` with `uld_share_weights=False`) costs K/L of the target's layer weights in memory and,
per decode step, in weight reads. Here both streams' rows are stacked, [target rows; assistant rows], and go through
each of the target's first K decoder layers in one pass: every linear layer is one GEMM over both streams, reading its
weight once, and adds the LoRA delta (x A^T B^T, a few MFLOPs) to the assistant's rows only; norms, activations and
rotary embeddings are row-wise and shared; attention is the one place the streams part: each has its own vLLM
`Attention` (its own paged KV cache). Layers K..L-1 then run on the target's rows alone.

The layers are the family's own vLLM modules, run by their own `forward`: only three leaves are swapped after the
weights are loaded (`wrap_layers`): each linear layer becomes `StackedLoRALinear`, each attention `SplitAttention`.
vLLM's multi-LoRA (`vllm/lora/`) applies per-request adapters over one base GEMM too, but a request with an adapter is
a sequence through all L layers with one KV cache, while ULD's assistant stops at layer K with its own cache; the
stacked layout keeps room for several assistants later (more row groups, one delta each).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.utils.torch_utils import direct_register_custom_op

from uld_vllm.assistant import LoraPair

# vLLM's fused linear layers and the HF projections they hold, in output order.
FUSED_PROJECTIONS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}


def stacked_lora(
    pairs: dict[str, LoraPair], prefix: str, projections: tuple[str, ...], out_sizes: list[int]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One fused linear's LoRA as (A, B): A (R, in) = the projections' A stacked, B (out, R) block-diagonal with each
    projection's B (scaling folded in) at its output rows. None when the adapter touches none of them."""
    found = [
        (i, pairs[f"{prefix}.{name}.weight"])
        for i, name in enumerate(projections)
        if f"{prefix}.{name}.weight" in pairs
    ]
    if not found:
        return None
    rank = sum(pair.a.shape[0] for _, pair in found)
    a = torch.cat([pair.a.float() for _, pair in found])  # (R, in)
    b = torch.zeros(sum(out_sizes), rank)  # (out, R)
    row_starts = [sum(out_sizes[:i]) for i in range(len(out_sizes))]
    col = 0
    for i, pair in found:
        r = pair.a.shape[0]
        b[row_starts[i] : row_starts[i] + out_sizes[i], col : col + r] = pair.scaling * pair.b.float()
        col += r
    return a, b


def _lora_add(out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
    """out[N/2:] += x[N/2:] A^T B^T, in place: one GEMM accumulating into the assistant's half of the output."""
    half = x.shape[0] // 2
    out[half:].addmm_(F.linear(x[half:], lora_a), lora_b.t())


def _lora_add_fake(out: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
    return None


# An opaque in-place op, not `out[N/2:] += ...` in the traced graph: that becomes a slice_scatter, which Inductor's
# CPU code fuses into every consumer as masked, blended loads (the stacked layers' SiLU and RoPE kernels ran several
# times slower than the plain ones; bench/results/README.md), or an addmm that first copies the whole output; a
# full-size delta added outside the GEMM moves twice the output's bytes. In place, the consumers read one plain tensor.
direct_register_custom_op("uld_lora_add", _lora_add, mutates_args=["out"], fake_impl=_lora_add_fake)


class StackedLoRALinear(nn.Module):
    """A target linear layer serving both streams: rows [0, N/2) are the target's, [N/2, N) the assistant's. One base
    GEMM over all N rows; the LoRA delta is added to the assistant's half only, in place (`uld_lora_add`)."""

    requires_unquantized_input = True  # vLLM's activation-quant fusion must not pre-quantize for the wrapped layer

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("lora_a", a, persistent=False)  # (R, in)
        self.register_buffer("lora_b", b, persistent=False)  # (out, R)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, bias = self.base(x)  # (N, out): the weight is read once for both streams
        torch.ops.vllm.uld_lora_add(out, x, self.lora_a, self.lora_b)
        return out, bias


class SplitAttention(nn.Module):
    """Attention over stacked rows: the target's half with the target's layer (and KV cache), the assistant's half
    with the assistant's. Both are vLLM `Attention` modules registered under their own layer names."""

    def __init__(self, target: nn.Module, assistant: nn.Module) -> None:
        super().__init__()
        self.target = target
        self.assistant = assistant

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        half = q.shape[0] // 2
        return torch.cat([self.target(q[:half], k[:half], v[:half]), self.assistant(q[half:], k[half:], v[half:])])


def unwrap_layers(layers: nn.ModuleList) -> None:
    """Undo wrap_layers' LoRA wrappers (the target's linear layers under their own names again), so the target's
    weights can be reloaded in place and another assistant's LoRA wrapped around them."""
    for module in list(layers.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, StackedLoRALinear):
                setattr(module, name, child.base)


def wrap_layers(layers: nn.ModuleList, assistant_attention: nn.ModuleList, pairs: dict[str, LoraPair]) -> None:
    """Turn the target's first K layers (K = len(assistant_attention)) into stacked two-stream layers, in place."""
    for index, attention in enumerate(assistant_attention):
        layer = layers[index]
        prefix = f"model.layers.{index}"
        for fused, projections in FUSED_PROJECTIONS.items():
            parent_name, _, leaf = fused.rpartition(".")
            parent = layer.get_submodule(parent_name)
            base = getattr(parent, leaf)
            # vLLM's fused layers list their parts' sizes (q, k, v / gate, up); unsharded, as can_share requires.
            out_sizes = list(getattr(base, "output_sizes", [base.output_size]))
            lora = stacked_lora(pairs, prefix, projections, out_sizes)
            if lora is None:
                continue
            weight = base.weight
            a, b = (t.to(device=weight.device, dtype=weight.dtype) for t in lora)
            setattr(parent, leaf, StackedLoRALinear(base, a, b))
        if not isinstance(layer.self_attn.attn, SplitAttention):  # a reload keeps the split attention
            layer.self_attn.attn = SplitAttention(layer.self_attn.attn, attention)


def can_share(layers: nn.ModuleList, tensor_parallel: int, quantized: bool) -> str | None:
    """Why the shared path cannot serve this model (None: it can). It needs unsharded, unquantized linear layers with
    the family's plain layout (no per-head q/k norm, no Llama-4 attention scaling)."""
    if tensor_parallel > 1:
        return "tensor parallelism (LoRA deltas on sharded layers)"
    if quantized:
        return "a quantized target"
    attn = layers[0].self_attn
    if getattr(attn, "qk_norm", False) or getattr(attn, "do_llama_4_scaling", False):
        return "per-head q/k norms or Llama-4 attention scaling"
    return None


def stack_streams(
    decoder: nn.Module, input_ids: torch.Tensor | None, positions: torch.Tensor, inputs_embeds: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both streams' first-layer inputs, stacked: (2T, H) embeddings [target rows; assistant rows], looked up once,
    and (2T,) positions."""
    hidden = decoder.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds  # (T, H)
    return torch.cat([hidden, hidden]), torch.cat([positions, positions])


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": {0: "b"},
        "positions": {0: "b"},
        "inputs_embeds": {0: "b"},
        "stacked_embeds": 0,
        "stacked_positions": 0,
    },
)
class SharedBackbone(nn.Module):
    """Both streams through the target's decoder (a vLLM `...Model`): stacked rows for layers 0..K-1, the target's
    rows alone after; returns the target's and the assistant's hidden states, (T, H) each, after the shared final norm.

    Compiled by vLLM like the family's own backbone (it is the module that runs in shared mode); the target's modules
    are held by reference, not registered here, so their parameters keep their names and are loaded once.

    Where the rows are stacked: on CPU the caller stacks them (`stack_streams`) and passes them in, so 2T is a size
    of its own in the graph and the stacked layers compile to the plain layers' kernels. Stacked inside the graph their
    bound is `2*T`, and Inductor wrote their norm, RoPE and SiLU kernels again, a longer cold start for nothing
    (bench/results/README.md). For the same reason the two outputs are returned apart: a (T, 2H) concatenation in the
    graph would tell it that 2T = T + T. On CUDA they are stacked inside: vLLM's CUDA graphs capture the compiled
    pieces' input addresses, which a tensor made outside at every step would not keep."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", decoder: nn.Module, assistant_layers: int) -> None:
        super().__init__()
        self._decoder = (decoder,)  # a tuple: not a registered submodule
        self.assistant_layers = assistant_layers

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        stacked_embeds: torch.Tensor | None = None,
        stacked_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        (model,) = self._decoder
        if stacked_embeds is None:
            stacked_embeds, stacked_positions = stack_streams(model, input_ids, positions, inputs_embeds)
        tokens = positions.shape[0]
        hidden, residual = stacked_embeds, None  # (2T, H)
        for layer in model.layers[: self.assistant_layers]:
            hidden, residual = layer(stacked_positions, hidden, residual)
        assistant_hidden, _ = model.norm(hidden[tokens:], residual[tokens:])  # (T, H)
        hidden, residual = hidden[:tokens], residual[:tokens]
        for layer in model.layers[self.assistant_layers :]:
            hidden, residual = layer(positions, hidden, residual)
        target_hidden, _ = model.norm(hidden, residual)  # (T, H)
        return target_hidden, assistant_hidden  # joined by the caller: in here that would tie 2T to T again
