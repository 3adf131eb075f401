"""Dense (anchor-based) detection losses on ``(offsets, logits)`` against encoded targets.

``pred`` is ``(offsets [B, A, 4], logits [B, A, C])`` and ``target`` is
``(encoded offsets [B, A, 4], labels [B, A])`` with labels ``0`` = background, ``1..C-1``
= object classes, ``-1`` = ignored anchor (``losscli.ops.build_targets`` makes them).

The losses are built from plain per-anchor pieces (``positive_mask``,
``hard_negative_mask``, ``ssd_classification_loss``, ``sigmoid_focal_classification_loss``,
``box_regression_loss``) so that a job can combine a classification piece with its own box
loss (e.g. GIoU on decoded boxes) and normalise by ``num_positives``.

Reductions of the registered losses: ``mean`` is the detection normalisation, the sum
over the batch divided by the number of positive anchors in the batch, at least 1 (or
by ``avg_factor``); ``sum`` is the plain sum;
``none`` returns the per-image sums ``[B]`` (not normalised). ``weight`` is per anchor
(broadcastable to ``[B, A]``) and applied before the per-image sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losscli.losses._checks import check_range
from losscli.losses.binary import sigmoid_focal_loss
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import check_reduction, reduce_loss
from losscli.losses.registry import register_loss

__all__ = [
    "BOX_TERMS",
    "box_regression_loss",
    "focal_detection_loss",
    "hard_negative_mask",
    "num_positives",
    "positive_mask",
    "sigmoid_focal_classification_loss",
    "ssd_classification_loss",
    "ssd_loss",
]

BOX_TERMS = ("smooth_l1", "l1")


def positive_mask(labels: Tensor) -> Tensor:
    """Anchors matched to an object (``label > 0``), ``[B, A]`` bool."""
    return labels > 0


def num_positives(labels: Tensor) -> Tensor:
    """The number of positive anchors in the batch, as a float scalar tensor (no sync)."""
    return positive_mask(labels).sum().float()


def hard_negative_mask(background_loss: Tensor, labels: Tensor, neg_pos_ratio: float) -> Tensor:
    """The ``floor(neg_pos_ratio * positives)`` hardest background anchors of each image.

    Sort-based ranking (no host sync): sort each image's background losses, scatter the
    positions back to get every anchor's rank, keep ``rank < num_neg``. Positive and
    ignored anchors are never selected.

    Args:
        background_loss: ``[B, A]`` loss of each anchor as background (used for ranking
            only; not differentiated).
        labels: ``[B, A]`` anchor labels (0 background, > 0 object, -1 ignore).
        neg_pos_ratio: negatives kept per positive, per image.

    Returns:
        ``[B, A]`` bool mask of the selected negatives.
    """
    is_negative = labels == 0
    ranking = torch.where(is_negative, background_loss.detach(), float("-inf"))
    order = ranking.argsort(dim=1, descending=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    num_neg = torch.floor(neg_pos_ratio * positive_mask(labels).sum(dim=1, keepdim=True))
    return (rank < num_neg) & is_negative


def ssd_classification_loss(logits: Tensor, labels: Tensor, neg_pos_ratio: float = 3.0) -> Tensor:
    """SSD's confidence loss per anchor: cross-entropy on positives and mined negatives.

    Negatives are ranked by their background cross-entropy (Liu et al., ECCV 2016).

    Args:
        logits: class logits ``[B, A, C]``, class 0 = background.
        labels: ``[B, A]`` (0 background, ``1..C-1`` object, -1 ignore).
        neg_pos_ratio: negatives kept per positive, per image.

    Returns:
        ``[B, A]`` cross-entropy, 0 on anchors that are neither positive nor mined;
        not normalised.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    ce = -log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    negatives = hard_negative_mask(-log_probs[..., 0], labels, neg_pos_ratio)
    return torch.where(positive_mask(labels) | negatives, ce, torch.zeros_like(ce))


