"""vLLM plugin (entry point `vllm.general_plugins`): makes `ULDForCausalLM` bundles plain vLLM models.

vLLM runs `register()` in every process it starts (engine core, workers, Ray actors), possibly more than once.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass

logger = logging.getLogger("uld_vllm")

# The vLLM releases whose runner internals the hooks below were written against and tested with (pyproject pins the
# same). Another release may rename or reshape them: each hook then checks what it replaces and stands down.
TESTED_VLLM = ("0.32.",)


@dataclass(frozen=True)
class Patch:
    """A vLLM method the plugin wraps, with the parameter names it must have for the wrapper to be right."""

    module: str
    cls: str
    method: str
    params: tuple[str, ...]

    def target(self) -> type | None:
        """The class to patch, or None (with one warning) when the method is missing or has another signature."""
        import importlib

        try:
            cls = getattr(importlib.import_module(self.module), self.cls)
            found = tuple(inspect.signature(getattr(cls, self.method)).parameters)
        except (ImportError, AttributeError, TypeError, ValueError):
            return None
        if found[: len(self.params)] != self.params:
            logger.warning(
                "uld: vLLM %s's %s.%s%s is not the %s this plugin knows; left alone",
                _vllm_version(),
                self.cls,
                self.method,
                found,
                self.params,
            )
            return None
        return cls


# Runner methods through which vLLM computes prompt log-probs (model runner V1, which the CPU runner subclasses, and
# V2). They must see ULD's scoring mode; every other compute_logits call (sampling) sees generation mode.
SCORING_PATCHES = (
    Patch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner",
        "_get_prompt_logprobs_dict",
        ("self", "hidden_states", "num_scheduled_tokens"),
    ),
    Patch(
        "vllm.v1.worker.gpu.sample.prompt_logprob",
        "PromptLogprobsWorker",
        "compute_prompt_logprobs",
        ("self", "logits_fn", "hidden_states", "input_batch"),
    ),
    Patch(
        "vllm.v1.worker.gpu.sample.prompt_logprob",
        "PromptLogprobsWorker",
        "compute_prompt_token_id_logprobs",
        ("self", "logits_fn", "hidden_states", "input_batch"),
    ),
)
SEED_REWIND_PATCHES = (
    Patch("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_sample", ("self", "logits", "spec_decode_metadata")),
    Patch(
        "vllm.v1.worker.gpu_model_runner",
        "GPUModelRunner",
        "_bookkeeping_sync",
        ("self", "scheduler_output", "sampler_output", "logits", "hidden_states", "num_scheduled_tokens"),
    ),
)


def _vllm_version() -> str:
    try:
        import vllm

        return vllm.__version__
    except Exception:  # noqa: BLE001 - only used in a warning
        return "?"


def register() -> None:
    """Register ULDForCausalLM and install the hooks. Never raises: vLLM runs this in every process whatever model it
    serves, and a plugin that fails there would break models that have nothing to do with ULD."""
    steps = (
        _register_model,
        register_rms_norm,
        install_scoring_hooks,
        install_fused_sampling,
        install_cpu_seed_rewind,
        install_cache_load,
    )
    for step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - see the docstring; the warning names what stood down
            logger.warning(
                "uld: %s failed on vLLM %s (%s: %s); left vLLM unchanged",
                step.__name__,
                _vllm_version(),
                type(e).__name__,
                e,
            )
    if not _vllm_version().startswith(TESTED_VLLM):
        logger.warning("uld: tested with vLLM %s, running on %s", "/".join(TESTED_VLLM), _vllm_version())


def register_rms_norm() -> bool:
    from uld_vllm.cpu_kernels import register_rms_norm

    return register_rms_norm()


def _register_model() -> None:
    from vllm import ModelRegistry

    if "ULDForCausalLM" not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model("ULDForCausalLM", "uld_vllm.model:ULDForCausalLM")


def install_scoring_hooks() -> int:
    """Wrap vLLM's prompt-logprob entry points in ULD's scoring mode, the V1 runner's also in answer scoring
    (uld_vllm.answer_scoring); returns how many are wrapped (idempotent)."""
    from uld_vllm.model import scoring_mode

    wrapped = 0
    for patch in SCORING_PATCHES:
        cls = patch.target()
        if cls is None:
            continue
        method = getattr(cls, patch.method)
        if not getattr(method, "_uld_scoring", False):
            if patch is SCORING_PATCHES[0]:  # the V1 runner: answer scoring for the requests that ask for it
                method = _with_answer_scoring(method)
            setattr(cls, patch.method, _in_scoring_mode(method, scoring_mode))
        wrapped += 1
    if not scoring_hooks_installed():
        logger.warning("uld: vLLM's prompt-logprob entry point is not hooked: uld-eval refuses to score ULD bundles")
    return wrapped


def scoring_hooks_installed() -> bool:
    """True when the runner every vLLM 0.32 engine uses (V1; the CPU runner subclasses it) computes prompt log-probs
    in ULD's scoring mode. Without it a ULD engine's prompt log-probs would be generation-mode values."""
    import importlib

    patch = SCORING_PATCHES[0]
    try:
        method = getattr(getattr(importlib.import_module(patch.module), patch.cls), patch.method)
    except (ImportError, AttributeError):
        return False
    return bool(getattr(method, "_uld_scoring", False))


def _with_answer_scoring(method):
    from uld_vllm.answer_scoring import prompt_logprobs_dict

    @functools.wraps(method)
    def wrapper(self, hidden_states, num_scheduled_tokens):
        return prompt_logprobs_dict(self, hidden_states, num_scheduled_tokens, method)

    return wrapper


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
    targets = [patch.target() for patch in SEED_REWIND_PATCHES]
    if any(cls is None for cls in targets):
        return False
    GPUModelRunner = targets[0]  # noqa: N806 - the vLLM class itself
    if _is_wrapped(GPUModelRunner._sample, "_uld_seed_rewind"):
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


def install_fused_sampling() -> bool:
    """Let ULD models sample through the fused kernel: wrap the runner's `_sample` (see uld_vllm.fused). Models that
    are not ULD, or steps that do not qualify, take vLLM's own path unchanged. Idempotent."""
    cls = SEED_REWIND_PATCHES[0].target()  # GPUModelRunner._sample(self, logits, spec_decode_metadata)
    if cls is None:
        return False
    if _is_wrapped(cls._sample, "_uld_fused"):
        return True
    sample = cls._sample

    @functools.wraps(sample)
    def sample_fused_when_it_applies(self, logits, spec_decode_metadata, *args, **kwargs):
        model = self.get_model()
        backend = getattr(model, "fused_sampling", None)
        if backend is not None and spec_decode_metadata is None and logits is not None:
            from uld_vllm.fused import fused_sample

            self.input_batch.update_async_output_token_ids()
            output = fused_sample(model, self.input_batch, backend)
            if output is not None:
                return output
        return sample(self, logits, spec_decode_metadata, *args, **kwargs)

    sample_fused_when_it_applies._uld_fused = True
    cls._sample = sample_fused_when_it_applies
    return True


