"""The real-TOFU study's definition agrees with TOFU's own files, and its committed deltas stay small."""

from __future__ import annotations

import json

from uld_vllm import smollm2_tofu as study
from uld_vllm import tofu


def test_the_authors_are_tofus_own_splits():
    assert list(study.RETAIN_AUTHORS) == tofu.authors(tofu.rows("retain_perturbed"))
    for split, forgotten in study.FORGET_AUTHORS.items():
        assert list(forgotten) == tofu.authors(tofu.rows(split))
    models = study.model_authors()
    assert len(tofu.subset(models["target"])) == 600
    for split, forgotten in study.FORGET_AUTHORS.items():
        assert set(models[f"retain_{split}"]) == set(models["target"]) - set(forgotten)
    assert set(study.FORGET_AUTHORS["forget01"]) < set(study.FORGET_AUTHORS["forget05"])


def test_the_committed_study_is_whole_and_under_50_mb():
    size = sum(f.stat().st_size for f in study.ADAPTERS.rglob("*") if f.is_file())
    assert size < 50e6
    needed = ["target", f"retain_{study.ULD_SPLIT}", "assistant"]  # what the ULD bundle and the demo run
    for name in [*study.model_authors(), "assistant"]:
        if name in needed or (study.ADAPTERS / name).exists():
            assert (study.ADAPTERS / name / study.ADAPTER_FILE).is_file(), name
            assert json.loads((study.ADAPTERS / name / "adapter_config.json").read_text())["peft_type"] == "LORA"
    settings = study.study()["uld"]
    assert settings["weight"] < 0 and settings["split"] == study.ULD_SPLIT
