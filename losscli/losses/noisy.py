"""Losses for noisy labels: symmetric, normalized and reverse cross-entropy, the
active-passive pairs, bootstrapping, Jensen-Shannon and the Brier score.

Inputs as the other classification losses: logits ``[N, C]`` or ``[N, C, *]`` and class
indices ``[N]`` or ``[N, *]``; targets equal to ``ignore_index`` contribute nothing and a
plain ``mean`` averages over the others. ``reduction="none"`` gives one value per target.

Defaults are the authors' released settings for MNIST (the setting of Ma et al. 2020 that
the ``mnist`` job reproduces); each docstring gives the CIFAR-10 values too.

Where the released code clamps probabilities (``clamp(p, 1e-7, 1)`` before a log), we work
with ``log_softmax`` instead: the values agree wherever no probability is below 1e-7 (or
above 1 - 1e-7 for Keras' clip), and ours keep a gradient on saturated logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from losscli.losses._checks import check_index_target, check_range
from losscli.losses.classification import _reduce_valid
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.registry import register_loss

__all__ = [
    "bootstrap_hard_loss",
    "bootstrap_soft_loss",
    "brier_loss",
    "jensen_shannon_loss",
    "nce_rce_loss",
    "nfl_rce_loss",
    "normalized_cross_entropy",
    "reverse_cross_entropy",
    "symmetric_cross_entropy",
]

# RCE = -sum_c p_c log(onehot_c) with log(0) replaced by log(1e-4), as the released code
# (clamp of the one-hot target to [1e-4, 1]); so RCE = A (1 - p_t) with A = -log(1e-4).
RCE_A = -math.log(1e-4)

_APL = "github.com/HanxunH/Active-Passive-Losses, loss.py"
_SCE_REPO = "github.com/YisenWang/symmetric_cross_entropy_for_noisy_labels"
_MA = "Ma et al., Normalized Loss Functions for Deep Learning with Noisy Labels, ICML 2020"
_REED = ("Reed et al., Training Deep Neural Networks on Noisy Labels with Bootstrapping, "
         "ICLR workshop 2015")


def _log_probs(
    pred: Tensor, target: Tensor, ignore_index: int, name: str, *, two_classes: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``log_softmax`` over dim 1, its value at the target, the non-ignored mask and the
    target with ignored entries set to class 0 (``gather`` stays in range, no host sync).

    ``two_classes``: refuse a single class (the normalised losses divide by
    ``sum_c -log p_c``, which is 0 for one class)."""
    check_index_target(pred, target, name)
    if two_classes and pred.shape[1] < 2:
        raise ValueError(f"{name}: needs at least 2 classes, got pred of shape {tuple(pred.shape)}")
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    logp = F.log_softmax(pred, dim=1)
    return logp, logp.gather(1, safe_target.unsqueeze(1)).squeeze(1), valid, safe_target


def _rce(logp_t: Tensor) -> Tensor:
    """Reverse CE ``A (1 - p_t)``; ``-expm1`` keeps it exact as ``p_t -> 1``."""
    return -RCE_A * torch.expm1(logp_t)


def _nce(logp: Tensor, logp_t: Tensor) -> Tensor:
    """``-log p_t / sum_c -log p_c`` (both sums are negative, so the ratio is in [0, 1])."""
    return logp_t / logp.sum(dim=1)


def _nfl(logp: Tensor, safe_target: Tensor, gamma: float) -> Tensor:
    """``FL(p_t) / sum_c FL(p_c)`` with ``FL(p) = -(1 - p)^gamma log p``."""
    # clamp: (1 - p)^gamma has an infinite slope at p = 1 when gamma < 1 (as ``focal``)
    fl = -(-torch.expm1(logp)).clamp_min(1e-12).pow(gamma) * logp
    return fl.gather(1, safe_target.unsqueeze(1)).squeeze(1) / fl.sum(dim=1)


