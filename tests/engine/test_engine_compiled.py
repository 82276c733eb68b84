"""With torch.compile on (vLLM's default, unlike the other engine tests), ULD is still exactly the reference's, also
when an engine start loads compiled graphs from vLLM's cache, and when the shared-weight backbone and the merged
fallback's two backbones were compiled for the same bundle into the same cache."""

from __future__ import annotations

import pytest
from engines import greedy, mixed_prompts
from helpers import engine
from vllm.compilation.counter import compilation_counter

from uld_vllm.reference import ReferenceDecoder

pytestmark = pytest.mark.vllm


def _compiled(model) -> dict:
    backbone = model.backbone if model.shared else model.target.model
    return {"shared": model.shared, "compiled": not getattr(backbone, "do_not_compile", True)}


def test_compiled_engine_matches_reference_cold_and_from_compile_cache(bundle_factory, tmp_path, monkeypatch):
    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))  # cold first start, warm afterwards
    reference = ReferenceDecoder.from_bundle(bundle)
    prompts = mixed_prompts(12, reference.target.config.vocab_size, seed=4)
    want = reference.generate(prompts, 12)
    starts = [("shared, cold", True), ("merged, same cache", False), ("shared, from cache", True)]
    loads = []
    for start, shared in starts:
        loaded = compilation_counter.num_aot_artifacts_loaded
        with engine(bundle, enforce_eager=False, hf_overrides={"uld_share_weights": shared}) as llm:
            assert greedy(llm, prompts, 12) == want, f"compiled engine ({start}) differs from the reference"
            (layout,) = llm.apply_model(_compiled)
            assert layout == {"shared": shared, "compiled": True}, start
        loads.append(compilation_counter.num_aot_artifacts_loaded - loaded)
    assert loads == [0, 0, 1], "only the third start finds its graph in the cache, and it must load it (plugin fix)"
