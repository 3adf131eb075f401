"""Calibration and per-class metrics of a classifier: top-label and class-wise ECE,
temperature scaling, reliability-diagram bins, balanced and worst-class accuracy.

Each takes class scores ``[N, K]`` and class indices ``[N]`` and returns a tensor on
their device without a host sync, so a job reads all its metrics at once; only
``fit_temperature`` works on the host (once per run). torchmetrics computes what it has:
top-label ECE, per-class accuracy and the binary calibration error class-wise ECE is the
mean of.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BIN_FIELDS", "N_BINS", "balanced_accuracy", "class_accuracies",
           "classwise_calibration_error", "expected_calibration_error", "fit_temperature",
           "reliability_bins", "worst_class_accuracy"]

N_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017
BIN_FIELDS = ("confidence", "accuracy", "count")  # the rows of ``reliability_bins``


def _check(scores: Tensor, target: Tensor, n_bins: int | None = None) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, K], got shape {tuple(scores.shape)}")
    if target.shape != scores.shape[:1]:
        raise ValueError(f"target must be [N] = [{scores.shape[0]}], got shape "
                         f"{tuple(target.shape)}")
    if n_bins is not None and n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")


def expected_calibration_error(probs: Tensor, target: Tensor, *, n_bins: int = N_BINS
                               ) -> Tensor:
    """Top-label expected calibration error (Guo et al., "On Calibration of Modern Neural
    Networks", ICML 2017): sum over equal-width confidence bins of the bin's share of
    samples times |accuracy - mean confidence|, for the predicted class.

    Args:
        probs: ``[N, K]`` class probabilities (rows sum to 1).
        target: ``[N]`` class indices.
        n_bins: bins over [0, 1]; torchmetrics gives a confidence of exactly 1 a bin of its
            own.

    Returns:
        0-d tensor in [0, 1] (torchmetrics ``multiclass_calibration_error``, ``norm="l1"``).
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    _check(probs, target, n_bins)
    return multiclass_calibration_error(probs, target, num_classes=probs.shape[1],
                                        n_bins=n_bins, norm="l1")


def classwise_calibration_error(probs: Tensor, target: Tensor, *, n_bins: int = N_BINS
                                ) -> Tensor:
    """Class-wise ECE (Kull et al., "Beyond temperature scaling", NeurIPS 2019; the static
    calibration error of Nixon et al., "Measuring Calibration in Deep Learning", CVPR-W
    2019): for each class, the binned calibration error of its one-vs-rest probability
    against "the label is this class"; then the mean over classes.

    Args:
        probs: ``[N, K]`` class probabilities.
        target: ``[N]`` class indices.
        n_bins: equal-width bins over [0, 1] per class.

    Returns:
        0-d tensor in [0, 1]: the mean over the K classes of torchmetrics'
        ``binary_calibration_error`` (``norm="l1"``).
    """
    from torchmetrics.functional.classification import binary_calibration_error

    _check(probs, target, n_bins)
    columns = probs.t().contiguous()  # (torch.bucketize copies a strided input)
    per_class = [binary_calibration_error(columns[j], (target == j).long(), n_bins=n_bins,
                                          norm="l1", validate_args=False)  # (no host sync)
                 for j in range(probs.shape[1])]
    return torch.stack(per_class).mean()


def reliability_bins(probs: Tensor, target: Tensor, *, n_bins: int = N_BINS) -> Tensor:
    """The data of a reliability diagram: per equal-width bin of the top-label confidence,
    the mean confidence, the accuracy and the number of samples.

    Args:
        probs: ``[N, K]`` class probabilities.
        target: ``[N]`` class indices.
        n_bins: bins ``[i / n_bins, (i + 1) / n_bins)``; a confidence of exactly 1 joins the
            last one.

    Returns:
        ``[3, n_bins]`` float tensor, rows as ``BIN_FIELDS``: confidence, accuracy (NaN in an
        empty bin) and count. ``(count * |accuracy - confidence|).nansum() / N`` is the ECE
        of ``expected_calibration_error`` except where confidences of exactly 1 share the
        last bin with others of the opposite gap sign.
    """
    _check(probs, target, n_bins)
    confidence, predicted = probs.max(dim=1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=confidence.dtype, device=probs.device)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    sums = torch.zeros(3, n_bins, dtype=confidence.dtype, device=probs.device)
    rows = torch.stack([confidence, (predicted == target).to(confidence.dtype),
                        torch.ones_like(confidence)])
    sums.scatter_add_(1, index.expand(3, -1), rows)
    count = sums[2]
    return torch.stack([sums[0] / count, sums[1] / count, count])  # 0 / 0: NaN when empty


def fit_temperature(logits: Tensor, target: Tensor, *, bounds: tuple[float, float] = (0.05, 20.0)
                    ) -> float:
    """Temperature scaling (Guo et al. 2017): the one ``T > 0`` that minimises the NLL of
    ``softmax(logits / T)``, fitted on held-out (validation) logits.

    The NLL is convex in ``1 / T``, so it has one minimum over ``log T``; scipy's bounded
    Brent search finds it within ``bounds`` (to 1e-6 in log T), in float64 on the host:
    deterministic. A minimum beyond a bound returns that bound (e.g. a model that
    separates its validation set perfectly wants ``T -> 0``).

    Args:
        logits: ``[N, K]`` validation logits.
        target: ``[N]`` class indices.
        bounds: ``(low, high)`` with ``0 < low < high``: the search interval of ``T``.

    Returns:
        ``T`` as a float; NaN when the logits are empty or not all finite (e.g. a model
        that overflowed).
    """
    from scipy.optimize import minimize_scalar

    _check(logits, target)
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    x, y = logits.detach().to("cpu", torch.float64), target.detach().cpu()
    if not len(x) or not bool(torch.isfinite(x).all()):
        return math.nan

    def nll(log_t: float) -> float:
        return F.cross_entropy(x / math.exp(log_t), y).item()

    found = minimize_scalar(nll, bounds=(math.log(low), math.log(high)), method="bounded",
                            options={"xatol": 1e-6})
    return math.exp(found.x)


def class_accuracies(preds: Tensor, target: Tensor, *, num_classes: int) -> Tensor:
    """Per-class accuracy (recall): the share of each class's samples predicted as it.

    Args:
        preds: ``[N, K]`` class scores (logits or probabilities) or ``[N]`` class indices.
        target: ``[N]`` class indices in ``[0, num_classes)``.
        num_classes: K.

    Returns:
        ``[K]`` tensor (torchmetrics ``multiclass_accuracy``, ``average=None``), NaN for a
        class with no sample in ``target``.
    """
    from torchmetrics.functional.classification import multiclass_accuracy

    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    recall = multiclass_accuracy(preds, target, num_classes=num_classes, average=None)
    support = torch.zeros(num_classes, device=target.device).index_add_(
        0, target, torch.ones(target.shape, device=target.device))  # (bincount syncs on CUDA)
    present = support > 0
    return torch.where(present, recall, torch.nan)


def balanced_accuracy(preds: Tensor, target: Tensor, *, num_classes: int) -> Tensor:
    """Balanced accuracy: the mean per-class accuracy over the classes in ``target``
    (sklearn's ``balanced_accuracy_score``). torchmetrics' ``average="macro"`` equals it
    when every class occurs, but counts a predicted class absent from ``target`` as 0.

    Args/Returns: as ``class_accuracies``; a 0-d tensor.
    """
    return class_accuracies(preds, target, num_classes=num_classes).nanmean()


def worst_class_accuracy(preds: Tensor, target: Tensor, *, num_classes: int) -> Tensor:
    """The lowest per-class accuracy over the classes in ``target`` (a long-tail metric:
    the tail class a loss sacrifices).

    Args/Returns: as ``class_accuracies``; a 0-d tensor.
    """
    recall = class_accuracies(preds, target, num_classes=num_classes)
    return torch.where(recall.isnan(), torch.inf, recall).min()
