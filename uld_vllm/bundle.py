"""The ULD bundle: one directory every uld tool (vLLM engine, reference decoder, batch, eval) consumes.

    BUNDLE/config.json            the target's HF config, plus architectures = ["ULDForCausalLM"] and a "uld" section
    BUNDLE/*.safetensors          the target's weights (copied, or symlinked with --link-target)
    BUNDLE/tokenizer*, ...        the target's tokenizer files (vLLM and transformers read them from here)
    BUNDLE/assistant/             either "full": config.json + model.safetensors holding only layers 0..K-1
                                  or "lora":  adapter_config.json + adapter_model.safetensors (PEFT, unmerged)

Embeddings, final norm and LM head are never stored for the assistant: ULD's assistant shares them with the
target, and the builder refuses a full assistant whose copies differ.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from uld_vllm.assistant import (
    AssistantError,
    LoraPair,
    adapter_depth,
    assistant_config,
    check_adapter,
    check_depth,
    check_family,
    check_finite,
    layer_index,
    merge_lora,
    read_adapter_config,
    read_tensors,
    safetensors_files,
)
from uld_vllm.errors import UldError, command
from uld_vllm.staging import staged_dir

ARCHITECTURE = "ULDForCausalLM"
ASSISTANT_DIR = "assistant"
FORMAT_VERSION = 1
# Files a tokenizer may consist of; copied from the target so vLLM finds them in the bundle.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


class BundleError(UldError):
    """A bundle (or its ingredients) is unusable; the message is one line naming the problem."""


def check_min_keep(min_keep: int | None) -> None:
    if min_keep is not None and (isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1):
        raise BundleError(f"uld.min_keep must be a whole number >= 1 (or absent), got {min_keep!r}")


@dataclass(frozen=True)
class ULDSettings:
    """The bundle's "uld" config section."""

    assistant_layers: int  # K: the assistant is the target's first K decoder layers (paper: 8 of Llama-2-7B's 32)
    weight: float = -0.8  # w in l_target + w * l_assistant; negative (paper's evaluation scripts: -0.8)
    filter: float = 0.0  # relative-top filter r on the target (0 disables; paper: 0.01 .. 0.1)
    assistant_format: Literal["full", "lora"] = "lora"  # how BUNDLE/assistant/ stores the K layers
    version: int = FORMAT_VERSION
    # The filter's floor of kept tokens: None is the paper's int(r * V); DoLa's own is 1 (uld_vllm.combine).
    min_keep: int | None = None

    def overridden(self, weight: float | None = None, filter: float | None = None) -> ULDSettings:
        """These settings with a run's weight/filter (None keeps the bundle's), checked when anything changed."""
        if weight is None and filter is None:
            return self
        weight = self.weight if weight is None else weight
        filter = self.filter if filter is None else filter
        return replace(self, weight=weight, filter=filter).validated()

    def validated(self) -> ULDSettings:
        check_weight_filter(self.weight, self.filter)
        check_min_keep(self.min_keep)
        if self.assistant_format not in ("full", "lora"):
            raise BundleError(f"uld.assistant_format must be 'full' or 'lora', got {self.assistant_format!r}")
        if self.version != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {self.version} is not supported (this uld reads {FORMAT_VERSION})"
            )
        return self


def check_weight_filter(weight: float, filter: float) -> None:
    if not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise BundleError(f"ULD weight must be a finite number, got {weight!r}")
    if not isinstance(filter, (int, float)) or not 0.0 <= filter < 1.0:
        raise BundleError(f"ULD filter must be in [0, 1), got {filter!r}")


@dataclass(frozen=True)
class Bundle:
    path: Path
    config: dict  # the bundle's config.json
    settings: ULDSettings  # the "uld" section, with a run's weight/filter overrides once preflight has applied them
    # A LoRA assistant's pairs once checked against the target (preflight): what the engine and the reference load,
    # so the adapter is read once per process. None until checked (or for a full assistant).
    lora: dict[str, LoraPair] | None = field(default=None, compare=False, repr=False)

    @property
    def assistant_dir(self) -> Path:
        return self.path / ASSISTANT_DIR

    @property
    def num_layers(self) -> int:
        return self.config["num_hidden_layers"]

    def check_same_target(self, other: Bundle) -> None:
        """Refuse `other` in an engine serving this bundle unless it is another assistant (same K and format) over
        the same target weights: the same files, as bundles linked to one target (uld-train's snapshots) have."""
        if (other.settings.assistant_layers, other.settings.assistant_format) != (
            self.settings.assistant_layers,
            self.settings.assistant_format,
        ):
            raise BundleError(
                f"{other.path} has a {other.settings.assistant_format} assistant of K={other.settings.assistant_layers}"
                f"; the engine serves K={self.settings.assistant_layers} ({self.settings.assistant_format})"
            )
        if _target_files(other.path) != _target_files(self.path):
            raise BundleError(f"{other.path} is over other target weights than {self.path} (not the same files)")


