"""SSD box coding: offsets relative to anchors (with variances) and anchor matching.

Conventions (shared with the detection losses, ``Target.DETECTIONS``):

- ground-truth and decoded boxes are ``(x1, y1, x2, y2)``; anchors are given as
  ``(cx, cy, w, h)`` to ``encode``/``decode`` and as ``(x1, y1, x2, y2)`` to ``match``
  (``torchvision.ops.box_convert`` converts);
- labels are ``0`` for background, ``1..C-1`` for object classes, ``-1`` for anchors to
  ignore; ground-truth labels passed to ``match`` already use ``1..C-1``.

The offsets are those of Liu et al., SSD (ECCV 2016) and ssd.pytorch's ``box_utils``;
variances ``(0.1, 0.2)`` equal torchvision's ``BoxCoder(weights=(10, 10, 5, 5))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou

__all__ = ["build_targets", "decode", "encode", "match"]


def _check_variances(variances: Sequence[float]) -> tuple[float, float]:
    if len(variances) != 2 or not all(v > 0 for v in variances):
        raise ValueError(
            f"variances must be two positive numbers (centre, size), got {tuple(variances)!r}"
        )
    return float(variances[0]), float(variances[1])


def _check_last_dim(t: Tensor, name: str) -> None:
    if t.dim() == 0 or t.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(t.shape)}")


def encode(
    gt_boxes_xyxy: Tensor, anchors_cxcywh: Tensor, variances: Sequence[float] = (0.1, 0.2)
) -> Tensor:
    """Offsets of boxes relative to anchors: the regression targets of SSD.

    ``((gx - ax) / (v0 aw), (gy - ay) / (v0 ah), log(gw / aw) / v1, log(gh / ah) / v1)``.

    Args:
        gt_boxes_xyxy: boxes ``[..., A, 4]`` as ``(x1, y1, x2, y2)``, one per anchor;
            width and height must be positive (a zero-size box encodes to ``-inf``).
        anchors_cxcywh: anchors ``[A, 4]`` (or broadcastable) as ``(cx, cy, w, h)``.
        variances: ``(centre, size)`` scales of the offsets.

    Returns:
        Offsets ``[..., A, 4]``; ``decode`` inverts them.
    """
    v_center, v_size = _check_variances(variances)
    _check_last_dim(gt_boxes_xyxy, "gt_boxes_xyxy")
    _check_last_dim(anchors_cxcywh, "anchors_cxcywh")
    gt = box_convert(gt_boxes_xyxy, "xyxy", "cxcywh")
    center = (gt[..., :2] - anchors_cxcywh[..., :2]) / (v_center * anchors_cxcywh[..., 2:])
    size = torch.log(gt[..., 2:] / anchors_cxcywh[..., 2:]) / v_size
    return torch.cat([center, size], dim=-1)


def decode(
    offsets: Tensor, anchors_cxcywh: Tensor, variances: Sequence[float] = (0.1, 0.2)
) -> Tensor:
    """Boxes ``(x1, y1, x2, y2)`` from offsets relative to anchors (inverse of ``encode``).

    Differentiable, so a box loss (GIoU, ...) can train the offsets through it.

    Args:
        offsets: ``[..., A, 4]`` as produced by ``encode`` or a box head.
        anchors_cxcywh: anchors ``[A, 4]`` (or broadcastable) as ``(cx, cy, w, h)``.
        variances: ``(centre, size)`` scales used when encoding.

    Returns:
        Boxes ``[..., A, 4]`` as ``(x1, y1, x2, y2)``.
    """
    v_center, v_size = _check_variances(variances)
    _check_last_dim(offsets, "offsets")
    _check_last_dim(anchors_cxcywh, "anchors_cxcywh")
    center = anchors_cxcywh[..., :2] + offsets[..., :2] * v_center * anchors_cxcywh[..., 2:]
    size = anchors_cxcywh[..., 2:] * torch.exp(offsets[..., 2:] * v_size)
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def match(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    anchors_xyxy: Tensor,
    iou_threshold: float = 0.5,
    ignore_threshold: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Assign each anchor of one image a ground-truth box (SSD's matching strategy).

    An anchor whose best IoU with any box is ``>= iou_threshold`` takes that box's label;
    every box also takes its own best anchor whatever the IoU (if two boxes share a best
    anchor, the later box wins, as ssd.pytorch's loop). Other anchors are background
    (0), or ignored (-1) when their best IoU is ``>= ignore_threshold`` (RetinaNet's
    band). Vectorised over anchors; no host sync.

    Args:
        gt_boxes: ground-truth boxes ``[G, 4]`` as ``(x1, y1, x2, y2)``; ``G`` may be 0.
        gt_labels: their labels ``[G]`` in ``1..C-1`` (integer).
        anchors_xyxy: anchors ``[A, 4]`` as ``(x1, y1, x2, y2)``.
        iou_threshold: IoU from which an anchor is positive.
        ignore_threshold: optional lower IoU from which a non-positive anchor is ignored.

    Returns:
        ``(labels [A] int64, matched_boxes [A, 4])``; every anchor gets its best-overlap
        box (the anchor itself when ``G == 0``) so that ``encode`` is finite everywhere.
    """
    _check_match_args(gt_boxes, gt_labels, anchors_xyxy, iou_threshold, ignore_threshold)
    num_anchors = anchors_xyxy.shape[0]
    if gt_boxes.shape[0] == 0:  # a shape, not a value: no sync
        labels = torch.zeros(num_anchors, dtype=torch.int64, device=anchors_xyxy.device)
        return labels, anchors_xyxy.clone()
    iou = box_iou(gt_boxes, anchors_xyxy)  # [G, A]
    best_iou, best_gt = iou.max(dim=0)  # per anchor
    best_anchor = iou.argmax(dim=1)  # per gt
    # Force each gt onto its best anchor; the highest gt index wins a shared anchor.
    gt_index = torch.arange(gt_boxes.shape[0], device=gt_boxes.device)
    forced = torch.full_like(best_gt, -1).scatter_reduce(0, best_anchor, gt_index, "amax")
    is_forced = forced >= 0
    best_gt = torch.where(is_forced, forced, best_gt)
    labels = gt_labels.to(torch.int64)[best_gt]
    positive = is_forced | (best_iou >= iou_threshold)
    background = torch.zeros_like(labels)
    if ignore_threshold is not None:
        background = torch.where(best_iou >= ignore_threshold, background - 1, background)
    return torch.where(positive, labels, background), gt_boxes[best_gt]


