"""Unlearning methods: each a small class that overrides only its loss, all listed in one registry (METHODS).

A method receives `model` (batch -> logits, with grad), the forget and retain micro-batches and, when it declares
`needs_reference`, `reference` (batch -> logits of the frozen target, no grad). It returns its loss terms; "loss"
is the one optimised, the others are logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from uld_train import losses
from uld_train.data import Batch

Forward = Callable[[Batch], torch.Tensor]  # batch -> (B, T, V) logits
Terms = dict[str, torch.Tensor]


class Method:
    """Base: flags the loop reads; subclasses set them and override `loss`."""

    trains_assistant: ClassVar[bool] = False  # True: train a K-layer LoRA assistant and write a ULD bundle
    needs_retain: ClassVar[bool] = True  # the loss reads a retain batch
    needs_reference: ClassVar[bool] = False  # the loss reads the frozen target's logits
    perturbed_as_retain: ClassVar[bool] = False  # the retain set's perturbed (wrong) answers join the retain side
    default_retain_weight: ClassVar[float] = 1.0  # TOFU / open-unlearning weigh their retain terms 1

    def __init__(self, retain_weight: float | None = None) -> None:
        self.retain_weight = self.default_retain_weight if retain_weight is None else retain_weight

    def loss(self, model: Forward, forget: Batch, retain: Batch | None, reference: Forward | None) -> Terms:
        raise NotImplementedError


class ULD(Method):
    """The assistant remembers D_f and knows nothing of D_r: NLL_forget + beta * KL(U || p) on retain.

    ULD_REFERENCE.md section 2 (reference config `remember+uniform`, beta = 5). The retain set's perturbed (wrong)
    answers join the retain side: more text on which the assistant must know nothing.
    """

    trains_assistant = True
    perturbed_as_retain = True
    default_retain_weight = 5.0

    def loss(self, model: Forward, forget: Batch, retain: Batch | None, reference: Forward | None) -> Terms:
        nll = losses.answer_nll(model(forget), forget.labels)
        uniform = losses.uniform_kl(model(retain), retain.attention_mask)
        return {"loss": nll + self.retain_weight * uniform, "forget_nll": nll, "retain_uniform_kl": uniform}


class GA(Method):
    """Gradient ascent on the forget answers (TOFU's first baseline)."""

    needs_retain = False

    def loss(self, model: Forward, forget: Batch, retain: Batch | None, reference: Forward | None) -> Terms:
        ascent = losses.gradient_ascent(model(forget), forget.labels)
        return {"loss": ascent, "forget_nll": -ascent}


class GAGD(Method):
    """GA plus gradient descent (plain NLL) on the retain answers."""

    def loss(self, model: Forward, forget: Batch, retain: Batch | None, reference: Forward | None) -> Terms:
        ascent = losses.gradient_ascent(model(forget), forget.labels)
        retain_nll = losses.answer_nll(model(retain), retain.labels)
        return {"loss": ascent + self.retain_weight * retain_nll, "forget_nll": -ascent, "retain_nll": retain_nll}


class GAKL(Method):
    """GA plus KL to the frozen target on retain text, which keeps the retain distribution, not just its answers."""

    needs_reference = True

    def loss(self, model: Forward, forget: Batch, retain: Batch | None, reference: Forward | None) -> Terms:
        ascent = losses.gradient_ascent(model(forget), forget.labels)
        kl = losses.kl_to_reference(model(retain), reference(retain), retain.attention_mask)
        return {"loss": ascent + self.retain_weight * kl, "forget_nll": -ascent, "retain_kl": kl}


class NPO(Method):
    """Negative preference optimisation on the forget answers against the frozen target (beta = 0.1)."""

    needs_retain = False
    needs_reference = True

    def loss(self, model: Forward, forget: Batch, retain: Batch | None, reference: Forward | None) -> Terms:
        logits = model(forget)
        logprob = losses.sequence_logprob(logits, forget.labels)
        npo = losses.npo(logprob, losses.sequence_logprob(reference(forget), forget.labels))
        return {"loss": npo, "npo": npo, "forget_nll": losses.answer_nll(logits.detach(), forget.labels)}


class NPOGD(NPO):
    """NPO plus gradient descent on the retain answers (the paper's strongest baseline)."""

    needs_retain = True

    def loss(self, model: Forward, forget: Batch, retain: Batch | None, reference: Forward | None) -> Terms:
        terms = super().loss(model, forget, retain, reference)
        retain_nll = losses.answer_nll(model(retain), retain.labels)
        return terms | {"loss": terms["loss"] + self.retain_weight * retain_nll, "retain_nll": retain_nll}


METHODS: dict[str, type[Method]] = {
    "uld": ULD,
    "ga": GA,
    "ga_gd": GAGD,
    "ga_kl": GAKL,
    "npo": NPO,
    "npo_gd": NPOGD,
}
