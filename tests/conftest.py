"""Shared fixtures: tiny ULD bundles built offline from a seed (uld_vllm.random_models), once per test session.

Every test directory (tests/, tests/engine/, tests/train/) sees these. A bundle fixture is the bundle directory;
its ingredients sit beside it: `bundle.parent / "target"` (HF checkpoint + tokenizer) and `bundle.parent /
"assistant"` (PEFT LoRA adapter or full K-layer checkpoint). Treat them as read-only: copy before editing.
"""

from __future__ import annotations

import os

# Before transformers/tokenizers are imported: no hub access, ever, and no tokenizer thread pools fighting the
# shared CPU (or warning after a fork).
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# In-process vLLM engine cores: exceptions reach the test directly and engines start faster. Must precede any vllm
# import; tests that need a separate engine process (vllm serve) set it back for their subprocess.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import random  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import torch_threads  # noqa: E402

from uld_vllm.random_models import build_random_bundle  # noqa: E402

SEED = 0


def _absl_leaves_pytest_streams_open() -> None:
    """vLLM's engine start reconfigures logging (dictConfig), which closes every handler ever made. absl's (imported
    by rouge_score) then closes its stream unless it is the *current* sys.stderr: under pytest that is the capture
    stream of whichever phase imported absl, and a test that starts the session's first engine under capsys closed
    pytest's own. Its stream is the real stderr instead, which absl never closes."""
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


_absl_leaves_pytest_streams_open()


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, so a failure reproduces when the test is run alone."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


@pytest.fixture(autouse=True)
def _engines_carry_the_vllm_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pytest -m "not vllm"` is the fast suite only if every test that starts an engine says so: an unmarked test
    that builds an engine core in this process fails. (Checked once vLLM is imported: engines need it imported.)"""
    if request.node.get_closest_marker("vllm") or "vllm.v1.engine.core" not in sys.modules:
        return
    core = sys.modules["vllm.v1.engine.core"].EngineCore

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a vLLM engine: mark it @pytest.mark.vllm")

    monkeypatch.setattr(core, "__init__", refuse)


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread for the module (`helpers.torch_threads`). Opt-in: `pytestmark =
    pytest.mark.usefixtures("single_torch_thread")`."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray cluster for the module; the commands join it and leave it running. Skipped without Ray
    (and Ray Data, which uld-batch's pool needs: the `ray` extra installs both)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    yield
    ray.shutdown()


BundleFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory: pytest.TempPathFactory) -> BundleFactory:
    """bundle_factory(family=, assistant=, filter=, weight=, layers=, assistant_layers=, tie_word_embeddings=,
    hidden=, seed=, min_keep=) -> bundle directory, built once per distinct set of arguments for the whole session."""
    cache: dict[tuple, Path] = {}

    def build(
        family: str = "llama",
        assistant: str = "lora",
        filter: float = 0.0,
        weight: float = -0.8,
        layers: int = 4,
        assistant_layers: int = 2,
        tie_word_embeddings: bool = False,
        hidden: int = 128,
        seed: int = 0,
        min_keep: int | None = None,
    ) -> Path:
        key = (
            family,
            assistant,
            float(filter),
            float(weight),
            layers,
            assistant_layers,
            tie_word_embeddings,
            hidden,
            seed,
            min_keep,
        )
        if key not in cache:
            name = f"{family}-{assistant}-f{filter}-w{weight}-L{layers}-K{assistant_layers}-tie{int(tie_word_embeddings)}-h{hidden}-s{seed}-m{min_keep}"
            cache[key] = build_random_bundle(
                tmp_path_factory.mktemp(name),
                family=family,
                layers=layers,
                assistant_layers=assistant_layers,
                assistant=assistant,
                weight=weight,
                filter=filter,
                tie_word_embeddings=tie_word_embeddings,
                hidden=hidden,
                seed=seed,
                min_keep=min_keep,
            )
        return cache[key]

    return build


@pytest.fixture(scope="session")
def llama_bundle(bundle_factory: BundleFactory) -> Path:
    """Llama target (4 layers), LoRA assistant (K=2), relative-top filter 0.1 (the reference yaml's value)."""
    return bundle_factory(family="llama", assistant="lora", filter=0.1)


@pytest.fixture(scope="session")
def llama_full_bundle(bundle_factory: BundleFactory) -> Path:
    """Llama target, full-checkpoint assistant (K=2), no filter: the log_softmax-difference path."""
    return bundle_factory(family="llama", assistant="full", filter=0.0)


@pytest.fixture(scope="session")
def mistral_bundle(bundle_factory: BundleFactory) -> Path:
    """Mistral target, full-checkpoint assistant (K=2), filter 0.01 (the paper's evaluation scripts' value)."""
    return bundle_factory(family="mistral", assistant="full", filter=0.01)


@pytest.fixture(scope="session")
def qwen2_bundle(bundle_factory: BundleFactory) -> Path:
    """Qwen2 target with tied embeddings (no lm_head tensor on disk, q/k/v biases), LoRA assistant, filter 0.1."""
    return bundle_factory(family="qwen2", assistant="lora", filter=0.1, tie_word_embeddings=True)