def _target_files(path: Path) -> list[Path]:
    return [file.resolve() for file in sorted(path.glob("*.safetensors"))]


def read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise BundleError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{what} is not valid JSON: {path} ({e.msg} at line {e.lineno})") from None


def read_bundle(path: str | Path, config: dict | None = None) -> Bundle:
    """Open and validate a bundle's metadata (cheap: reads no weights); `config`: its config.json, if already read."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"ULD bundle directory not found: {path}")
    config = read_json(path / "config.json", "bundle config") if config is None else config
    if ARCHITECTURE not in config.get("architectures", []) or "uld" not in config:
        raise BundleError(
            f"{path} is not a ULD bundle (config.json lacks architectures [{ARCHITECTURE!r}] and a 'uld' section)"
        )
    try:
        settings = ULDSettings(**config["uld"]).validated()
        check_family(config)
        check_depth(settings.assistant_layers, config["num_hidden_layers"])
        safetensors_files(path)
    except TypeError as e:
        raise BundleError(f"bad 'uld' section in {path}/config.json: {e}") from None
    except AssistantError as e:
        raise BundleError(str(e)) from None
    marker = "adapter_config.json" if settings.assistant_format == "lora" else "config.json"
    if not (path / ASSISTANT_DIR / marker).exists():
        raise BundleError(f"bundle assistant missing: {path / ASSISTANT_DIR / marker}")
    return Bundle(path=path, config=config, settings=settings)


VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")  # shared tensors with one row per token


def weight_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors headers only (no tensor data is read)."""
    shapes = {}
    for path in safetensors_files(directory):
        with safe_open(str(path), framework="pt") as f:
            shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    return shapes


def check_vocab(bundle: Bundle, shapes: dict[str, tuple[int, ...]]) -> None:
    """config.json's vocab_size against the embedding/LM-head rows and the tokenizer's largest id."""
    vocab = bundle.config["vocab_size"]
    for name in VOCAB_TENSORS:
        if name in shapes and shapes[name][0] != vocab:
            raise BundleError(f"vocab mismatch: config says {vocab} tokens, {name} has {shapes[name][0]} rows")
    ids = tokenizer_vocab(bundle.path)
    if ids and max(ids.values()) >= vocab:
        raise BundleError(
            f"vocab mismatch: the tokenizer has token id {max(ids.values())}, the model only {vocab} rows"
        )


def check_full_assistant_shapes(bundle: Bundle, shapes: dict[str, tuple[int, ...]]) -> None:
    """A full assistant's layers against the target's shapes (`shapes`), both from headers. Its weights' values are
    checked when the engine loads them. (A LoRA adapter is checked whole by assistant_lora: it is small.)"""
    own = _assistant_shapes(bundle, shapes)
    try:
        for name, shape in weight_shapes(bundle.assistant_dir).items():
            if name not in own:
                raise BundleError(f"assistant weight {name} has no counterpart in the target (bundle/target mismatch)")
            if shape != own[name]:
                raise BundleError(f"assistant weight {name} has shape {shape}, the target's {own[name]}")
    except AssistantError as e:
        raise BundleError(str(e)) from None