def sigmoid_focal_classification_loss(
    logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """RetinaNet's classification loss per anchor: sigmoid focal loss over the object classes.

    The target of each anchor is the one-hot of its label over classes ``1..C-1``
    (all zeros for background); column 0 of ``logits`` (background) is not used.

    Args:
        logits: class logits ``[B, A, C]``, class 0 = background.
        labels: ``[B, A]`` (0 background, ``1..C-1`` object, -1 ignore).
        alpha, gamma: as ``sigmoid_focal`` (``torchvision.ops.sigmoid_focal_loss``).

    Returns:
        ``[B, A]`` focal loss summed over classes, 0 on ignored anchors; not normalised.
    """
    classes = torch.arange(1, logits.shape[-1], device=labels.device)
    one_hot = (labels.unsqueeze(-1) == classes).to(logits.dtype)  # background: all zeros
    loss = sigmoid_focal_loss(logits[..., 1:], one_hot, alpha=alpha, gamma=gamma,
                              reduction="none").sum(-1)
    return torch.where(labels >= 0, loss, torch.zeros_like(loss))


def box_regression_loss(
    offsets: Tensor,
    target_offsets: Tensor,
    labels: Tensor,
    box: str = "smooth_l1",
    beta: float = 1.0,
) -> Tensor:
    """Box loss per anchor on encoded offsets, summed over the 4 coordinates, positives only.

    Args:
        offsets: predicted offsets ``[B, A, 4]``.
        target_offsets: encoded targets ``[B, A, 4]``; values on non-positive anchors are
            not read (they may be anything, even non-finite).
        labels: ``[B, A]``; the loss is 0 where ``label <= 0``.
        box: ``smooth_l1`` (``beta``) or ``l1``.

    Returns:
        ``[B, A]`` box loss; not normalised.
    """
    if box not in BOX_TERMS:
        raise ValueError(f"box must be one of {BOX_TERMS}, got {box!r}")
    positive = positive_mask(labels).unsqueeze(-1)
    target_offsets = torch.where(positive, target_offsets, offsets.detach())
    if box == "l1":
        loss = F.l1_loss(offsets, target_offsets, reduction="none")
    else:
        loss = F.smooth_l1_loss(offsets, target_offsets, reduction="none", beta=beta)
    return loss.sum(-1)


def _unpack(pred: tuple[Tensor, Tensor], target: tuple[Tensor, Tensor], loss: str,
            min_classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check the shapes of ``(offsets, logits)`` and ``(target_offsets, labels)``."""
    if not (isinstance(pred, (tuple, list)) and len(pred) == 2):
        raise ValueError(f"{loss}: pred must be (offsets [B, A, 4], logits [B, A, C])")
    if not (isinstance(target, (tuple, list)) and len(target) == 2):
        raise ValueError(f"{loss}: target must be (offsets [B, A, 4], labels [B, A])")
    offsets, logits = pred
    target_offsets, labels = target
    if offsets.dim() != 3 or offsets.shape[-1] != 4:
        raise ValueError(f"{loss}: offsets must be [B, A, 4], got {tuple(offsets.shape)}")
    if logits.dim() != 3 or logits.shape[:2] != offsets.shape[:2]:
        raise ValueError(
            f"{loss}: logits must be [B, A, C] with [B, A] = {tuple(offsets.shape[:2])}, "
            f"got {tuple(logits.shape)}"
        )
    if logits.shape[-1] < min_classes:
        raise ValueError(
            f"{loss}: logits need C >= {min_classes} classes (0 = background), "
            f"got {logits.shape[-1]}"
        )
    if target_offsets.shape != offsets.shape:
        raise ValueError(
            f"{loss}: target offsets must have the shape of pred offsets "
            f"{tuple(offsets.shape)}, got {tuple(target_offsets.shape)}"
        )
    if labels.shape != offsets.shape[:2] or labels.is_floating_point():
        raise ValueError(
            f"{loss}: labels must be integers of shape {tuple(offsets.shape[:2])}, got "
            f"{tuple(labels.shape)} {labels.dtype}"
        )
    return offsets, logits, target_offsets, labels


def _reduce_per_image(
    per_anchor: Tensor,
    labels: Tensor,
    reduction: str,
    weight: Tensor | None,
    avg_factor: float | Tensor | None,
) -> Tensor:
    """Per-anchor weight, per-image sums, then ``mean`` = sum / max(1, positives)."""
    if weight is not None:
        per_anchor = per_anchor * weight
    if reduction == "mean" and avg_factor is None:
        # at least 1, as torchvision's RetinaNet and Detectron: a batch of background only
        # still trains the classifier (SSD's sum is 0 there anyway: nothing is mined)
        avg_factor = num_positives(labels).clamp_min(1.0)
    return reduce_loss(per_anchor.sum(dim=1), reduction, None, avg_factor)


@register_loss(
    "ssd",
    family=Family.DETECTION,
    pred=Pred.DETECTIONS,
    target=Target.DETECTIONS,
    description="SSD multibox: smooth L1 on positives + CE with 3:1 hard negative mining.",
    reference="Liu et al., SSD, ECCV 2016; ssd.pytorch MultiBoxLoss",
    aliases=("multibox",),
)
def ssd_loss(
    pred: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    *,
    neg_pos_ratio: float = 3.0,
    beta: float = 1.0,
    loc_weight: float = 1.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """SSD multibox loss ``(loc_weight * L_loc + L_conf) / N_pos``.

    ``L_loc`` is smooth L1 on the encoded offsets of positive anchors; ``L_conf`` is
    cross-entropy on positives and on the ``neg_pos_ratio * positives`` background anchors
    of each image with the highest background loss.

    Args:
        pred: ``(offsets [B, A, 4], logits [B, A, C])``, class 0 = background.
        target: ``(offsets [B, A, 4], labels [B, A] int)``; 0 background, -1 ignore.
        neg_pos_ratio: mined negatives per positive, per image (>= 0).
        beta: smooth L1 threshold (>= 0; 0 is L1).
        loc_weight: weight of the box term (SSD's alpha).
        reduction: ``mean`` (over positives in the batch) | ``sum`` | ``none`` (per image).
        weight, avg_factor: per-anchor weight ``[B, A]``; denominator replacing N_pos.

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``; 0 with a graph when no anchor is
        positive (ssd.pytorch divides by zero there).
    """
    offsets, logits, target_offsets, labels = _unpack(pred, target, "ssd", 2)
    check_range("ssd", "neg_pos_ratio", neg_pos_ratio, 0.0)
    check_range("ssd", "beta", beta, 0.0)
    check_reduction(reduction)
    loc = box_regression_loss(offsets, target_offsets, labels, "smooth_l1", beta)
    conf = ssd_classification_loss(logits, labels, neg_pos_ratio)
    return _reduce_per_image(loc_weight * loc + conf, labels, reduction, weight, avg_factor)


@register_loss(
    "focal_det",
    family=Family.DETECTION,
    pred=Pred.DETECTIONS,
    target=Target.DETECTIONS,
    description="RetinaNet: sigmoid focal loss on all anchors + smooth L1/L1 on positives.",
    reference="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017; "
    "torchvision RetinaNet / Detectron",
    aliases=("retinanet",),
)
def focal_detection_loss(
    pred: tuple[Tensor, Tensor],
    target: tuple[Tensor, Tensor],
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box: str = "smooth_l1",
    beta: float = 0.11,
    loc_weight: float = 1.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """RetinaNet loss ``(L_focal + loc_weight * L_box) / N_pos``.

    ``L_focal`` is the sigmoid focal loss over the object classes ``1..C-1`` of every
    non-ignored anchor (background = all-zero target; logit column 0 unused), ``L_box``
    the box loss on the encoded offsets of positive anchors.

    Args:
        pred: ``(offsets [B, A, 4], logits [B, A, C])``, class 0 = background.
        target: ``(offsets [B, A, 4], labels [B, A] int)``; 0 background, -1 ignore.
        alpha: weight of positives in [0, 1]; gamma: focusing parameter >= 0.
        box: ``smooth_l1`` | ``l1``; beta: smooth L1 threshold (Detectron's 0.11 for
            offsets scaled by variances (0.1, 0.2)).
        loc_weight: weight of the box term.
        reduction, weight, avg_factor: as ``ssd``.

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``. With no positive anchor the
        background anchors' focal loss is divided by 1.
    """
    offsets, logits, target_offsets, labels = _unpack(pred, target, "focal_det", 2)
    check_range("focal_det", "alpha", alpha, 0.0, 1.0)
    check_range("focal_det", "gamma", gamma, 0.0)
    check_range("focal_det", "beta", beta, 0.0)
    check_reduction(reduction)
    cls = sigmoid_focal_classification_loss(logits, labels, alpha, gamma)
    loc = box_regression_loss(offsets, target_offsets, labels, box, beta)
    return _reduce_per_image(cls + loc_weight * loc, labels, reduction, weight, avg_factor)
