"""The DPO loss family: one class per ``loss=`` option, each a thin shell over a pure function.

Every loss sees the summed completion log-probs of policy and reference for both responses of a
pair, their token counts, the pair's external scores (``chosen_reward``/``rejected_reward``), its
route (``sft``/``dpo``) and its weight, so rating-aware losses need nothing special from the data.

Conventions shared by all losses:

- ``logits`` is the DPO log-ratio margin D = (pi_c - ref_c) - (pi_r - ref_r), in nats.
- ``per_pair`` is unweighted. ``loss = sum(weight * per_pair) / B``: a weighted *sum* divided by
  the batch size, not by ``sum(weight)``. With unit weights it is the plain mean (TRL's
  reduction); a pair's weight keeps its absolute meaning (0.5 halves its gradient whatever its
  batch-mates weigh), and a batch of all-down-weighted pairs really does contribute less.
- Token counts are clamped to at least 1 before any division (as TRL does), so an empty
  completion gives a finite loss.
- Metrics are detached, unweighted batch means. Implicit rewards are beta * (pi - ref) with the
  loss's own ``beta``. ``kl_proxy`` is mean(pi_c - ref_c) over the chosen responses: the chosen
  responses are not samples of the policy, so it is only a proxy for KL(pi || ref) and can be
  negative; it is cheap and moves with the drift from the reference.
- Every loss except ``hybrid`` ignores ``route_sft``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from sweetspot.errors import ConfigError
from sweetspot.validation import non_negative, positive, require


@dataclass
class LossInputs:
    """One batch of B pairs; every tensor has shape [B]."""

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    chosen_reward: Tensor
    rejected_reward: Tensor
    route_sft: Tensor
    weight: Tensor

    @property
    def chosen_logratios(self) -> Tensor:
        return self.policy_chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self) -> Tensor:
        return self.policy_rejected_logps - self.ref_rejected_logps

    @property
    def logits(self) -> Tensor:
        return self.chosen_logratios - self.rejected_logratios


@dataclass
class LossOutput:
    loss: Tensor  # scalar, sum(weight * per_pair) / B
    per_pair: Tensor  # [B], unweighted
    metrics: dict[str, Tensor]  # detached scalars


# ---------------------------------------------------------------------------------------------
# The math, as pure functions of tensors (usable outside Lightning). All return [B].


def sigmoid_dpo(logits: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023); with label_smoothing eps > 0, conservative DPO (cDPO): the label
    is taken to be flipped with probability eps."""
    return (-(1 - label_smoothing) * F.logsigmoid(beta * logits)
            - label_smoothing * F.logsigmoid(-beta * logits))


def robust_dpo(logits: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024), TRL's form: an unbiased estimate of the clean loss under
    labels flipped with probability eps, hence the 1 / (1 - 2 eps) and the minus sign."""
    clean = -(1 - label_smoothing) * F.logsigmoid(beta * logits)
    flipped = -label_smoothing * F.logsigmoid(-beta * logits)
    return (clean - flipped) / (1 - 2 * label_smoothing)


def hinge_dpo(logits: Tensor, beta: float) -> Tensor:
    """SLiC-style hinge on the margin: zero once beta * D >= 1."""
    return torch.relu(1 - beta * logits)


def ipo(chosen_logratios: Tensor, rejected_logratios: Tensor, chosen_lengths: Tensor,
        rejected_lengths: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2024, Eq. 17) in TRL's form: per-token (length-normalised) log-ratios, so
    the squared loss and beta do not scale with completion length; regresses the margin to
    1 / (2 beta)."""
    delta = (chosen_logratios / chosen_lengths.clamp(min=1)
             - rejected_logratios / rejected_lengths.clamp(min=1))
    return (delta - 1 / (2 * beta)) ** 2