def _assistant_shapes(bundle: Bundle, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    layers = bundle.settings.assistant_layers
    return {n: s for n, s in shapes.items() if (i := layer_index(n)) is not None and i < layers}


def assistant_lora(bundle: Bundle, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, LoraPair]:
    """A LoRA bundle's adapter, checked against the target's first K layers (`shapes`: from the headers when None);
    the pairs preflight checked when the bundle carries them."""
    if bundle.lora is not None:
        return bundle.lora
    shapes = weight_shapes(bundle.path) if shapes is None else shapes
    try:
        return check_adapter(bundle.assistant_dir, _assistant_shapes(bundle, shapes))
    except AssistantError as e:
        raise BundleError(str(e)) from None


def assistant_layer_tensors(bundle: Bundle) -> dict[str, torch.Tensor]:
    """HF-named tensors of the assistant's decoder layers 0..K-1 (LoRA merged), without the shared tensors; what the
    engine loads, checked as it is read (a LoRA's base layers are the target's, checked as the target streams)."""
    layers = bundle.settings.assistant_layers

    def in_assistant(name: str) -> bool:
        index = layer_index(name)
        return index is not None and index < layers

    try:
        if bundle.settings.assistant_format == "lora":
            return merge_lora(read_tensors(bundle.path, in_assistant), assistant_lora(bundle))
        tensors = read_tensors(bundle.assistant_dir, in_assistant)
        for name, tensor in tensors.items():
            check_finite(name, tensor, "assistant")
        return tensors
    except AssistantError as e:
        raise BundleError(str(e)) from None


# A bundle preflight checked, handed to the engine that make_llm starts in this process (vLLM builds the model from
# a path, so the checked value travels beside it): the model takes it instead of reading and checking it again. An
# engine core in another process (vllm serve, VLLM_ENABLE_V1_MULTIPROCESSING=1) finds nothing and checks for itself.
_HANDED_OVER: dict[str, Bundle] = {}


def hand_over(bundle: Bundle) -> None:
    _HANDED_OVER[str(bundle.path.resolve())] = bundle


def take_handed_over(path: str | Path) -> Bundle | None:
    return _HANDED_OVER.pop(str(Path(path).resolve()), None)


# ----------------------------------------------------------------------------------------------------------- builder


def tokenizer_vocab(directory: Path) -> dict[str, int] | None:
    """token -> id from tokenizer.json (added tokens included); None without one."""
    path = directory / "tokenizer.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    vocab = dict(data.get("model", {}).get("vocab", {}))
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return vocab


def _check_tokenizers(target: Path, assistant: Path) -> None:
    ours, theirs = tokenizer_vocab(target), tokenizer_vocab(assistant)
    if ours is not None and theirs is not None and ours != theirs:
        diff = len(set(ours.items()) ^ set(theirs.items()))
        raise BundleError(
            f"assistant tokenizer in {assistant} differs from the target's ({diff} vocabulary entries differ)"
        )


def _check_full_assistant(target_dir: Path, target_config: dict, assistant_dir: Path) -> int:
    config = read_json(assistant_dir / "config.json", "assistant config")
    check_family(config, "assistant")
    if config["model_type"] != target_config["model_type"]:
        raise BundleError(
            f"assistant family {config['model_type']!r} differs from the target's {target_config['model_type']!r}"
        )
    if config["vocab_size"] != target_config["vocab_size"]:
        raise BundleError(
            f"vocab mismatch: target has {target_config['vocab_size']} tokens, assistant {config['vocab_size']}"
        )
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
        if config.get(key) != target_config.get(key):
            raise BundleError(f"assistant {key}={config.get(key)} differs from the target's {target_config.get(key)}")
    layers = check_depth(config["num_hidden_layers"], target_config["num_hidden_layers"])
    shared_target = read_tensors(target_dir, lambda n: layer_index(n) is None)
    shared_assistant = read_tensors(assistant_dir, lambda n: layer_index(n) is None)
    for name, tensor in shared_assistant.items():
        if name in shared_target and not torch.equal(tensor.to(shared_target[name].dtype), shared_target[name]):
            raise BundleError(
                f"assistant {name} differs from the target's: ULD shares embeddings, final norm and LM head"
            )
    return layers


def build_bundle(
    target: str | Path,
    assistant: str | Path,
    output: str | Path,
    weight: float = -0.8,
    filter: float = 0.0,
    layers: int | None = None,
    link_target: bool = False,
    min_keep: int | None = None,
) -> Bundle:
    """Assemble a bundle from a target HF checkpoint and an assistant (full K-layer HF checkpoint or PEFT LoRA)."""
    target, assistant, output = Path(target), Path(assistant), Path(output)
    check_weight_filter(weight, filter)  # refused before anything is read
    check_min_keep(min_keep)
    if not target.is_dir():
        raise BundleError(f"target checkpoint directory not found: {target}")
    if not assistant.is_dir():
        raise BundleError(f"assistant directory not found: {assistant}")
    target_config = read_json(target / "config.json", "target config")
    if "uld" in target_config:
        raise BundleError(f"target {target} is itself a ULD bundle; pass the plain target checkpoint")
    try:
        check_family(target_config)
        target_files = safetensors_files(target)
    except AssistantError as e:
        raise BundleError(str(e)) from None
    _check_tokenizers(target, assistant)
    if not (target / "tokenizer.json").exists() and not (target / "tokenizer.model").exists():
        raise BundleError(f"target {target} has no tokenizer files (tokenizer.json or tokenizer.model)")

    try:
        if (assistant / "adapter_config.json").exists():
            read_adapter_config(assistant)
            assistant_format = "lora"
            depth = adapter_depth(assistant)
            if layers is not None and layers < depth:
                raise BundleError(f"--layers {layers} is shallower than the adapter, which touches {depth} layers")
            layers = layers or depth
        elif (assistant / "config.json").exists():
            assistant_format = "full"
            depth = _check_full_assistant(target, target_config, assistant)
            if layers is not None and layers != depth:
                raise BundleError(f"--layers {layers} differs from the assistant checkpoint's {depth} layers")
            layers = depth
        else:
            raise BundleError(
                f"assistant {assistant} is neither a PEFT adapter (adapter_config.json) nor an HF checkpoint (config.json)"
            )
        check_depth(layers, target_config["num_hidden_layers"])
    except AssistantError as e:
        raise BundleError(str(e)) from None

    settings = ULDSettings(
        assistant_layers=layers,
        weight=float(weight),
        filter=float(filter),
        assistant_format=assistant_format,
        min_keep=min_keep,
    )
    # An unset min_keep is left out: bundles keep the section that uld releases before the option read.
    section = {k: v for k, v in asdict(settings).items() if not (k == "min_keep" and v is None)}
    with staged_dir(output) as staging:
        (staging / ASSISTANT_DIR).mkdir()
        config = dict(target_config, architectures=[ARCHITECTURE], uld=section)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for path in target_files + sorted(target.glob("*.safetensors.index.json")):
            if link_target:
                (staging / path.name).symlink_to(path.resolve())
            else:
                shutil.copy2(path, staging / path.name)
        for name in TOKENIZER_FILES:
            if (target / name).exists():
                shutil.copy2(target / name, staging / name)

        if assistant_format == "lora":
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(assistant / name, staging / ASSISTANT_DIR / name)
        else:
            tensors = read_tensors(assistant, lambda n: (i := layer_index(n)) is not None and i < layers)
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, str(staging / ASSISTANT_DIR / "model.safetensors")
            )
            from transformers import AutoConfig

            small = assistant_config(AutoConfig.from_pretrained(target), layers)
            (staging / ASSISTANT_DIR / "config.json").write_text(small.to_json_string())

        # Fails now, not at engine start, on NaN weights or a broken adapter; and before `output` is touched (an error
        # here removes the staging directory), so a refused build neither leaves a bundle behind nor destroys the one
        # already there.
        assistant_layer_tensors(read_bundle(staging))
    return read_bundle(output)