@register_loss(
    "sce",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Symmetric cross-entropy: alpha * CE + beta * reverse CE.",
    reference="Wang et al., Symmetric Cross Entropy for Robust Learning with Noisy Labels, "
    f"ICCV 2019 ({_SCE_REPO}; {_APL})",
    aliases=("symmetric_ce",),
)
def symmetric_cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.01,
    beta: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``alpha * CE + beta * RCE`` with ``RCE = -log(1e-4) (1 - p_t)`` (see ``rce``).

    Follows the authors' ``symmetric_cross_entropy`` (Keras) and the APL repo's ``SCELoss``.
    Deliberate difference: CE is ``-log_softmax`` at the target, not the log of a
    probability clipped to [1e-7, 1] (Keras), and RCE is not clipped (see ``rce``).

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        alpha: weight of CE (>= 0). Released: 0.01 on MNIST, 0.1 on CIFAR-10, 6 on CIFAR-100.
        beta: weight of RCE (>= 0). Released: 1.0 on MNIST and CIFAR-10, 0.1 on CIFAR-100.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_range("sce", "alpha", alpha, 0.0)
    check_range("sce", "beta", beta, 0.0)
    _, logp_t, valid, _ = _log_probs(pred, target, ignore_index, "sce")
    return _reduce_valid(-alpha * logp_t + beta * _rce(logp_t), valid, reduction, weight,
                         avg_factor)


@register_loss(
    "rce",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Reverse cross-entropy -sum_c p_c log y_c with log 0 := log 1e-4: 9.21 (1 - p_t).",
    reference="Wang et al., Symmetric Cross Entropy, ICCV 2019; " + _APL,
    aliases=("reverse_ce",),
)
def reverse_cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Reverse CE: the cross-entropy of the one-hot target under the prediction.

    ``-sum_c p_c log y_c`` with the one-hot ``y`` clamped to [1e-4, 1] (the released
    code), which is ``A (1 - p_t)``, ``A = -log(1e-4) ~ 9.21``: a scaled MAE (``A/2 *
    mae_probs``). Deliberate difference from the APL repo's ``ReverseCrossEntropy``: it
    also clamps ``p`` to [1e-7, 1], which adds at most ``(C - 1) 1e-7 A`` and zeroes the
    gradient of probabilities below 1e-7; we compute ``A (1 - p_t)`` exactly.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    _, logp_t, valid, _ = _log_probs(pred, target, ignore_index, "rce")
    return _reduce_valid(_rce(logp_t), valid, reduction, weight, avg_factor)


@register_loss(
    "nce",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Normalized cross-entropy: -log p_t / sum_c -log p_c, in [0, 1].",
    reference=f"{_MA}; {_APL}",
    aliases=("normalized_ce",),
)
def normalized_cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Normalized CE ``log p_t / sum_c log p_c``, as the APL repo's ``NormalizedCrossEntropy``
    with ``scale=1`` (the released MNIST config scales it by 10: write ``10*nce``).

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``, ``C >= 2``.
        target: class indices ``[N]`` or ``[N, *]``.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    logp, logp_t, valid, _ = _log_probs(pred, target, ignore_index, "nce", two_classes=True)
    return _reduce_valid(_nce(logp, logp_t), valid, reduction, weight, avg_factor)


@register_loss(
    "nce_rce",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Active-passive loss alpha * NCE + beta * RCE.",
    reference=f"{_MA} ({_APL}, NCEandRCE)",
)
def nce_rce_loss(
    pred: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 10.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``alpha * nce + beta * rce``, as the APL repo's ``NCEandRCE``.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``, ``C >= 2``.
        target: class indices ``[N]`` or ``[N, *]``.
        alpha: weight of NCE (>= 0). Released: 1 on MNIST and CIFAR-10, 10 on CIFAR-100.
        beta: weight of RCE (>= 0). Released: 10 on MNIST, 1 on CIFAR-10, 0.1 on CIFAR-100.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_range("nce_rce", "alpha", alpha, 0.0)
    check_range("nce_rce", "beta", beta, 0.0)
    logp, logp_t, valid, _ = _log_probs(pred, target, ignore_index, "nce_rce",
                                        two_classes=True)
    loss = alpha * _nce(logp, logp_t) + beta * _rce(logp_t)
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)


