"""ULDForCausalLM: target and assistant co-run in one vLLM model, each with its own paged KV cache.

Shape follows vLLM's llama.py: keyword-only constructor, distinct prefixes ("target", "assistant") so every attention
layer has a unique name (and so its own KV cache), `forward` -> hidden states, `compute_logits` -> ULD logits.
The assistant shares the target's embeddings, final norm and LM head (paper section 3). Two ways to hold its K layers:
shared weights (a LoRA assistant: the target's own first K layers run both streams, uld_vllm.shared) or a merged copy
(the fallback: full assistants, tensor parallelism, quantized targets). With the filter on, the assistant's LM head
is computed only where ULD reads it, on the calls where that is cheaper than the dense head (uld_vllm.head).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.sequence import IntermediateTensors

from uld_vllm.assistant import FAMILIES, AssistantError, assistant_config, check_family, check_finite
from uld_vllm.bundle import (
    ASSISTANT_DIR,
    Bundle,
    BundleError,
    ULDSettings,
    assistant_layer_tensors,
    assistant_lora,
    take_handed_over,
)
from uld_vllm.combine import Mode, combine
from uld_vllm.fused import RawLogits, fused_backend
from uld_vllm.head import AssistantHead, SparseRule, head_logits
from uld_vllm.shared import SharedBackbone, can_share, stack_streams, unwrap_layers, wrap_layers

# Which caller compute_logits serves. Sampling needs generation mode (implausible tokens at -1e3); prompt log-probs
# (teacher-forced scoring, what TOFU metrics read) need scoring mode. vLLM calls one method for both, so the plugin
# wraps the runners' prompt-logprob entry points in `scoring_mode()` (see uld_vllm.plugin).
_MODE: contextvars.ContextVar[Mode] = contextvars.ContextVar("uld_logits_mode", default="generate")


@contextlib.contextmanager
def scoring_mode() -> Iterator[None]:
    token = _MODE.set("score")
    try:
        yield
    finally:
        _MODE.reset(token)


def _family_class(model_type: str) -> type[nn.Module]:
    """The vLLM class of a supported family (uld_vllm.assistant.FAMILIES, checked when the bundle was read)."""
    module = importlib.import_module(f"vllm.model_executor.models.{model_type}")
    return getattr(module, FAMILIES[model_type])


def engine_bundle(vllm_config: VllmConfig) -> Bundle:
    """The bundle this engine serves: the one make_llm checked and handed over in this process, else (an engine core
    in its own process: vllm serve) read from vLLM's parsed config, with the overrides vLLM applied to it
    (`hf_overrides={"uld_weight": w, "uld_filter": r}`) checked here; its adapter is then checked as it loads."""
    path = vllm_config.model_config.model
    handed_over = take_handed_over(path)
    if handed_over is not None:
        return handed_over
    hf_config = vllm_config.model_config.hf_config
    if not hasattr(hf_config, "uld"):
        raise BundleError(f"{path} has no 'uld' config section: not a ULD bundle")
    overrides = getattr(hf_config, "uld_weight", None), getattr(hf_config, "uld_filter", None)
    settings = ULDSettings(**hf_config.uld)
    settings = settings.validated() if overrides == (None, None) else settings.overridden(*overrides)
    return Bundle(path=Path(path), config=hf_config.to_dict(), settings=settings)


class ULDForCausalLM(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.bundle = engine_bundle(vllm_config)
        self.settings = self.bundle.settings
        try:
            family = _family_class(check_family(config))
        except AssistantError as e:
            raise BundleError(str(e)) from None

        self.target = family(vllm_config=vllm_config, prefix=_join(prefix, "target"))
        self.hidden_size = config.hidden_size
        self.make_empty_intermediate_tensors = self.target.make_empty_intermediate_tensors
        tensor_parallel = vllm_config.parallel_config.tensor_parallel_size
        self.not_shared_because = can_share(
            self.target.model.layers, tensor_parallel, vllm_config.quant_config is not None
        )
        if self.settings.assistant_format != "lora":
            self.not_shared_because = "a full (not LoRA) assistant checkpoint"
        if getattr(config, "uld_share_weights", True) is False:
            self.not_shared_because = "uld_share_weights=False"
        self.shared = self.not_shared_because is None
        # The union head reads lm_head.weight directly: a whole (unsharded) head with plain logits.
        processor = self.target.logits_processor
        device = torch.device(vllm_config.device_config.device)
        self.stack_outside = device.type == "cpu"  # see SharedBackbone: where the streams' rows are stacked
        rule = SparseRule.from_setting(getattr(config, "uld_sparse_head", True), device.type)
        plain_head = getattr(processor, "scale", 1.0) == 1.0 and getattr(processor, "soft_cap", None) is None
        self.head = AssistantHead(rule) if rule is not None and tensor_parallel == 1 and plain_head else None
        # Sampling through the fused kernel where the plugin's _sample hook finds a qualifying step (uld_vllm.fused).
        self.fused_sampling = fused_backend(getattr(config, "uld_fused_sampling", "auto"), device)
        self.raw_logits: RawLogits | None = None
        if self.shared:
            self._build_shared(vllm_config, prefix)
        else:
            self._build_merged(vllm_config, prefix, family)

    def _build_shared(self, vllm_config: VllmConfig, prefix: str) -> None:
        """Only the assistant's attention layers are its own (own names, so own paged KV caches); its weights are the
        target's, wrapped with its LoRA once they are loaded (uld_vllm.shared.wrap_layers)."""
        config = vllm_config.model_config.hf_config
        layers = self.target.model.layers
        self.assistant_attention = nn.ModuleList(
            _attention_like(
                layers[i].self_attn, vllm_config, _join(prefix, f"assistant.model.layers.{i}.self_attn.attn")
            )
            for i in range(self.settings.assistant_layers)
        )
        # Its own compile-cache key (see _build_merged): vLLM's hash does not see that this backbone runs another
        # graph than the target's own on the same bundle (which the merged fallback compiles).
        backbone_config = vllm_config.with_hf_config(config, list(config.architectures))
        backbone_config.model_config.model = str(Path(vllm_config.model_config.model) / "shared-backbone")
        with set_current_vllm_config(backbone_config):
            self.backbone = SharedBackbone(
                vllm_config=backbone_config,
                prefix=_join(prefix, "backbone"),
                decoder=self.target.model,
                assistant_layers=self.settings.assistant_layers,
            )

    def _build_merged(self, vllm_config: VllmConfig, prefix: str, family: type[nn.Module]) -> None:
        """The fallback: a second K-layer model holding the assistant's layers with the LoRA merged (a copy)."""
        config = vllm_config.model_config.hf_config
        small = assistant_config(config, self.settings.assistant_layers)
        assistant_vllm_config = vllm_config.with_hf_config(small, list(config.architectures))
        # vLLM keys its torch.compile (AOT) cache on VllmConfig.compute_hash(), which does not see hf_config: the two
        # backbones (same class, same hash) would share one cache entry, and the assistant's could load the target's
        # 4-layer graph. The assistant's own directory as its model path gives it its own key, provided the compile
        # wrapper sees this config: it reads the *current* one, not the one passed in.
        assistant_vllm_config.model_config.model = str(Path(vllm_config.model_config.model) / ASSISTANT_DIR)
        with set_current_vllm_config(assistant_vllm_config):
            self.assistant = family(vllm_config=assistant_vllm_config, prefix=_join(prefix, "assistant"))
        # Shared with the target by construction (paper section 3): one copy in memory, loaded once.
        self.assistant.model.embed_tokens = self.target.model.embed_tokens
        self.assistant.model.norm = self.target.model.norm
        self.assistant.lm_head = self.target.lm_head

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.target.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.shared and self.stack_outside:
            stacked = stack_streams(self.target.model, input_ids, positions, inputs_embeds)
            target_hidden, assistant_hidden = self.backbone(None, positions, None, *stacked)
        elif self.shared:
            target_hidden, assistant_hidden = self.backbone(input_ids, positions, inputs_embeds)
        else:
            target_hidden = self.target(input_ids, positions, intermediate_tensors, inputs_embeds)  # (T, H)
            assistant_hidden = self.assistant(input_ids, positions, intermediate_tensors, inputs_embeds)  # (T, H)
        # The runner selects rows (tokens) of whatever forward returns and hands them to compute_logits, so both
        # models' states travel together on the feature axis.
        return torch.cat([target_hidden, assistant_hidden], dim=-1)  # (T, 2H)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        target_hidden, assistant_hidden = hidden_states.split(self.hidden_size, dim=-1)  # (N, H) each
        weight, filter, min_keep, mode = self.settings.weight, self.settings.filter, self.settings.min_keep, _MODE.get()
        lm_head, processor = self.target.lm_head, self.target.logits_processor
        # Combined inside the block: a timed head chooses by the whole call's cost (uld_vllm.head).
        with head_logits(self.head, lm_head, processor, target_hidden, assistant_hidden, filter, min_keep) as logits:
            if logits is None:  # not the last pipeline rank
                return None
            # The fused kernel's inputs (uld_vllm.fused); it knows the paper's floor only.
            if self.fused_sampling is not None and mode == "generate" and min_keep is None:
                self.raw_logits = RawLogits(logits.target, logits.dense_assistant(), weight, filter)
            return combine(
                logits.target, logits.assistant, weight, filter, mode, logits.implausible, logits.columns, min_keep
            )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self.shared:  # a reload (serve): the target's layers under their own names while they load
            unwrap_layers(self.target.model.layers)
        loaded = {f"target.{name}" for name in self.target.load_weights(_checked(weights, "target"))}
        if self.shared:
            wrap_layers(self.target.model.layers, self.assistant_attention, assistant_lora(self.bundle))
            return loaded
        layers = assistant_layer_tensors(self.bundle)  # layers 0..K-1 only; shared tensors are the target's
        loaded |= {f"assistant.{name}" for name in self.assistant.load_weights(layers.items())}
        return loaded

    def serve(self, bundle: Bundle) -> None:
        """Serve another assistant of the same target (a training run's next snapshot), with its weight and filter,
        from the next reload of the weights on (vLLM's in-place `reload_weights`, which calls load_weights): the
        engine is not rebuilt."""
        self.bundle.check_same_target(bundle)
        self.bundle, self.settings = bundle, bundle.settings


def _attention_like(self_attn: nn.Module, vllm_config: VllmConfig, prefix: str) -> nn.Module:
    """A vLLM Attention with the settings of a target layer's, under another layer name (so its own KV cache)."""
    from vllm.model_executor.layers.attention.attention import Attention

    attn = self_attn.attn
    return Attention(
        attn.num_heads,
        attn.head_size,
        self_attn.scaling,
        num_kv_heads=attn.num_kv_heads,
        cache_config=vllm_config.cache_config,
        quant_config=vllm_config.quant_config,
        per_layer_sliding_window=attn.sliding_window,
        prefix=prefix,
    )


def _checked(weights: Iterable[tuple[str, torch.Tensor]], what: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The target's weights as vLLM streams them from disk, each refused if it holds NaN/inf: the only pass over them."""
    for name, tensor in weights:
        try:
            check_finite(name, tensor, what)
        except AssistantError as e:
            raise BundleError(str(e)) from None
        yield name, tensor


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