def _check_match_args(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    anchors_xyxy: Tensor,
    iou_threshold: float,
    ignore_threshold: float | None,
) -> None:
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must have shape [G, 4], got {tuple(gt_boxes.shape)}")
    if anchors_xyxy.dim() != 2 or anchors_xyxy.shape[1] != 4:
        raise ValueError(f"anchors_xyxy must have shape [A, 4], got {tuple(anchors_xyxy.shape)}")
    if gt_labels.shape != gt_boxes.shape[:1] or gt_labels.is_floating_point():
        raise ValueError(
            f"gt_labels must be integer labels of shape [{gt_boxes.shape[0]}], got "
            f"{tuple(gt_labels.shape)} {gt_labels.dtype}"
        )
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if ignore_threshold is not None and not 0.0 <= ignore_threshold <= iou_threshold:
        raise ValueError(
            f"ignore_threshold must be in [0, iou_threshold={iou_threshold}], "
            f"got {ignore_threshold}"
        )


def build_targets(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    anchors_cxcywh: Tensor,
    iou_threshold: float = 0.5,
    variances: Sequence[float] = (0.1, 0.2),
    ignore_threshold: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Detection targets for a batch: ``match`` then ``encode``, one image at a time.

    Args:
        gt_boxes: per image, boxes ``[G_i, 4]`` as ``(x1, y1, x2, y2)``.
        gt_labels: per image, labels ``[G_i]`` in ``1..C-1``.
        anchors_cxcywh: anchors ``[A, 4]`` as ``(cx, cy, w, h)``.
        iou_threshold, ignore_threshold: see ``match``.
        variances: see ``encode``.

    Returns:
        ``(offsets [B, A, 4], labels [B, A] int64)``, the ``target`` of ``ssd``/``focal_det``.
    """
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(
            f"gt_boxes and gt_labels must list the same images, got {len(gt_boxes)} "
            f"and {len(gt_labels)}"
        )
    anchors_xyxy = box_convert(anchors_cxcywh, "cxcywh", "xyxy")
    offsets, labels = [], []
    for boxes, classes in zip(gt_boxes, gt_labels, strict=True):
        image_labels, matched = match(boxes, classes, anchors_xyxy, iou_threshold,
                                      ignore_threshold)
        offsets.append(encode(matched, anchors_cxcywh, variances))
        labels.append(image_labels)
    if not offsets:
        return anchors_cxcywh.new_zeros(0, *anchors_cxcywh.shape), torch.zeros(
            0, anchors_cxcywh.shape[0], dtype=torch.int64, device=anchors_cxcywh.device)
    return torch.stack(offsets), torch.stack(labels)