def sft_nll(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Mean token negative log-likelihood of the chosen response."""
    return -policy_chosen_logps / chosen_lengths.clamp(min=1)


def rpo(logits: Tensor, nll: Tensor, beta: float, alpha: float) -> Tensor:
    """RPO (Pang et al. 2024): DPO plus alpha times the chosen response's mean token NLL."""
    return sigmoid_dpo(logits, beta) + alpha * nll


def rating_dpo(logits: Tensor, rating_gap: Tensor, beta: float, beta_1: float) -> Tensor:
    """RDPO: -log sigmoid(beta * D - beta * rating_gap / beta_1). See ``RDPOLoss``."""
    return -F.logsigmoid(beta * logits - beta * rating_gap / beta_1)


def hybrid(logits: Tensor, nll: Tensor, route_sft: Tensor, beta: float,
           label_smoothing: float) -> Tensor:
    """MixDPO: the SFT loss (``nll``) where ``route_sft``, (c)DPO elsewhere; a hard switch."""
    return torch.where(route_sft.bool(), nll, sigmoid_dpo(logits, beta, label_smoothing))


# ---------------------------------------------------------------------------------------------
# The strategies: dataclasses whose fields are the YAML node of conf/loss/<option>.yaml.


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def common_metrics(inputs: LossInputs, beta: float) -> dict[str, Tensor]:
    """What every loss logs, with TRL's names where TRL has one."""
    with torch.no_grad():
        chosen = beta * inputs.chosen_logratios
        rejected = beta * inputs.rejected_logratios
        return {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/margin": (chosen - rejected).mean(),
            "rewards/accuracy": (chosen > rejected).to(chosen.dtype).mean(),
            "logps/chosen": inputs.policy_chosen_logps.mean(),
            "logps/rejected": inputs.policy_rejected_logps.mean(),
            "kl_proxy": inputs.chosen_logratios.mean(),
        }


def _label_smoothing_range(value: float) -> None:
    require(value is not None and 0 <= value < 0.5, "label_smoothing",
            f"must be in [0, 0.5), got {value}")


@dataclass(kw_only=True)
class PreferenceLoss:
    """Base of every loss: applies the per-pair weight and adds the common metrics.

    ``beta`` is on every loss, even those that do not use it in the objective, so the trainer
    can always log implicit rewards beta * (pi - ref).
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        positive("beta", self.beta)

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """The unweighted [B] loss and any extra metrics of this loss."""
        raise NotImplementedError

    def __call__(self, inputs: LossInputs) -> LossOutput:
        per_pair, extras = self.per_pair(inputs)
        loss = (inputs.weight.to(per_pair.dtype) * per_pair).sum() / per_pair.numel()
        metrics = common_metrics(inputs, self.beta)
        metrics.update({k: v.detach() for k, v in extras.items()})
        return LossOutput(loss=loss, per_pair=per_pair, metrics=metrics)


@dataclass(kw_only=True)
class DPOLoss(PreferenceLoss):
    """Sigmoid DPO, TRL's ``loss_type="sigmoid"``."""

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        return sigmoid_dpo(inputs.logits, self.beta), {}


@dataclass(kw_only=True)
class CDPOLoss(PreferenceLoss):
    """Conservative DPO: sigmoid DPO with label smoothing (TRL removed it from ``sigmoid`` in v0.29;
    this is the pre-0.29 formula)."""

    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _label_smoothing_range(self.label_smoothing)

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        return sigmoid_dpo(inputs.logits, self.beta, self.label_smoothing), {}


@dataclass(kw_only=True)
class RobustLoss(PreferenceLoss):
    """Robust DPO (Chowdhury et al. 2024), TRL's ``loss_type="robust"``; ``label_smoothing`` is the
    assumed label-flip rate."""

    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _label_smoothing_range(self.label_smoothing)

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        return robust_dpo(inputs.logits, self.beta, self.label_smoothing), {}


@dataclass(kw_only=True)
class HingeLoss(PreferenceLoss):
    """TRL's ``loss_type="hinge"``; 1 / beta is the margin at which the loss reaches zero."""

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        return hinge_dpo(inputs.logits, self.beta), {}


@dataclass(kw_only=True)
class IPOLoss(PreferenceLoss):
    """IPO with length-normalised log-ratios, TRL's ``loss_type="ipo"``; beta is IPO's tau."""

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        losses = ipo(inputs.chosen_logratios, inputs.rejected_logratios, inputs.chosen_lengths,
                     inputs.rejected_lengths, self.beta)
        return losses, {}


@dataclass(kw_only=True)
class SFTLoss(PreferenceLoss):
    """Mean token NLL of the chosen response; the rejected one is unused.

    Per pair, not pooled over the batch's tokens as TRL's ``sft`` is: every pair counts equally
    whatever its length (the two agree for a batch of one pair). ``beta`` only scales the logged
    implicit rewards.
    """

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        return sft_nll(inputs.policy_chosen_logps, inputs.chosen_lengths), {}


@dataclass(kw_only=True)
class RPOLoss(PreferenceLoss):
    """RPO: sigmoid DPO + alpha * mean token NLL of chosen (old TRL ``rpo_alpha``; in TRL 1.x the
    same objective is ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, alpha]``, except that
    TRL pools the NLL over the batch's tokens)."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative("alpha", self.alpha)

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        nll = sft_nll(inputs.policy_chosen_logps, inputs.chosen_lengths)
        return rpo(inputs.logits, nll, self.beta, self.alpha), {"nll/chosen": nll.mean()}


@dataclass(kw_only=True)
class RDPOLoss(PreferenceLoss):
    """DPO with rating information (Viano et al. 2026, arXiv 2602.00603), the RDPO variant.

    Implemented: per pair, with D the log-ratio margin and Delta_r = chosen_reward - rejected_reward
    (the external scores of the pairs table, in their own units),

        loss = -log sigmoid(beta * D - beta * Delta_r / beta_1)

    so the rating gap shifts the margin the policy must reach: the loss is ln 2 when
    D = Delta_r / beta_1. ``beta_1`` > 0 sets how much the ratings are trusted: the smaller it is,
    the larger the shift (beta_1 -> infinity recovers DPO). Its scale depends on the scale of the
    scores, so tune it per scorer; the paper reportedly tunes it per model across orders of
    magnitude (e.g. 0.1 vs 0.005). Default beta = 0.1, beta_1 = 0.1.

    Not verified: this formula comes from secondary sources (RESEARCH.md section 4); the paper's
    text could not be read here, so its exact form (sign convention, whether beta multiplies the
    shift, any normalisation or clipping of Delta_r) and its default hyperparameters are unchecked.
    ML-RDPO (an added Gaussian likelihood of the rating gap) and RIPO are not implemented.
    """

    beta_1: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("beta_1", self.beta_1)

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        gap = inputs.chosen_reward - inputs.rejected_reward
        losses = rating_dpo(inputs.logits, gap, self.beta, self.beta_1)
        return losses, {"rating/gap": gap.mean(), "rating/shift": (gap / self.beta_1).mean()}


@dataclass(kw_only=True)
class HybridLoss(PreferenceLoss):
    """MixDPO (2026, arXiv 2602.00954; code JlPang863/QualityDPO, ``noisy-tolerant-4-6``): pairs
    routed to SFT (``route == "sft"``, decided by selection, e.g. a small margin) take the mean
    token NLL of chosen, the others (c)DPO. Their defaults: beta 0.01, label smoothing 0.1."""

    beta: float = 0.01
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _label_smoothing_range(self.label_smoothing)

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        nll = sft_nll(inputs.policy_chosen_logps, inputs.chosen_lengths)
        losses = hybrid(inputs.logits, nll, inputs.route_sft, self.beta, self.label_smoothing)
        sft = inputs.route_sft.bool()
        return losses, {
            "route/sft_fraction": sft.to(losses.dtype).mean(),
            "loss/sft": _masked_mean(losses, sft),
            "loss/dpo": _masked_mean(losses, ~sft),
        }


def _build_part(node: Any) -> Any:
    """A loss from a config node. Hydra's default (recursive) instantiation hands the parts over
    already built, but a dataclass object inside a list comes back as a structured DictConfig
    (no ``_target_``, object type kept): rebuild the object from it."""
    if OmegaConf.is_config(node) and "_target_" not in node:
        kind = OmegaConf.get_type(node)
        if isinstance(kind, type) and issubclass(kind, PreferenceLoss):
            return OmegaConf.to_object(node)
    return instantiate(node)


def _default_combo_losses() -> list[dict[str, Any]]:
    return [{"_target_": f"{__name__}.DPOLoss", "beta": 0.1},
            {"_target_": f"{__name__}.SFTLoss", "beta": 0.1}]


@dataclass(kw_only=True)
class ComboLoss(PreferenceLoss):
    """A weighted sum of losses: per_pair = sum_i weights[i] * losses[i].per_pair.

    ``losses`` holds config nodes (``_target_`` plus fields), instantiated with Hydra here; nodes
    that Hydra's recursive instantiation already turned into losses are kept as they are. Each
    part's metrics (and its own loss, as ``<prefix>/loss``) are logged under ``<i>_<name>/``, e.g.
    ``0_dpo/rewards/margin``. ``beta`` (for the combined reward metrics) defaults to the first
    part's beta.
    """

    beta: float | None = None
    losses: list[dict[str, Any]] = field(default_factory=_default_combo_losses)
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0])

    def __post_init__(self) -> None:
        require(len(self.losses) > 0, "losses", "must name at least one loss")
        require(len(self.weights) == len(self.losses), "weights",
                f"must have one weight per loss: {len(self.weights)} weights, "
                f"{len(self.losses)} losses")
        for i, w in enumerate(self.weights):
            require(w is not None and math.isfinite(w) and w >= 0, f"weights[{i}]",
                    f"must be >= 0, got {w}")
        self.parts: list[PreferenceLoss] = []
        for i, node in enumerate(self.losses):
            if isinstance(node, PreferenceLoss):
                self.parts.append(node)
                continue
            try:
                part = _build_part(node)
            except Exception as e:  # Hydra wraps a part's ConfigError in its own exception
                inner = e if isinstance(e, ConfigError) else e.__cause__
                if isinstance(inner, ConfigError):
                    message = str(inner).removeprefix(f"config error at '{inner.field}': ")
                    raise ConfigError(f"losses[{i}].{inner.field}", message) from e
                raise ConfigError(f"losses[{i}]", f"cannot instantiate: {e}") from e
            require(isinstance(part, PreferenceLoss), f"losses[{i}]",
                    f"must be a loss, got {type(part).__name__}")
            self.parts.append(part)
        if self.beta is None:
            self.beta = self.parts[0].beta
        super().__post_init__()

    def prefixes(self) -> list[str]:
        names = [type(p).__name__.removesuffix("Loss").lower() for p in self.parts]
        return [f"{i}_{name}" for i, name in enumerate(names)]

    def per_pair(self, inputs: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        total, extras = None, {}
        for prefix, part, w in zip(self.prefixes(), self.parts, self.weights, strict=True):
            out = part(inputs)
            total = w * out.per_pair if total is None else total + w * out.per_pair
            extras[f"{prefix}/loss"] = out.loss.detach()
            extras.update({f"{prefix}/{k}": v for k, v in out.metrics.items()})
        return total, extras
