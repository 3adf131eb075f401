"""Segmentation losses for small or rare structures: generalized Dice and top-k
cross-entropy.

Inputs, modes (multi-class softmax for ``C >= 2``, binary sigmoid for ``C == 1``),
``ignore_index``, ``include_background``, ``batch`` and the smoothing terms are as in
``losscli.losses.segmentation`` (see its module docstring). Both return one value per
image ``[N]`` for ``reduction="none"`` (``[1]`` with ``batch=True``).
"""

from __future__ import annotations

import math

from torch import Tensor

from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import check_reduction, reduce_loss
from losscli.losses.registry import register_loss
from losscli.losses.segmentation import (
    _SMOOTH,
    _check_inputs,
    _check_region_args,
    _pixel_loss,
    _ratio,
    _region_stats,
)

__all__ = ["generalized_dice_loss", "topk_cross_entropy"]


def _inverse_square_volume(gsum: Tensor) -> Tensor:
    """Sudre et al.'s class weights ``1 / G_c^2`` per row ``[N, C']``; a class absent from
    the ground truth (``G_c = 0``) gets its row's largest finite weight, as MONAI's
    ``GeneralizedDiceLoss`` and NiftyNet's ``generalised_dice_loss``."""
    empty = gsum == 0
    w = (1 / gsum.masked_fill(empty, 1.0).square()).masked_fill(empty, 0.0)
    return w + empty * w.amax(dim=1, keepdim=True)


@register_loss(
    "gdice",
    family=Family.SEGMENTATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Generalized Dice loss: Dice pooled over classes with 1/volume^2 weights.",
    reference="Sudre et al., Generalised Dice Overlap as a Deep Learning Loss Function for "
    "Highly Unbalanced Segmentations, DLMIA 2017; equals monai.losses.GeneralizedDiceLoss "
    "(softmax=True, to_onehot_y=True)",
    aliases=("generalized_dice", "gdl"),
)
def generalized_dice_loss(
    pred: Tensor,
    target: Tensor,
    *,
    include_background: bool = True,
    batch: bool = False,
    smooth_nr: float = _SMOOTH,
    smooth_dr: float = _SMOOTH,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``1 - (2 sum_c w_c I_c + smooth_nr) / (sum_c w_c (P_c + G_c) + smooth_dr)`` per image,
    ``w_c = 1 / G_c^2`` (``I``, ``P``, ``G`` as in ``dice``).

    The weights come from the ground truth (no gradient); an absent class gets the largest
    weight of the image (of the batch with ``batch``). The smoothing is added after the
    weighting, as MONAI, so it weighs more than in ``dice`` when the volumes are large.

    Args:
        pred: logits ``[N, C, *spatial]``; ``C == 1`` is the binary (sigmoid) mode.
        target: class indices ``[N, *spatial]``, or a mask ``[N, (1,) *spatial]`` if ``C == 1``.
        include_background: keep class 0 in the sums.
        batch: pool the statistics (and the weights) over the batch.
        smooth_nr, smooth_dr: added to numerator and denominator (>= 0).
        ignore_index: target value excluded from all statistics.

    Returns:
        ``[N]`` for ``none`` (``[1]`` with ``batch``), else a scalar equal to MONAI's
        ``GeneralizedDiceLoss(softmax=True, to_onehot_y=True)`` (``sigmoid=True`` for one
        channel). An image with no labelled pixel scores 0.
    """
    target = _check_inputs(pred, target, "gdice")
    _check_region_args("gdice", smooth_nr, smooth_dr, reduction)
    inter, psum, gsum = _region_stats(pred, target, ignore_index, include_background, batch)
    w = _inverse_square_volume(gsum)
    num = 2 * (w * inter).sum(dim=1) + smooth_nr
    den = (w * (psum + gsum)).sum(dim=1) + smooth_dr
    return reduce_loss(1 - _ratio(num, den), reduction, weight, avg_factor)


@register_loss(
    "topk_ce",
    family=Family.SEGMENTATION,
    pred=Pred.LOGITS,
    target=Target.INDEX,
    description="Top-k cross-entropy: mean CE over the k (fraction) hardest pixels.",
    reference="Wu et al., Bridging Category-level and Instance-level Semantic Image "
    "Segmentation, arXiv 2016; nnU-Net's TopKLoss (github.com/MIC-DKFZ/nnUNet, "
    "TopK_loss.py), as in Ma et al., Loss odyssey in medical image segmentation, MedIA 2021",
    aliases=("topk", "top_k_ce"),
)
def topk_cross_entropy(
    pred: Tensor,
    target: Tensor,
    *,
    k: float = 0.1,
    batch: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Mean of the ``floor(k * P)`` largest per-pixel cross-entropies of each image
    (``P`` pixels; of the whole batch with ``batch``), at least one.

    ``batch=True`` is nnU-Net's ``TopKLoss(k=100 * k)`` (its ``k`` is a percentage). As
    there, ignored pixels count in ``P`` with a loss of 0 (so no host sync is needed to
    count the valid ones). Softmax CE for ``C >= 2``, BCE with logits for ``C == 1``.

    Args:
        pred: logits ``[N, C, *spatial]``; ``C == 1`` is the binary (sigmoid) mode.
        target: class indices ``[N, *spatial]``, or a mask ``[N, (1,) *spatial]`` if ``C == 1``.
        k: the fraction of pixels kept, in (0, 1]; 1 is plain pixel-mean CE.
        batch: select over the pooled batch instead of per image.
        ignore_index: pixels with this target have loss 0.

    Returns:
        ``[N]`` for ``none`` (``[1]`` with ``batch``), else a scalar.
    """
    target = _check_inputs(pred, target, "topk_ce")
    check_reduction(reduction)
    if not 0 < k <= 1:
        raise ValueError(f"topk_ce: k must be a fraction in (0, 1], got {k}")
    pixel = _pixel_loss(pred, target, 0.0, ignore_index)
    if batch:
        flat = pixel.reshape(1, -1)
    else:  # explicit sizes: -1 is ambiguous for an empty batch
        flat = pixel.reshape(pixel.shape[0], math.prod(pixel.shape[1:]))
    # floor of k * P; the 1e-9 keeps 0.29 * 100 = 28.999999999999996 at 29
    count = min(max(1, int(flat.shape[1] * k + 1e-9)), flat.shape[1])
    top = flat.topk(count, dim=1, sorted=False).values
    return reduce_loss(top.sum(dim=1) / max(count, 1), reduction, weight, avg_factor)
