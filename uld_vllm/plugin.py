"""vLLM plugin (entry point `vllm.general_plugins`): makes `ULDForCausalLM` bundles plain vLLM models.

vLLM runs `register()` in every process it starts (engine core, workers, Ray actors), possibly more than once.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger("uld_vllm")

# Runner methods through which vLLM computes prompt log-probs (model runner V1 and V2). They must see ULD's scoring
# mode; every other compute_logits call (sampling) sees generation mode.
_PROMPT_LOGPROB_ENTRY_POINTS = (
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_get_prompt_logprobs_dict"),
    ("vllm.v1.worker.gpu.sample.prompt_logprob", "PromptLogprobsWorker", "compute_prompt_logprobs"),
    ("vllm.v1.worker.gpu.sample.prompt_logprob", "PromptLogprobsWorker", "compute_prompt_token_id_logprobs"),
)


def register() -> None:
    from vllm import ModelRegistry

    if "ULDForCausalLM" not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model("ULDForCausalLM", "uld_vllm.model:ULDForCausalLM")
    install_scoring_hooks()


def install_scoring_hooks() -> int:
    """Wrap vLLM's prompt-logprob entry points in ULD's scoring mode; returns how many are wrapped."""
    import importlib

    from uld_vllm.model import scoring_mode

    wrapped = 0
    for module_name, class_name, method_name in _PROMPT_LOGPROB_ENTRY_POINTS:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        method = getattr(cls, method_name, None)
        if method is None:
            continue
        if not getattr(method, "_uld_scoring", False):
            setattr(cls, method_name, _in_scoring_mode(method, scoring_mode))
        wrapped += 1
    if wrapped == 0:
        logger.warning("uld: no known vLLM prompt-logprob entry point found; prompt log-probs use generation mode")
    return wrapped


def _in_scoring_mode(method, scoring_mode):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with scoring_mode():
            return method(*args, **kwargs)

    wrapper._uld_scoring = True
    return wrapper
