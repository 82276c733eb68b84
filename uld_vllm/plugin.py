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
    install_cpu_seed_rewind()


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


def install_cpu_seed_rewind() -> bool:
    """Make per-request seeds work with chunked prefill on vLLM's CPU runner (model runner V1).

    After a partial prefill step vLLM discards the token it sampled and rewinds that request's generator with
    `set_offset(get_offset() - 4)`, which only CUDA's Philox generators support: on CPU it raises "CPU Generator does
    not use offset" and kills the engine. Here CPU generators of discarded requests are snapshotted before sampling
    and restored after it (an exact rewind), and hidden from vLLM's CUDA-only rewind. GPU runs are untouched.
    """
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError:
        return False
    if getattr(GPUModelRunner._sample, "_uld_seed_rewind", False):
        return True
    sample, bookkeeping = GPUModelRunner._sample, GPUModelRunner._bookkeeping_sync

    @functools.wraps(sample)
    def sample_and_rewind(self, *args, **kwargs):
        if self.device.type != "cpu":
            return sample(self, *args, **kwargs)
        discarded = self.discard_request_mask.np[: self.input_batch.num_reqs].nonzero()[0]
        saved = {}
        for index in discarded.tolist():
            generator = self.input_batch.generators.get(index)
            if generator is not None:
                saved[index] = generator.get_state()
        output = sample(self, *args, **kwargs)
        for index, state in saved.items():
            self.input_batch.generators[index].set_state(state)
        self._uld_rewound = list(saved)
        return output

    @functools.wraps(bookkeeping)
    def bookkeeping_without_offset_rewind(self, *args, **kwargs):
        rewound = getattr(self, "_uld_rewound", None) or []
        self._uld_rewound = []
        hidden = {i: self.input_batch.generators.pop(i) for i in rewound if i in self.input_batch.generators}
        try:
            return bookkeeping(self, *args, **kwargs)
        finally:
            self.input_batch.generators.update(hidden)

    sample_and_rewind._uld_seed_rewind = True
    GPUModelRunner._sample = sample_and_rewind
    GPUModelRunner._bookkeeping_sync = bookkeeping_without_offset_rewind
    return True
