"""Ray's own `ray.data.llm` vLLM processor serves a ULD bundle with no uld code: the plugin makes it a vLLM model."""

from __future__ import annotations

import pytest
from helpers import ENGINE_KWARGS

from uld_vllm.reference import ReferenceDecoder

pytestmark = pytest.mark.vllm

PROMPTS = ["Who wrote the book", "Where was the author born", "The city of", "What genre does the novel"]


@pytest.mark.ray
def test_ray_data_llm_processor_gives_the_reference_uld_greedy_tokens(bundle_factory, ray_cluster):
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoTokenizer

    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    config = vLLMEngineProcessorConfig(
        model_source=str(bundle),
        engine_kwargs=ENGINE_KWARGS | {"max_model_len": 128},
        placement_group_config={"bundles": [{"CPU": 1}]},
        log_engine_metrics=False,  # else the actor needs ray.serve for its metrics
        concurrency=1,
        batch_size=4,
        chat_template_stage=False,  # plain text prompts, tokenized by Ray's stage with the bundle's tokenizer
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {"prompt": row["prompt"], "sampling_params": {"temperature": 0.0, "max_tokens": 8}},
        postprocess=lambda row: {"prompt": row["prompt"], "tokens": list(row["generated_tokens"])},
    )
    rows = processor(ray.data.from_items([{"prompt": p} for p in PROMPTS])).take_all()
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    got = {row["prompt"]: row["tokens"] for row in rows}
    want = ReferenceDecoder.from_bundle(bundle).generate(
        [tokenizer(p).input_ids for p in PROMPTS], 8, eos_token_id=tokenizer.eos_token_id
    )
    assert [got[p] for p in PROMPTS] == want
