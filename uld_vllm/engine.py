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
from pathlib import Path
from typing import Any

import torch

from uld_vllm.bundle import (
    Bundle,
    BundleError,
    check_assistant_fits,
    check_vocab,
    check_weight_filter,
    read_bundle,
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


def default_llm_kwargs() -> dict[str, Any]:
    # On CPU, gpu_memory_utilization is the fraction of host memory given to vLLM (KV cache included).
    return {"dtype": default_dtype(), "gpu_memory_utilization": 0.85 if has_cuda() else 0.3}


def preflight(bundle: str | Path, weight: float | None = None, filter: float | None = None) -> Bundle:
    """The cheap checks that can fail before an engine starts: config, family, K, weight/filter, tensor shapes (from
    the safetensors headers), vocab, tokenizer, adapter. No weight data of the target is read here: NaN/inf are
    refused as vLLM streams the weights in (`ULDForCausalLM.load_weights`), so a 70B target is read once."""
    bundle = read_bundle(bundle)
    s = bundle.settings
    check_weight_filter(s.weight if weight is None else weight, s.filter if filter is None else filter)
    shapes = weight_shapes(bundle.path)
    check_vocab(bundle, shapes)
    check_assistant_fits(bundle, shapes)
    return bundle


def is_bundle(model: str | Path) -> bool:
    """A ULD bundle's config names the ULD architecture; anything else is served as a plain HF checkpoint."""
    import json

    from uld_vllm.bundle import ARCHITECTURE

    if not Path(model).is_dir():
        raise BundleError(f"model not found: {model} (expected a ULD bundle or an HF checkpoint directory)")
    config = Path(model) / "config.json"
    if not config.is_file():
        raise BundleError(f"model not found: {model} has no config.json (expected a ULD bundle or an HF checkpoint)")
    try:
        return ARCHITECTURE in json.loads(config.read_text()).get("architectures", [])
    except json.JSONDecodeError:
        raise BundleError(f"model {model}: config.json is not valid JSON") from None


def check_model(model: str | Path, weight: float | None = None, filter: float | None = None) -> dict[str, Any]:
    """preflight for a bundle; for a plain HF checkpoint (the target alone, a baseline, a retain model) its config,
    refusing ULD overrides it has nothing to apply to. Returns the model's config."""
    import json

    if is_bundle(model):
        return preflight(model, weight, filter).config
    if weight is not None or filter is not None:
        raise BundleError(f"--weight/--filter apply to ULD bundles; {model} is a plain HF checkpoint")
    return json.loads((Path(model) / "config.json").read_text())


def make_llm(
    bundle: str | Path,
    weight: float | None = None,
    filter: float | None = None,
    check: bool = True,
    **llm_kwargs: Any,
):
    """A `vllm.LLM` serving ULD from `bundle`, with weight/filter overrides passed as hf_overrides; plain vLLM when
    `bundle` is a plain HF checkpoint.

    check=False skips the checks for callers that already ran them (uld-batch checks once, before any replica starts).
    """
    from vllm import LLM

    if not is_bundle(bundle):
        if check:
            check_model(bundle, weight, filter)
        with engine_errors_as_one_line():
            return LLM(model=str(bundle), **(default_llm_kwargs() | llm_kwargs))

    if int(llm_kwargs.get("pipeline_parallel_size", 1)) > 1:
        # ULDForCausalLM concatenates both streams' final hidden states, which intermediate pipeline ranks never hold.
        raise BundleError("pipeline parallelism is not supported for ULD bundles yet (use tensor_parallel_size)")
    if check:
        preflight(bundle, weight, filter)
    overrides = dict(llm_kwargs.pop("hf_overrides", None) or {})
    if weight is not None:
        overrides["uld_weight"] = float(weight)
    if filter is not None:
        overrides["uld_filter"] = float(filter)
    kwargs = default_llm_kwargs() | llm_kwargs
    with engine_errors_as_one_line():
        return LLM(model=str(bundle), hf_overrides=overrides or None, **kwargs)


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
