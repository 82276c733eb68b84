"""The parts of bench/throughput.py; importing any of them sets the process's environment before torch loads."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's large tensors on transparent huge pages (madvise; every system alike, the HF reference too), as a tuned CPU
# deployment runs. It is no cure for the spread between identical engines (bench/results/README.md).
# Set THP_MEM_ALLOC_ENABLE=0 to measure without; the report records which (uld_vllm.machine.huge_pages).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from uld_vllm.engine import in_process_engine_core  # noqa: E402  (imports torch: after the huge-page setting)

in_process_engine_core()