def install_cache_load() -> bool:
    """Let engine starts on CPU load the graphs vLLM compiled and saved before, instead of compiling again.

    vLLM 0.32 saves each compiled backbone (its AOT compile cache) and, when it loads one, calls `finalize_loading`
    on the loaded artifact's compiled function. On CPU that function is inductor's loaded graph itself, without the
    method: the load fails ("'function' object has no attribute 'finalize_loading'") and every start compiles anew
    (30-50 s of a 50-70 s start of the 155M bench model, 2 cores). Such a graph needs no finishing: it gets a no-op.
    Plain vLLM models in the same process profit alike. Idempotent."""
    import torch.compiler

    load = torch.compiler.load_compiled_function
    if _is_wrapped(load, "_uld_cache_load"):
        return True

    @functools.wraps(load)
    def load_finished(*args, **kwargs):
        loaded = load(*args, **kwargs)
        compiled = getattr(getattr(loaded, "_artifacts", None), "compiled_fn", None)
        if compiled is not None and not hasattr(compiled, "finalize_loading"):
            compiled.finalize_loading = lambda vllm_config: None
        return loaded

    load_finished._uld_cache_load = True
    torch.compiler.load_compiled_function = load_finished
    return True


def _is_wrapped(method, marker: str) -> bool:
    """Whether `method`, or a method it wraps (functools.wraps chains), carries `marker`."""
    while method is not None:
        if getattr(method, marker, False):
            return True
        method = getattr(method, "__wrapped__", None)
    return False