@register_loss(
    "nfl_rce",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Active-passive loss alpha * normalized focal + beta * RCE.",
    reference=f"{_MA} ({_APL}, NFLandRCE)",
)
def nfl_rce_loss(
    pred: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 10.0,
    gamma: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``alpha * NFL + beta * rce``, ``NFL = FL(p_t) / sum_c FL(p_c)``,
    ``FL(p) = -(1 - p)^gamma log p``: the APL repo's ``NFLandRCE``.

    Deliberate difference: the released ``NormalizedFocalLoss`` computes the normaliser and
    the factor ``(1 - p_t)^gamma`` from ``.data`` (inherited from a focal-loss snippet), so
    its gradient is not the derivative of its value; ours differentiates the whole
    expression (same values). ``gamma = 0`` gives ``nce_rce``.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``, ``C >= 2``.
        target: class indices ``[N]`` or ``[N, *]``.
        alpha: weight of NFL (>= 0). Released: 1 on MNIST and CIFAR-10, 10 on CIFAR-100.
        beta: weight of RCE (>= 0). Released: 10 on MNIST, 1 on CIFAR-10, 0.1 on CIFAR-100.
        gamma: focusing parameter >= 0; released 0.5 everywhere.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_range("nfl_rce", "alpha", alpha, 0.0)
    check_range("nfl_rce", "beta", beta, 0.0)
    check_range("nfl_rce", "gamma", gamma, 0.0)
    logp, logp_t, valid, safe_target = _log_probs(pred, target, ignore_index, "nfl_rce",
                                                  two_classes=True)
    loss = alpha * _nfl(logp, safe_target, gamma) + beta * _rce(logp_t)
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)


