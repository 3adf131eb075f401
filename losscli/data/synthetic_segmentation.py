"""Synthetic semantic segmentation: shapes of several classes on noisy textured backgrounds.

Every image is one grey channel ``[1, S, S]``: a smooth random texture plus a linear
gradient (the background), shapes drawn on top with a random brightness offset, and
Gaussian pixel noise. The mask ``[S, S]`` holds 0 for background and ``k`` for a pixel of
shape class ``k`` (1 = circle, 2 = square, 3 = triangle, 4 = ring, 5 = cross, 6 = bar);
triangles and bars are randomly rotated, squares and crosses stay axis-aligned (a rotated
square is hard to tell from a circle at a few pixels), and the brightness offset is random,
so a class is told apart by its outline. Later shapes occlude earlier ones, in the image
and in the mask alike.

Class imbalance comes from ``fg_fraction``, the expected share of foreground pixels. Shape
centres are uniform over the image (a Boolean model), so ``m`` shapes of mean area ``a``
per image cover ``1 - exp(-m a / S^2)`` of it; the number of shapes per image is drawn
from a Poisson law whose mean solves that for ``fg_fraction``. When that mean would be
below one shape per image, the shapes shrink instead (area proportional to the fraction).
Shapes cut by the border make the realised fraction a little lower than asked; it is
returned with the data (``SegmentationSet.fg_fraction``).

Generation is vectorised over images (one loop over shape slots, none over pixels) and
deterministic: the same arguments and ``seed`` give the same tensors on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SHAPE_CLASSES", "SegmentationSet", "make_segmentation"]

SHAPE_CLASSES = ("circle", "square", "triangle", "ring", "cross", "bar")

# Area of each shape at "radius" 1, in the order of SHAPE_CLASSES (see _inside).
_UNIT_AREA = (math.pi, 4 * 0.8**2, 3 * math.sqrt(3) / 4 * 1.2**2,
              math.pi * (1 - 0.5**2), 2 * (2 * 0.7) - 0.7**2, 2.4 * 0.8)
_ROTATED = ("triangle", "bar")
_RADIUS = (0.12, 0.2)  # shape radius range, as a fraction of the image side
_TEXTURE = 0.3  # amplitude of the smooth background texture
_GRADIENT = 0.5  # largest brightness change across the image from the linear gradient
_CONTRAST = (0.5, 1.0)  # brightness a shape adds to the background under it


@dataclass
class SegmentationSet:
    """Images ``[N, 1, S, S]`` (float32), masks ``[N, S, S]`` (int64, 0 = background)
    and the realised foreground fraction of the masks."""

    images: Tensor
    masks: Tensor
    fg_fraction: float


def _check(n: int, image_size: int, num_classes: int, fg_fraction: float, noise: float) -> None:
    if n < 0:
        raise ValueError(f"the number of images must be >= 0, got {n}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes (shape classes) must be in [1, {len(SHAPE_CLASSES)}] "
                         f"({', '.join(SHAPE_CLASSES)}), got {num_classes}")
    if not 0 < fg_fraction < 1:
        raise ValueError(f"fg_fraction must be in (0, 1), got {fg_fraction}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")


def _inside(k: int, u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Membership in a shape of class ``k`` (1-based) at offsets ``(u, v)`` from its centre,
    already rotated, for radius ``r``; booleans shaped like ``u``."""
    name = SHAPE_CLASSES[k - 1]
    if name in ("circle", "ring"):
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2) if name == "ring" else d2 <= r * r
    if name == "triangle":  # equilateral, circumradius 1.2 r: half-planes at distance 0.6 r
        sides = [u * math.cos(a) + v * math.sin(a) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        return torch.maximum(torch.maximum(sides[0], sides[1]), sides[2]) <= 0.6 * r
    au, av = u.abs(), v.abs()
    if name == "square":
        return torch.maximum(au, av) <= 0.8 * r
    if name == "cross":
        return ((au <= r) & (av <= 0.35 * r)) | ((av <= r) & (au <= 0.35 * r))
    return (au <= 1.2 * r) & (av <= 0.4 * r)  # bar


def _background(n: int, size: int, gen: torch.Generator) -> Tensor:
    """Smoothed noise (a 4x4 random grid, bicubic upsampling) plus a random linear ramp."""
    coarse = torch.randn(n, 1, 4, 4, generator=gen)
    texture = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    angle = torch.rand(n, 1, 1, 1, generator=gen) * 2 * math.pi
    slope = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * _GRADIENT
    t = torch.linspace(-0.5, 0.5, size)
    ramp = slope * (torch.cos(angle) * t.view(1, 1, 1, -1) + torch.sin(angle) * t.view(1, 1, -1, 1))
    return _TEXTURE * texture + ramp


def _shape_plan(size: int, num_classes: int, fg_fraction: float) -> tuple[float, float]:
    """Mean shapes per image and the radius scale that give ``fg_fraction`` on average."""
    lo, hi = _RADIUS
    mean_r2 = (hi**3 - lo**3) / (3 * (hi - lo)) * size**2  # E[r^2] for r ~ U(lo, hi) * size
    mean_area = sum(_UNIT_AREA[:num_classes]) / num_classes * mean_r2
    shapes = -math.log1p(-fg_fraction) * size**2 / mean_area
    if shapes >= 1:
        return shapes, 1.0
    return 1.0, math.sqrt(shapes)  # fewer than one shape per image: smaller shapes instead


def make_segmentation(
    n: int,
    *,
    image_size: int = 32,
    num_classes: int = 3,
    fg_fraction: float = 0.2,
    noise: float = 0.1,
    seed: int = 0,
) -> SegmentationSet:
    """Generate ``n`` images and masks from ``seed`` (see the module docstring).

    Args:
        n: number of images.
        image_size: side ``S`` in pixels (>= 8).
        num_classes: shape classes used, the first ``num_classes`` of ``SHAPE_CLASSES``
            (1-6); masks take values ``0..num_classes``.
        fg_fraction: expected share of foreground pixels, in (0, 1).
        noise: standard deviation of the Gaussian pixel noise (shape offsets are 0.5-1).
        seed: the data seed; everything is drawn from one ``torch.Generator``.

    Returns:
        A ``SegmentationSet`` of CPU tensors.
    """
    _check(n, image_size, num_classes, fg_fraction, noise)
    gen = torch.Generator().manual_seed(seed)
    s = image_size
    background = _background(n, s, gen).squeeze(1)
    images = background.clone()
    masks = torch.zeros(n, s, s, dtype=torch.long)
    mean_shapes, scale = _shape_plan(s, num_classes, fg_fraction)
    counts = torch.poisson(torch.full((n,), mean_shapes), generator=gen)
    slots = math.ceil(mean_shapes + 4 * math.sqrt(mean_shapes) + 1)  # P(more) is negligible
    grid = torch.arange(s, dtype=torch.float32) + 0.5  # pixel centres
    ys, xs = grid.view(1, -1, 1), grid.view(1, 1, -1)
    lo, hi = _RADIUS
    # every random number up front, in a fixed order: [slots, n] each
    cls = torch.randint(1, num_classes + 1, (slots, n), generator=gen)
    cx, cy, r01, turn, c01 = torch.rand(5, slots, n, 1, 1, generator=gen)
    radius = (lo + (hi - lo) * r01) * s * scale
    angle = turn * 2 * math.pi
    contrast = _CONTRAST[0] + (_CONTRAST[1] - _CONTRAST[0]) * c01
    for slot in range(slots):
        for k in range(1, num_classes + 1):
            # the images whose shape in this slot exists and has class k (a host sync;
            # fine at load time, and it skips most of the work)
            ids = ((counts > slot) & (cls[slot] == k)).nonzero().squeeze(1)
            if ids.numel() == 0:
                continue
            dx, dy = xs - cx[slot, ids] * s, ys - cy[slot, ids] * s
            turned = angle[slot, ids] * (SHAPE_CLASSES[k - 1] in _ROTATED)
            cos, sin = torch.cos(turned), torch.sin(turned)
            inside = _inside(k, dx * cos + dy * sin, dy * cos - dx * sin, radius[slot, ids])
            # occlusion: the new shape replaces what is under it, earlier shapes included
            images[ids] = torch.where(inside, background[ids] + contrast[slot, ids], images[ids])
            masks[ids] = torch.where(inside, k, masks[ids])
    images = images + noise * torch.randn(n, s, s, generator=gen)
    fg = (masks > 0).float().mean().item() if n else math.nan
    return SegmentationSet(images.unsqueeze(1).contiguous(), masks, fg)