@command("uld-bundle")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="uld-bundle", description="Build a ULD bundle from a target and an assistant."
    )
    parser.add_argument("--target", required=True, help="target HF checkpoint directory (safetensors)")
    parser.add_argument(
        "--assistant", required=True, help="assistant: full K-layer HF checkpoint or PEFT LoRA adapter dir"
    )
    parser.add_argument("--output", required=True, help="bundle directory to create (replaced if it exists)")
    parser.add_argument("--weight", type=float, default=-0.8, help="ULD weight w (default -0.8, the paper's scripts)")
    parser.add_argument("--filter", type=float, default=0.0, help="relative-top filter r in [0, 1) (0 disables)")
    parser.add_argument("--layers", type=int, default=None, help="assistant depth K (default: inferred)")
    parser.add_argument("--link-target", action="store_true", help="symlink the target's weights instead of copying")
    parser.add_argument(
        "--min-keep",
        type=int,
        default=None,
        help="the filter's floor of kept tokens (default: the paper's int(filter * vocab); DoLa's own is 1)",
    )
    args = parser.parse_args(argv)
    bundle = build_bundle(
        args.target, args.assistant, args.output, args.weight, args.filter, args.layers, args.link_target, args.min_keep
    )
    s = bundle.settings
    print(
        f"uld-bundle: wrote {bundle.path} (K={s.assistant_layers}, {s.assistant_format} assistant, weight={s.weight}, filter={s.filter}"
        + ("" if s.min_keep is None else f", min_keep={s.min_keep}")
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
