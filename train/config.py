"""What a training run is: one dataclass the CLI fills and the loop reads, plus the one error type users see."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from uld_vllm.errors import UldError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainError(UldError):
    """Bad input or an unusable run; the message is one line for the user (the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result; a checkpoint stores it and `--resume` refuses a different one."""

    target: Path  # HF checkpoint (safetensors + tokenizer) holding the knowledge to unlearn
    forget: Path  # forget set D_f: parquet or JSON lines with question/answer columns (TOFU format), or tofu:NAME
    output: Path  # method uld: ULD bundle directory; baselines: HF checkpoint directory (replaced if it exists)
    retain: Path | None = None  # retain set D_r, same formats; every method but ga and npo needs one
    method: str = "uld"  # key of uld_train.methods.METHODS
    layers: int | None = None  # uld: assistant depth K; None = max(1, depth // 4) (reference: 8 of Llama-2-7B's 32)
    lora_r: int = 16  # LoRA rank (ULD reference config)
    lora_alpha: float = 32.0  # LoRA alpha: updates are scaled by alpha / r (reference: 32)
    lora_dropout: float = 0.05  # dropout on the LoRA input (reference: 0.05)
    lora: bool = False  # baselines only: train LoRA adapters (merged when saving) instead of every parameter
    retain_weight: float | None = (
        None  # weight of the retain term; None = the method's default (uld beta 5.0, else 1.0)
    )
    lr: float | None = None  # peak learning rate; None = 1e-3 with LoRA (ULD reference), 1e-5 full-parameter (TOFU)
    epochs: int = 5  # passes over the (augmented) forget set; TOFU's unlearning runs use 5
    stop_epoch: int | None = None  # stop after this epoch of the `epochs`-long schedule: its model is a whole run's
    batch_size: int = 8  # forget examples per micro-batch, with as many retain examples (reference: 8)
    grad_accum: int = 2  # micro-batches per optimizer step (reference: 2)
    max_length: int = 512  # tokens per example (question + answer); longer answers are cut at the end
    seed: int = 0  # seeds LoRA init, dropout and the data order: same seed, same weights
    dtype: str = "float32"  # weights' dtype (key of DTYPES)
    autocast: str | None = (
        None  # forward's compute dtype: None = bfloat16 on CUDA, none on CPU; "bfloat16" or "float32"
    )
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda" or "cuda:N"
    warmup_steps: int = 0  # optimizer steps of linear warmup before the cosine decay to 0
    grad_clip: float = 1.0  # max global gradient norm (0 disables clipping)
    weight_decay: float = 0.0  # AdamW decoupled weight decay (the reference's HF Trainer default: 0)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, about 30% slower
    save_every: int = 0  # write a resumable checkpoint every N optimizer steps (0: never)
    snapshot_every: int = 0  # write the model as it is every N epochs into OUTPUT.snapshots/epoch-E (0: never)
    resume: bool = False  # continue from the latest checkpoint in OUTPUT.train/ (start fresh if there is none)
    augment: bool = True  # use paraphrase / perturbed-answer columns when present (see uld_train.data)
    weight: float = -0.8  # uld: w written into the bundle (paper's evaluation scripts: -0.8)
    filter: float = 0.0  # uld: relative-top filter r written into the bundle (0 disables)
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        for name in ("target", "forget", "output", "retain"):  # API callers may pass str
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def work_dir(self) -> Path:
        """Checkpoints and the running log live beside the output: building a bundle replaces the output directory."""
        return self.output.with_name(self.output.name + ".train")

    @property
    def snapshot_dir(self) -> Path:
        """Models along training (for utility-vs-forgetting curves); kept after the run, unlike checkpoints."""
        return self.output.with_name(self.output.name + ".snapshots")

    def epoch_models(self) -> list[Path]:
        """The run's models in training order: its snapshots (epoch-E), then its output."""
        found = self.snapshot_dir.glob("epoch-*") if self.snapshot_dir.is_dir() else []
        return sorted(found, key=lambda p: int(p.name.split("-")[1])) + [self.output]


# Fields a resumed run may change without changing its result (device placement and bookkeeping only).
RESUMABLE_CHANGES = frozenset(
    {"resume", "save_every", "snapshot_every", "device", "progress", "gradient_checkpointing"}
)


# Fields newer than stamps already written (committed adapters, cached study runs), at the value that leaves a run as
# it was: a stamp records them only when set, so the runs made before them still match.
NEWER_FIELDS: dict[str, Any] = {"stop_epoch": None}


def stamp_fields(config: TrainConfig, text: bool = False) -> dict[str, Any]:
    """What decides a run, as a build stamp records it: every field but the progress bar, less a newer one left at
    its old value. Values as str with `text` (the studies' stamps), else paths as str (the committed assistant's)."""
    fields = {
        k: v for k, v in asdict(config).items() if k != "progress" and (k not in NEWER_FIELDS or v != NEWER_FIELDS[k])
    }
    return {k: str(v) if text or isinstance(v, Path) else v for k, v in fields.items()}
