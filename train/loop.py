"""The training loop: data, models, optimizer, then one flat loop over optimizer steps, then the output.

Reads top to bottom like nanoGPT's train.py. Checkpoints hold trainable weights + optimizer + scheduler + RNG + step,
and the data order is fixed up front by the seed (data.batch_plan), so a resumed run ends with exactly the weights
of an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from uld_train.config import DTYPES, RESUMABLE_CHANGES, TrainConfig, TrainError
from uld_train.data import QA, Batch, batch_plan, collate, encode_all, read_qa, unique
from uld_train.methods import METHODS, Method
from uld_train.models import (
    add_lora,
    build_assistant_base,
    default_layers,
    enable_gradient_checkpointing,
    load_target,
    load_tokenizer,
    logits,
    target_config,
)
from uld_vllm.assistant import AssistantError, check_depth
from uld_vllm.bundle import BundleError, build_bundle, check_weight_filter
from uld_vllm.staging import staged_dir, staged_file
from uld_vllm.tofu import is_tofu_spec

LOG_NAME = "train_log.jsonl"
CONFIG_NAME = "train_config.json"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class TrainResult:
    output: Path  # the bundle (uld) or HF checkpoint (baselines) written
    steps: int  # optimizer steps of the whole run
    layers: int | None  # assistant depth K (uld only)
    final: dict[str, float]  # the last step's log record (loss terms, lr, grad norm)


def check_config(config: TrainConfig) -> Method:
    """Every cheap check, before any weight or data is read; returns the method object."""
    if config.method not in METHODS:
        raise TrainError(f"unknown method {config.method!r} (choose from {', '.join(METHODS)})")
    method = METHODS[config.method](config.retain_weight)
    if method.needs_retain and config.retain is None:
        raise TrainError(f"method {config.method} needs a retain set (--retain)")
    if config.layers is not None and not method.trains_assistant:
        raise TrainError(f"--layers applies to method uld only, not {config.method}")
    for name in ("epochs", "batch_size", "grad_accum", "lora_r"):
        if getattr(config, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    for name in ("warmup_steps", "save_every", "snapshot_every", "grad_clip", "weight_decay"):
        if getattr(config, name) < 0:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if config.stop_epoch is not None and not 1 <= config.stop_epoch <= config.epochs:
        raise TrainError(f"--stop-epoch must be in [1, --epochs={config.epochs}], got {config.stop_epoch}")
    if config.max_length < 2:
        raise TrainError(f"--max-length must be >= 2, got {config.max_length}")
    if config.lr is not None and not config.lr > 0:
        raise TrainError(f"--lr must be > 0, got {config.lr}")
    if not 0.0 <= config.lora_dropout < 1.0:
        raise TrainError(f"--lora-dropout must be in [0, 1), got {config.lora_dropout}")
    if config.autocast not in (None, "float32", "bfloat16"):
        raise TrainError(f"--autocast must be float32 or bfloat16, got {config.autocast!r}")
    if config.dtype not in DTYPES:
        raise TrainError(f"unknown --dtype {config.dtype!r} (choose from {', '.join(DTYPES)})")
    try:
        check_weight_filter(config.weight, config.filter)
    except BundleError as e:
        raise TrainError(str(e)) from None
    target, output = config.target.resolve(), config.output.resolve()
    if output == target or target in output.parents:
        raise TrainError(f"output {config.output} must lie outside the target checkpoint {config.target}")
    return method


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"unknown --device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise TrainError(f"unsupported --device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name} requested but CUDA is not available")
    return device


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor: linear warmup (never 0, as nanoGPT), then cosine decay that reaches 0 just after the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def config_record(config: TrainConfig) -> dict:
    """JSON-ready config with absolute paths, so a resume from another working directory still compares equal
    (a tofu: spec stays as written: it names the same rows from anywhere)."""
    return {
        k: (str(v) if is_tofu_spec(v) else str(v.resolve())) if isinstance(v, Path) else v
        for k, v in asdict(config).items()
    }


def training_pairs(config: TrainConfig, method: Method) -> tuple[list[QA], list[QA]]:
    """What the run trains on: forget pairs (+ paraphrases); retain pairs (+ their perturbed answers where the method
    wants ignorance); method is check_config's. The forget file's perturbed answers are never trained on: TOFU's
    truth ratio evaluates those."""
    forget_set = read_qa(config.forget, "forget set")
    retain_set = read_qa(config.retain, "retain set") if config.retain is not None else None
    forget_pairs = forget_set.pairs + (forget_set.paraphrased if config.augment else [])
    retain_pairs = []
    if retain_set is not None and method.needs_retain:
        retain_pairs = retain_set.pairs
        if config.augment and method.perturbed_as_retain:
            retain_pairs = retain_pairs + retain_set.perturbed
    return unique(forget_pairs), unique(retain_pairs)


def train(config: TrainConfig) -> TrainResult:
    """Train one method end to end and write its output; raises TrainError on bad input."""
    method = check_config(config)
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    lora = method.trains_assistant or config.lora
    lr = config.lr if config.lr is not None else (1e-3 if lora else 1e-5)

    # ---- target and assistant depth: fail on a bad target or K before reading any data
    depth = target_config(config.target).num_hidden_layers
    layers = None
    if method.trains_assistant:
        layers = check_depth(config.layers if config.layers is not None else default_layers(depth), depth)

    tokenizer = load_tokenizer(config.target)
    forget_pairs, retain_pairs = training_pairs(config, method)
    forget = encode_all(tokenizer, forget_pairs, config.max_length)
    retain = encode_all(tokenizer, retain_pairs, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    # ---- models: the seed fixes LoRA's init; a resumed run overwrites weights and RNG from its checkpoint
    torch.manual_seed(config.seed)
    if method.trains_assistant:
        base = build_assistant_base(config.target, layers, dtype)
    else:
        base = load_target(config.target, dtype)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(base, lora)
    model = add_lora(base, config.lora_r, config.lora_alpha, config.lora_dropout) if lora else base
    model.to(device).train()
    reference = None
    if method.needs_reference and not lora:  # with LoRA the frozen target is the model with its adapter disabled
        reference = load_target(config.target, dtype).to(device).eval().requires_grad_(False)

    def model_logits(batch: Batch) -> torch.Tensor:
        return logits(model, batch)

    @torch.no_grad()
    def reference_logits(batch: Batch) -> torch.Tensor:
        if reference is not None:
            return logits(reference, batch)
        with model.disable_adapter():
            return logits(model, batch)

    # ---- optimizer and schedule over the whole plan
    plan = batch_plan(len(forget), len(retain), config.batch_size, config.grad_accum, config.epochs, config.seed)
    steps_per_epoch = len(plan) / config.epochs
    # The schedule spans every epoch; a run stopped early ends where a whole run's snapshot of that epoch is taken.
    stop = len(plan) if config.stop_epoch is None else round(steps_per_epoch * config.stop_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, len(plan)))

    # ---- resume from the latest checkpoint, or start a fresh work directory
    work = config.work_dir
    sizes = {"forget_examples": len(forget), "retain_examples": len(retain)}
    checkpoint = latest_checkpoint(work) if config.resume else None
    start = 0
    if checkpoint is not None:
        start = load_checkpoint(checkpoint, model, optimizer, scheduler, config, sizes)
        keep_log_until(work / LOG_NAME, start)
    else:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(config.snapshot_dir, ignore_errors=True)
        work.mkdir(parents=True)
    (work / CONFIG_NAME).write_text(
        json.dumps(config_record(config) | sizes | {"lr_used": lr, "layers_used": layers}, indent=2) + "\n"
    )

    # ---- the loop: one iteration = one optimizer step over grad_accum micro-batches
    # By default autocast only on CUDA: bf16 matmuls are emulated (6x slower) on CPUs without avx512_bf16 or AMX.
    use_bf16 = config.autocast == "bfloat16" or (config.autocast is None and device.type == "cuda")
    bar = tqdm(total=stop, initial=start, desc=f"uld-train {config.method}", disable=not config.progress)
    began = time.perf_counter()
    record: dict[str, float] = {}
    with (work / LOG_NAME).open("a") as log:
        for step in range(start, stop):
            micro_batches = plan[step]
            terms_mean: dict[str, float] = {}
            for forget_index, retain_index in micro_batches:
                forget_batch = collate([forget[i] for i in forget_index], pad_id).to(device)
                retain_batch = collate([retain[i] for i in retain_index], pad_id).to(device) if retain_index else None
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    terms = method.loss(model_logits, forget_batch, retain_batch, reference_logits)
                (terms["loss"] / len(micro_batches)).backward()  # mean over the step's micro-batches
                for name, value in terms.items():
                    terms_mean[name] = terms_mean.get(name, 0.0) + value.item() / len(micro_batches)
            if not math.isfinite(terms_mean["loss"]):
                raise TrainError(f"loss is {terms_mean['loss']} at step {step + 1}; lower --lr or use --dtype float32")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
            step_lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            record = {"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4), "lr": step_lr}
            record |= terms_mean | {"grad_norm": float(grad_norm), "elapsed_s": round(time.perf_counter() - began, 3)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms_mean.items()})
            if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < stop:
                save_checkpoint(work, step + 1, model, optimizer, scheduler, config, sizes)
            snapshot_steps = round(steps_per_epoch) * config.snapshot_every
            if config.snapshot_every and (step + 1) % snapshot_steps == 0 and step + 1 < stop:
                epoch = (step + 1) // round(steps_per_epoch)
                write_model(model, config.snapshot_dir / f"epoch-{epoch}", config, layers, lora, tokenizer, work)
    bar.close()

    # ---- output: a ULD bundle over the unmerged adapter, or a plain HF checkpoint for the baselines
    write_model(model, config.output, config, layers, lora, tokenizer, work)
    for name in (LOG_NAME, CONFIG_NAME):
        shutil.copy2(work / name, config.output / name)
    shutil.rmtree(work)  # checkpoints only serve to resume an unfinished run
    return TrainResult(output=config.output, steps=stop, layers=layers, final=record)


def write_model(
    model, output: Path, config: TrainConfig, layers: int | None, lora: bool, tokenizer, work: Path
) -> None:
    """The run's product at this point: a ULD bundle over the unmerged adapter, or a plain HF checkpoint.

    Called at the end and for each snapshot; never changes `model` (a LoRA baseline is merged in a copy).
    """
    if layers is not None:  # the method trains an assistant
        adapter_dir = work / "adapter"
        model.save_pretrained(adapter_dir)
        try:
            build_bundle(
                config.target, adapter_dir, output, config.weight, config.filter, layers=layers, link_target=True
            )
        except (BundleError, AssistantError) as e:
            raise TrainError(str(e)) from None
        return
    final_model = copy.deepcopy(model).merge_and_unload() if lora else model
    with staged_dir(output) as staging:
        final_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


# ------------------------------------------------------------------------------------------------ checkpoints


def latest_checkpoint(work: Path) -> Path | None:
    found = sorted((work / CHECKPOINTS).glob("step-*.pt"))
    return found[-1] if found else None


def save_checkpoint(work: Path, step: int, model, optimizer, scheduler, config: TrainConfig, sizes: dict) -> Path:
    """Everything the next step depends on, written atomically; older checkpoints are then removed."""
    state = {
        "step": step,
        "config": config_record(config),
        "sizes": sizes,
        "trainable": {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    directory = work / CHECKPOINTS
    directory.mkdir(exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    staged_file(path, lambda partial: torch.save(state, partial))  # never a truncated "latest" checkpoint
    for old in directory.glob("step-*.pt"):
        if old != path:
            old.unlink()
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, config: TrainConfig, sizes: dict) -> int:
    """Restore a checkpoint into freshly built objects; returns its step. Refuses one written by a different run."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved, current = state["config"], config_record(config)
    for key in sorted(set(saved) | set(current)):
        if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key):
            raise TrainError(
                f"cannot resume from {path}: it was trained with {key}={saved.get(key)!r}, this run has {current.get(key)!r}"
            )
    if state["sizes"] != sizes:
        raise TrainError(f"cannot resume from {path}: the data changed ({state['sizes']} then, {sizes} now)")
    params = dict(model.named_parameters())
    if set(state["trainable"]) != {name for name, p in params.items() if p.requires_grad}:
        raise TrainError(f"cannot resume from {path}: it holds other parameters than this run trains")
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


def keep_log_until(path: Path, step: int) -> None:
    """Drop log records past the checkpoint: the resumed run writes those steps again."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))