@register_loss(
    "bootstrap_soft",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Soft bootstrapping: CE against beta * y + (1 - beta) * p (entropy-regularised).",
    reference=f"{_REED} (boot_soft in {_SCE_REPO})",
    aliases=("boot_soft",),
)
def bootstrap_soft_loss(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 0.95,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``-sum_c (beta y_c + (1 - beta) p_c) log p_c = beta CE + (1 - beta) H(p)``.

    The gradient flows through ``p`` in the target too (as the Keras reference, which has
    no stop-gradient): the paper's reading as minimum-entropy regularisation. Deliberate
    difference: ``log_softmax`` instead of ``log`` of ``p`` clipped to [1e-7, 1 - 1e-7].

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        beta: weight of the given label in [0, 1] (the paper's 0.95); 1 is cross-entropy.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_range("bootstrap_soft", "beta", beta, 0.0, 1.0)
    logp, logp_t, valid, _ = _log_probs(pred, target, ignore_index, "bootstrap_soft")
    loss = -beta * logp_t - (1 - beta) * (logp.exp() * logp).sum(dim=1)
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)


@register_loss(
    "bootstrap_hard",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Hard bootstrapping: CE against beta * y + (1 - beta) * onehot(argmax p).",
    reference=f"{_REED} (boot_hard in {_SCE_REPO})",
    aliases=("boot_hard",),
)
def bootstrap_hard_loss(
    pred: Tensor,
    target: Tensor,
    *,
    beta: float = 0.8,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``-(beta log p_t + (1 - beta) log p_k)`` with ``k = argmax_c p_c`` (a constant).

    Deliberate difference from the Keras reference: ``log_softmax`` instead of ``log`` of
    ``p`` clipped to [1e-7, 1 - 1e-7].

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        beta: weight of the given label in [0, 1] (the paper's 0.8); 1 is cross-entropy.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    check_range("bootstrap_hard", "beta", beta, 0.0, 1.0)
    logp, logp_t, valid, _ = _log_probs(pred, target, ignore_index, "bootstrap_hard")
    logp_k = logp.gather(1, pred.argmax(dim=1, keepdim=True)).squeeze(1)
    loss = -beta * logp_t - (1 - beta) * logp_k
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)


@register_loss(
    "js",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Jensen-Shannon divergence JS_pi(y, p), scaled to run from CE to MAE with pi.",
    reference="Englesson & Azizpour, Generalized Jensen-Shannon Divergence Loss for Learning "
    "with Noisy Labels, NeurIPS 2021 (github.com/ErikEnglesson/GJS, "
    "JensenShannonDivergenceWeightedScaled)",
    aliases=("jensen_shannon",),
)
def jensen_shannon_loss(
    pred: Tensor,
    target: Tensor,
    *,
    pi: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``(pi KL(y || m) + (1 - pi) KL(p || m)) / Z`` with ``m = pi y + (1 - pi) p`` and
    ``Z = -(1 - pi) log(1 - pi)``: the released ``JensenShannonDivergenceWeightedScaled``
    with weights ``[pi, 1 - pi]`` and one prediction (no consistency term).

    For a one-hot ``y`` it depends on ``p_t`` only (``m_t = pi + (1 - pi) p_t``)::

        pi (-log m_t) + (1 - pi) ((1 - p_t) (-log(1 - pi)) + p_t (log p_t - log m_t))

    which is what we compute. ``pi -> 0`` tends to CE, ``pi -> 1`` to a scaled MAE.
    Deliberate difference: the released code clamps ``m`` to [1e-7, 1] before its log.

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        pi: weight of the label distribution, in (0, 1). Released (CIFAR-10, symmetric
            noise): 0.1 at 0 %, 0.7 at 20-40 %, 0.9 at 60-80 %.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    if not 0 < pi < 1:
        raise ValueError(f"js: pi must be in (0, 1), got {pi}")
    _, logp_t, valid, _ = _log_probs(pred, target, ignore_index, "js")
    log_pi, log_1m_pi = math.log(pi), math.log1p(-pi)
    log_m = torch.logaddexp(log_1m_pi + logp_t, logp_t.new_tensor(log_pi))
    p_t = logp_t.exp()
    kl_pred = torch.expm1(logp_t) * log_1m_pi + p_t * (logp_t - log_m)
    loss = (-pi * log_m + (1 - pi) * kl_pred) / (-(1 - pi) * log_1m_pi)
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)


@register_loss(
    "brier",
    family=Family.CLASSIFICATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Brier score: squared distance between softmax probabilities and the one-hot.",
    reference="Brier, Verification of Forecasts Expressed in Terms of Probability, Monthly "
    "Weather Review 1950 (BrierScore in github.com/torrvision/focal_calibration)",
    aliases=("brier_score",),
)
def brier_loss(
    pred: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``sum_c (p_c - y_c)^2`` per element, in [0, 2]; ``mean`` is the calibration
    repo's ``BrierScore`` (the sum over elements and classes divided by the element count).

    Args:
        pred: logits ``[N, C]`` or ``[N, C, *]``.
        target: class indices ``[N]`` or ``[N, *]``.
        ignore_index: targets equal to this contribute nothing.

    Returns:
        The loss, shaped like ``target`` for ``reduction="none"``.
    """
    logp, _, valid, safe_target = _log_probs(pred, target, ignore_index, "brier")
    classes = torch.arange(pred.shape[1], device=pred.device).view(1, -1, *[1] * (pred.dim() - 2))
    onehot = (safe_target.unsqueeze(1) == classes).to(logp.dtype)
    loss = (logp.exp() - onehot).square().sum(dim=1)
    return _reduce_valid(loss, valid, reduction, weight, avg_factor)
