"""uld-eval run --ray: replicas each evaluate every N-th example; the merged logs equal the single-process logs."""

from __future__ import annotations

import math

import pytest
from eval_data import write_eval_dir

from uld_vllm.eval.run import EvalSettings, evaluate


@pytest.mark.ray
@pytest.mark.vllm
def test_ray_replicas_give_the_single_process_logs(llama_bundle, tmp_path, ray_cluster):
    data = write_eval_dir(tmp_path / "data", {"forget": 5, "retain": 7, "real_authors": 3, "world_facts": 4})
    settings = dict(model=str(llama_bundle), data=str(data), dtype="float32", max_new_tokens=6, progress=False)
    engine = {"engine_args": {"kv_cache_memory_bytes": 32 << 20}}
    single = evaluate(EvalSettings(**settings, **engine))
    sharded = evaluate(EvalSettings(**settings, **engine, ray=True, num_replicas=2))
    assert sharded.logs.keys() == single.logs.keys()
    for name, log in single.logs.items():
        got = sharded.logs[name]
        assert list(got["avg_gt_loss"]) == list(log["avg_gt_loss"])  # every example once, in order
        assert got["generated_text"] == log["generated_text"]
        for key in ("avg_gt_loss", "avg_paraphrased_loss"):
            assert all(math.isclose(got[key][i], log[key][i], abs_tol=1e-5) for i in log[key]), (name, key)
    assert sharded.timings.scored_tokens == single.timings.scored_tokens
