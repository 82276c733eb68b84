"""The real TOFU sized for 2 cores: SmolLM2-135M-Instruct fine-tuned on 32 of TOFU's authors, as committed deltas.

The study (rebuilt by `uld-tofu build`, see uld_train.tofu_study) fine-tunes the pretrained model with LoRA on the 20
authors that TOFU's `retain_perturbed` covers plus forget05's 10 authors (600 QA): the target. Each retain model gets
the same recipe without its forget set's authors. A ULD assistant is trained to forget forget05. Only the adapters
are in the repository (uld_vllm/smollm2-tofu/, float16); `assemble()` merges them with the fetched base into the
cache, so a fresh clone runs exactly the models the study evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

from uld_vllm import stamps
from uld_vllm.errors import UldError
from uld_vllm.fetch import MARKER as FETCHED
from uld_vllm.fetch import cache_dir, model_dir
from uld_vllm.staging import staged_dir

BASE = "smollm2-135m-instruct"
MERGED = "merged.json"  # the stamp of a merged model: base pin and adapter hash
ADAPTERS = Path(__file__).parent / "smollm2-tofu"  # the committed deltas and study.json (bundle settings, recipe)
ADAPTER_FILE = "adapter_model.safetensors"
RETAIN_AUTHORS = tuple(range(20))  # the authors of TOFU's retain_perturbed (rows 0-399 of full)
FORGET_AUTHORS = {"forget01": (198, 199), "forget05": tuple(range(190, 200))}  # the last 1% / 5% of full's 200
ULD_SPLIT = "forget05"  # the forget set the committed assistant forgets


def model_authors() -> dict[str, tuple[int, ...]]:
    """Model name -> the authors it is fine-tuned on: the target knows all 32, each retain model lacks its forget set."""
    everyone = RETAIN_AUTHORS + FORGET_AUTHORS["forget05"]
    models = {"target": everyone}
    for split, forgotten in FORGET_AUTHORS.items():
        models[f"retain_{split}"] = tuple(a for a in everyone if a not in forgotten)
    return models


def base_dir() -> Path:
    """The fetched base checkpoint; one line telling how to get it where setup has not fetched it."""
    base = model_dir(BASE)
    if not (base / FETCHED).is_file():
        raise UldError(f"the base model {BASE} is not fetched: run `uld-model fetch {BASE}` (make setup does)")
    return base


def merge_adapter(base: Path, adapter: Path, output: Path) -> Path:
    """base + a LoRA adapter as a plain float32 HF checkpoint (what transformers and vLLM load); reused when the
    same base and adapter made it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stamp = {"base": json.loads((base / FETCHED).read_text()), "adapter_sha256": stamps.sha256(adapter / ADAPTER_FILE)}
    if stamps.matching(output / MERGED, stamp):
        return output
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with staged_dir(output) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(staging)
        stamps.write(staging / MERGED, stamp)
    return output


def study() -> dict:
    """study.json: the recipe, the ULD bundle's settings and what the rebuild measured."""
    path = ADAPTERS / "study.json"
    if not path.is_file():
        raise UldError(f"the real-TOFU study is missing at {ADAPTERS} (rebuild it: uld-tofu build)")
    return json.loads(path.read_text())


def assemble(names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """The study's models in the cache, merged from the committed adapters: model name -> its HF checkpoint, and
    "uld" -> the ULD bundle (the target plus the assistant that forgets ULD_SPLIT); `names` picks some (default all)."""
    settings = study()["uld"]
    names = tuple(model_authors()) + ("uld",) if names is None else names
    unknown = sorted(set(names) - set(model_authors()) - {"uld"})
    if unknown:
        raise UldError(f"unknown study model(s) {', '.join(unknown)} (the study has {', '.join(model_authors())}, uld)")
    base, root = base_dir(), cache_dir() / "smollm2-tofu"
    merged = [name for name in model_authors() if name in names or (name == "target" and "uld" in names)]
    needed = merged + (["assistant"] if "uld" in names else [])
    missing = [name for name in needed if not (ADAPTERS / name / ADAPTER_FILE).is_file()]
    if missing:
        raise UldError(f"the committed study lacks {', '.join(missing)} in {ADAPTERS} (rebuild it: uld-tofu build)")
    models = {name: merge_adapter(base, ADAPTERS / name, root / name) for name in merged}
    if "uld" not in names:
        return models
    bundle = root / "uld"
    stamp = {"target": json.loads((models["target"] / MERGED).read_text()), **settings}
    stamp["assistant_sha256"] = stamps.sha256(ADAPTERS / "assistant" / ADAPTER_FILE)
    marker = root / "uld.json"
    if not (stamps.matching(marker, stamp) and (bundle / "config.json").is_file()):
        from uld_vllm.bundle import build_bundle

        build_bundle(
            models["target"],
            ADAPTERS / "assistant",
            bundle,
            weight=settings["weight"],
            filter=settings["filter"],
            link_target=True,
        )
        stamps.write(marker, stamp)
    return models | {"uld": bundle}
