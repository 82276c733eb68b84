"""Engine replicas on Ray (uld-batch --ray, uld-eval --ray): joining the cluster, and a CPU host's memory shared out.

Both commands run one vLLM engine per replica, 1 CPU each (and 1 GPU each where there are GPUs); this module holds
what they share about it, so that both join a cluster and size their engines by the same rule.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# On CPU each replica gets this share of host memory for vLLM (KV cache included), divided among the replicas that may
# share a node; an explicit kv_cache_memory_bytes or gpu_memory_utilization in the engine arguments wins.
CPU_MEMORY_FOR_ALL_REPLICAS = 0.6
CPU_MEMORY_PER_REPLICA_MAX = 0.3  # the single-process default (uld_vllm.engine.default_llm_kwargs)
MEMORY_ARGS = frozenset({"kv_cache_memory_bytes", "gpu_memory_utilization"})


def replica_memory(engine_args: dict[str, Any], replicas: int, cuda: bool) -> dict[str, Any]:
    """The engine arguments a replica adds to `engine_args`: on CPU, its share of host memory (none on CUDA, where
    each replica has a GPU of its own, nor when `engine_args` sizes the memory itself)."""
    if cuda or MEMORY_ARGS & engine_args.keys():
        return {}
    return {"gpu_memory_utilization": min(CPU_MEMORY_PER_REPLICA_MAX, CPU_MEMORY_FOR_ALL_REPLICAS / replicas)}


@contextmanager
def ray_connection(address: str | None = None) -> Iterator[None]:
    """Ray for the block: the one already initialised, else the cluster at `address` (or $RAY_ADDRESS), else a local
    one started here; a Ray this call started is shut down on exit."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)  # None: Ray reads $RAY_ADDRESS
    else:
        ray.init(include_dashboard=False, log_to_driver=False)  # Ray counts the CPUs (cgroup limits included)
    try:
        yield
    finally:
        ray.shutdown()
