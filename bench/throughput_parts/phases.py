"""Each phase of a run in fresh processes, its result saved as it ends so that --resume can reuse it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from tqdm import tqdm

# The script each worker process runs (its --worker flag): bench/throughput.py.
ENTRY = Path(__file__).parent.parent / "throughput.py"


def measure(worker: str, spec: dict, cache: Path | None = None) -> dict:
    """Run one worker in a fresh process (vLLM's compile cache under `cache`); its JSON result is stdout's last line.
    The long phases' stderr (their progress bars; vLLM is quiet there) is relayed as it comes: the engines' phase runs
    for half an hour. An engine start's is kept back (its progress is the caller's bar) and shown if it fails."""
    command = [sys.executable, str(ENTRY), "--worker", worker, "--spec", json.dumps(spec)]
    env = os.environ | ({"VLLM_CACHE_ROOT": str(cache)} if cache else {})
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as process:
        tail = bytearray()  # the last 4000 bytes, for the error message

        def relay() -> None:
            for chunk in iter(lambda: process.stderr.read1(4096), b""):
                if not worker.startswith("start:"):
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                tail.extend(chunk)
                del tail[:-4000]

        relaying = threading.Thread(target=relay, daemon=True)
        relaying.start()
        stdout = process.stdout.read().decode()
        process.wait()
        relaying.join()
    if process.returncode != 0:
        raise RuntimeError(f"{worker} failed:\n{tail.decode(errors='replace')}")
    return json.loads(stdout.strip().splitlines()[-1])


class Phases:
    """Each finished phase's result, saved under the work folder as it ends: `--resume` reuses those an earlier run
    of the same spec finished (a full run takes over an hour; a killed one should not start over). A phase's file is
    named by its spec's digest too, so a partial run (other systems, repeats) never overwrites a full run's."""

    def __init__(self, work: Path, spec: dict, resume: bool) -> None:
        self.folder, self.spec, self.resume = work / "phases", spec, resume
        self.digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def run(self, name: str, measure_phase, *args) -> dict:
        path = self.folder / f"{name}-{self.digest}.json"
        if self.resume and path.exists():
            saved = json.loads(path.read_text())
            if saved["spec"] == self.spec:
                print(f"{name}: reusing {path}", flush=True)
                return saved["result"]
        result = measure_phase(*args)
        self.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"spec": self.spec, "result": result}))
        return result


def start_key(spec: dict) -> dict:
    """What an engine start depends on (start_engine, start_worker): the key its saved phase is reused by."""
    return {key: spec[key] for key in ("target", "bundle", "vocab", "dtype", "kv_cache_bytes", "huge_pages")} | {
        "max_batch": max(spec["batch_sizes"])
    }


def measure_start(system: str, spec: dict, work: Path) -> dict:
    """In fresh processes: a cold start (empty compile cache), then a warm one (the cache it left), which also
    measures the peak memory of the largest batch's prefill."""
    import shutil

    cache = work / "vllm-cache" / system
    shutil.rmtree(cache, ignore_errors=True)
    cold = measure(f"start:{system}", spec, cache)
    warm = measure(f"start:{system}", spec | {"measure_memory": True}, cache)
    return warm | {"start_cold_seconds": cold["start_seconds"]}


def measure_start_rounds(systems: list[str], spec: dict, work: Path, cold: bool, rounds: int) -> dict[str, list[float]]:
    """More starts (each in a fresh process), the systems taking turns for `rounds` rounds: single starts vary widely
    between processes (bench/results/README.md), so one start per system says little. Warm: with the compile cache
    measure_start left; cold: each start empties it first (and leaves a fresh one behind)."""
    import shutil

    samples: dict[str, list[float]] = {system: [] for system in systems}
    kind = "cold" if cold else "warm"
    for _ in tqdm(range(rounds), desc=f"{kind} starts, interleaved", unit="round"):
        for system in systems:
            cache = work / "vllm-cache" / system
            if cold:
                shutil.rmtree(cache, ignore_errors=True)
            samples[system].append(measure(f"start:{system}", spec, cache)["start_seconds"])
    return samples
