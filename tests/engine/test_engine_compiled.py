"""With torch.compile on (vLLM's default, unlike the other engine tests), ULD is still exactly the reference's, also
when the second engine start loads both backbones' compiled graphs from vLLM's cache."""

from __future__ import annotations

from engines import greedy, mixed_prompts
from helpers import engine

from uld_vllm.reference import ReferenceDecoder


def test_compiled_engine_matches_reference_cold_and_from_compile_cache(bundle_factory, tmp_path, monkeypatch):
    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))  # cold first start, warm second
    reference = ReferenceDecoder.from_bundle(bundle)
    prompts = mixed_prompts(12, reference.target.config.vocab_size, seed=4)
    want = reference.generate(prompts, 12)
    for start in ("cold", "from cache"):
        with engine(bundle, enforce_eager=False) as llm:
            assert greedy(llm, prompts, 12) == want, f"compiled engine ({start}) differs from the reference"
