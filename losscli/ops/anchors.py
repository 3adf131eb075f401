"""SSD default boxes (anchors) for a set of square feature maps.

The layout is torchvision's ``DefaultBoxGenerator`` (Liu et al., SSD, ECCV 2016, p. 6):
feature map after feature map, row-major over locations, and at each location the boxes
``(s_k, s_k)``, ``(s'_k, s'_k)`` with ``s'_k = sqrt(s_k s_{k+1})``, then ``(s_k sqrt(a),
s_k / sqrt(a))`` and its transpose for each aspect ratio ``a``. A detection head whose
output ``[B, n * D, H, W]`` is permuted to ``[B, H, W, n, D]`` and flattened lines up with
these boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["anchors_per_location", "default_boxes"]


def anchors_per_location(aspect_ratios: Sequence[float]) -> int:
    """Boxes per feature-map location: two squares plus two per aspect ratio."""
    return 2 + 2 * len(aspect_ratios)


def _wh_pairs(s_k: float, s_next: float, aspect_ratios: Sequence[float]) -> list[list[float]]:
    s_prime = math.sqrt(s_k * s_next)
    pairs = [[s_k, s_k], [s_prime, s_prime]]
    for ratio in aspect_ratios:
        w, h = s_k * math.sqrt(ratio), s_k / math.sqrt(ratio)
        pairs += [[w, h], [h, w]]
    return pairs


def default_boxes(
    feature_sizes: Sequence[int],
    scales: Sequence[float],
    aspect_ratios: Sequence[float] = (2.0,),
    clip: bool = True,
) -> Tensor:
    """SSD default boxes in normalised ``(cx, cy, w, h)`` coordinates (image = unit square).

    Args:
        feature_sizes: side ``f_k`` of each square feature map, e.g. ``(8, 4, 2)``.
        scales: ``len(feature_sizes) + 1`` box scales ``s_k`` relative to the image side;
            the last one only sets the extra square box of the last map.
        aspect_ratios: ratios ``a > 0`` (``w / h``) used, with ``1 / a``, on every map.
        clip: clamp widths and heights to ``[0, 1]`` (torchvision's ``clip``).

    Returns:
        ``[A, 4]`` float32 anchors, ``A = sum(f_k^2) * anchors_per_location(aspect_ratios)``.
    """
    if len(scales) != len(feature_sizes) + 1:
        raise ValueError(f"scales must have len(feature_sizes) + 1 = {len(feature_sizes) + 1} "
                         f"entries, got {len(scales)}")
    if any(s <= 0 for s in scales) or any(f < 1 for f in feature_sizes):
        raise ValueError(f"scales must be > 0 and feature sizes >= 1, got {tuple(scales)} and "
                         f"{tuple(feature_sizes)}")
    if any(a <= 0 for a in aspect_ratios):
        raise ValueError(f"aspect ratios must be > 0, got {tuple(aspect_ratios)}")
    boxes = []
    for k, f in enumerate(feature_sizes):
        wh = torch.tensor(_wh_pairs(scales[k], scales[k + 1], aspect_ratios))
        if clip:
            wh = wh.clamp(0.0, 1.0)
        centers = (torch.arange(f, dtype=torch.float32) + 0.5) / f
        cy, cx = torch.meshgrid(centers, centers, indexing="ij")
        xy = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=-1)  # [f*f, 2], row-major
        n = wh.shape[0]
        boxes.append(torch.cat([xy.repeat_interleave(n, dim=0), wh.repeat(f * f, 1)], dim=1))
    return torch.cat(boxes)
