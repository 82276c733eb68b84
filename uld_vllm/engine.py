"""Starting a vLLM engine on a ULD bundle: checks first (one-line errors), then plain `vllm.LLM`.

`vllm.LLM(model=BUNDLE)` works without this module (the plugin registers the model); this adds the checks that
must fail before an engine starts, overrides for weight and filter, and defaults that suit CPU machines.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from uld_vllm.bundle import (
    ARCHITECTURE,
    Bundle,
    BundleError,
    assistant_lora,
    check_full_assistant_shapes,
    check_vocab,
    hand_over,
    read_bundle,
    read_json,
    take_handed_over,
    weight_shapes,
)
from uld_vllm.errors import UldError
from uld_vllm.machine import cpu_dtype, cpu_flags

DTYPE_ENV = "ULD_DTYPE"  # overrides the default engine dtype of uld-batch, uld-eval, uld-demo and the benchmarks
DTYPES = ("auto", "float32", "bfloat16", "float16")


def has_cuda() -> bool:
    return torch.cuda.is_available()


def check_dtype(dtype: str, source: str) -> str:
    if dtype not in DTYPES:
        raise UldError(f"{source} dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return dtype


def default_dtype() -> str:
    """The engine dtype when none is given: $ULD_DTYPE, else "auto" (the checkpoint's) on CUDA, else by CPU flags."""
    if os.environ.get(DTYPE_ENV):
        return check_dtype(os.environ[DTYPE_ENV], f"${DTYPE_ENV}")
    return "auto" if has_cuda() else cpu_dtype(cpu_flags())


def quiet_vllm(verbose: bool = False) -> None:
    """Errors only from vLLM unless verbose: its INFO lines (80+ per engine start) and its warnings for operators
    (missing tcmalloc, thread binding, kernels re-registered by a second engine) drown our results.

    vLLM reads VLLM_LOGGING_LEVEL once, at import; the logger's level covers a vLLM imported earlier.
    """
    if verbose:
        return
    os.environ["VLLM_LOGGING_LEVEL"] = "ERROR"
    logging.getLogger("vllm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside vLLM/torch, not actionable here


def in_process_engine_core() -> None:
    """vLLM's engine core in this process (unless the user set VLLM_ENABLE_V1_MULTIPROCESSING): an error while the
    engine loads a bundle (NaN weights, a bad adapter) reaches our one-line handler instead of "Engine core
    initialization failed" after a child's traceback, and killing a job (or its Ray actor) leaves no orphan engine.
    Call it before vLLM is imported."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def resolve_dtype(dtype: str | None) -> str:
    """The dtype a command runs with: the one it was given (checked), else the default; resolved once, up front, so
    what a job records (uld-batch's resume record, uld-eval's run.json, bench results) is what actually ran."""
    return check_dtype(dtype, "--dtype") if dtype else default_dtype()


def default_llm_kwargs(given: dict[str, Any] | None = None) -> dict[str, Any]:
    """`given` over the defaults; the default dtype is resolved only where none is given."""
    given = given or {}
    # On CPU, gpu_memory_utilization is the fraction of host memory given to vLLM (KV cache included). vLLM's weight
    # loading bar shows where its logs show (quiet_vllm).
    defaults: dict[str, Any] = {
        "gpu_memory_utilization": 0.85 if has_cuda() else 0.3,
        "use_tqdm_on_load": logging.getLogger("vllm").getEffectiveLevel() <= logging.INFO,
    }
    if "dtype" not in given:
        defaults["dtype"] = default_dtype()
    # vLLM's C++ RMSNorm (uld_vllm.cpu_kernels) for eager CPU engines: a compiled one fuses the PyTorch form itself,
    # and gave wrong tokens with the C++ kernels in its graph (tests/engine/test_engine_compiled.py).
    if not has_cuda() and given.get("enforce_eager", False):
        from uld_vllm.cpu_kernels import norm_priority

        if priority := norm_priority():
            defaults["ir_op_priority"] = priority
    return defaults | given


@dataclass(frozen=True)
class CheckedModel:
    """A model as check_model found it, which every later step takes instead of reading it again: a ULD bundle (its
    settings with the run's weight/filter, its checked LoRA pairs) or a plain HF checkpoint (`bundle` None)."""

    path: Path
    config: dict  # config.json
    bundle: Bundle | None = None


def preflight(
    bundle: str | Path, weight: float | None = None, filter: float | None = None, config: dict | None = None
) -> Bundle:
    """The cheap checks that can fail before an engine starts: config, family, K, weight/filter, tensor shapes (from
    the safetensors headers), vocab, tokenizer, adapter. Returns the bundle with the overrides applied and its LoRA
    pairs checked. No weight data of the target is read here: NaN/inf are refused as vLLM streams the weights in
    (`ULDForCausalLM.load_weights`), so a 70B target is read once."""
    bundle = read_bundle(bundle, config)
    bundle = replace(bundle, settings=bundle.settings.overridden(weight, filter))
    shapes = weight_shapes(bundle.path)
    check_vocab(bundle, shapes)
    if bundle.settings.assistant_format == "lora":
        return replace(bundle, lora=assistant_lora(bundle, shapes))
    check_full_assistant_shapes(bundle, shapes)
    return bundle


def check_model(model: str | Path, weight: float | None = None, filter: float | None = None) -> CheckedModel:
    """Reads the model's config.json once: preflight for a ULD bundle (its config names the ULD architecture); for a
    plain HF checkpoint (the target alone, a baseline, a retain model) its config, refusing ULD overrides it has
    nothing to apply to."""
    path = Path(model)
    if not path.is_dir():
        raise BundleError(f"model not found: {model} (expected a ULD bundle or an HF checkpoint directory)")
    if not (path / "config.json").is_file():
        raise BundleError(f"model not found: {model} has no config.json (expected a ULD bundle or an HF checkpoint)")
    config = read_json(path / "config.json", f"model {model}: config.json")
    if ARCHITECTURE in config.get("architectures", []):
        bundle = preflight(path, weight, filter, config)
        return CheckedModel(path, config, bundle)
    if weight is not None or filter is not None:
        raise BundleError(f"--weight/--filter apply to ULD bundles; {model} is a plain HF checkpoint")
    return CheckedModel(path, config)


def make_llm(
    model: str | Path | CheckedModel, weight: float | None = None, filter: float | None = None, **llm_kwargs: Any
):
    """A `vllm.LLM` serving ULD from a bundle, plain vLLM for a plain HF checkpoint; `model` is checked here (with
    the weight/filter overrides) unless check_model already did: then pass its result, which holds them."""
    from vllm import LLM

    if isinstance(model, CheckedModel):
        if weight is not None or filter is not None:
            raise TypeError("make_llm: a CheckedModel carries its weight/filter (give them to check_model)")
    else:
        model = check_model(model, weight, filter)
    kwargs = default_llm_kwargs(llm_kwargs)
    if model.bundle is None:
        with engine_errors_as_one_line():
            return LLM(model=str(model.path), **kwargs)

    if int(kwargs.get("pipeline_parallel_size", 1)) > 1:
        # ULDForCausalLM concatenates both streams' final hidden states, which intermediate pipeline ranks never hold.
        raise BundleError("pipeline parallelism is not supported for ULD bundles yet (use tensor_parallel_size)")
    settings = model.bundle.settings
    # An engine core in another process reads the bundle itself: the overrides travel in its config.
    overrides = dict(kwargs.pop("hf_overrides", None) or {}) | {
        "uld_weight": settings.weight,
        "uld_filter": settings.filter,
    }
    hand_over(model.bundle)
    try:
        with engine_errors_as_one_line():
            return LLM(model=str(model.path), hf_overrides=overrides, **kwargs)
    finally:  # taken by the model; left over only if the engine failed before building it, and then never reused
        take_handed_over(model.path)


@contextmanager
def engine_errors_as_one_line() -> Iterator[None]:
    """What vLLM refuses while building its engine config (a context longer than the model's, an unknown dtype, ...)
    reaches the user as one line naming the setting, instead of a 40-line pydantic traceback."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or e.title
        message = " ".join(str(first.get("msg", e)).split())
        raise UldError(f"vLLM refused the engine settings ({where}): {message}") from None


def shutdown_llm(llm) -> None:
    """Stop an engine now (idempotent). Left to the garbage collector, an in-process engine tears down vLLM's
    global parallel state whenever it happens to be collected: possibly after the next engine has started."""
    llm.llm_engine.engine_core.shutdown()
