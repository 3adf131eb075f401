"""Valid random ``(pred, target)`` for any registered loss, from its declared kinds.

``make_inputs(info, n, dtype, extreme=..., generator=...)`` looks up a builder by
``(family, pred kind, target kind)``, falling back to ``(None, pred kind, target kind)``, so
a new loss is covered as soon as its kinds are. Shapes (``n`` is the batch; 0 is allowed):

- scores (logits / log-probs / probs): ``[n, C]``; segmentation ``[n, C, 8, 8]``
- index targets: scores' shape without dim 1; binary targets: same shape as the scores
  (Bernoulli on the binary family, one-hot of an index target elsewhere)
- values: ``[n, 3]``; values + variance: pred ``[n, 3, 2]``, target ``[n, 3]``
- boxes: ``[n, 4]`` valid xyxy (x2 > x1, y2 > y1)
- images: ``[n, 3, H, W]`` in [0, 1], ``H = W = image_size(info)`` (32 unless
  ``MIN_IMAGE_SIZE`` asks for more)
- detections: pred ``(offsets [n, A, 4], logits [n, A, C])``, target ``(encoded offsets
  [n, A, 4], labels [n, A] int64)`` with label 0 = background, ``C`` including it.

``extreme=True`` makes logits ±100 (probabilities exactly 0/1 in fp32, log-probs around
-200), values ±100, variances down to 1e-8, saturated 0/1 images and disjoint boxes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from losscli.losses import Family, LossInfo, Pred, Target
from losscli.losses.registry import format_value

__all__ = [
    "DET_ANCHORS",
    "DET_CLASSES",
    "IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "NEEDS",
    "NUM_CLASSES",
    "SEG_SIZE",
    "assert_value_and_grad_close",
    "cast_inputs",
    "float_leaves",
    "image_size",
    "make_inputs",
    "spec_with_needs",
    "with_needs",
]

NUM_CLASSES = 5
SEG_SIZE = 8
IMAGE_SIZE = 32
DET_ANCHORS = 16
DET_CLASSES = 4  # including background (label 0)

# Loss name -> smallest image side it accepts (e.g. MS-SSIM's five scales need > 160).
# Other test helpers add their entries here.
MIN_IMAGE_SIZE: dict[str, int] = {
    "ms_ssim": 161,
}

# Test values of the inputs a loss declares in ``LossInfo.needs`` (for NUM_CLASSES classes):
# a long tail, 100:1 from the first class to the last.
NEEDS: dict[str, object] = {
    "class_counts": (400, 100, 40, 10, 4),
}

Inputs = tuple[Tensor | tuple[Tensor, ...], Tensor | tuple[Tensor, ...]]
Builder = Callable[[LossInfo, int, torch.dtype, bool, torch.Generator], Inputs]


def image_size(info: LossInfo) -> int:
    return max(IMAGE_SIZE, MIN_IMAGE_SIZE.get(info.name, 0))


def _randn(shape, dtype, g) -> Tensor:
    return torch.randn(shape, dtype=dtype, generator=g)


def _rand(shape, dtype, g) -> Tensor:
    return torch.rand(shape, dtype=dtype, generator=g)


def _logits(shape, dtype, extreme: bool, g) -> Tensor:
    x = _randn(shape, dtype, g)
    return torch.where(x >= 0, 100.0, -100.0).to(dtype) if extreme else 2 * x


def _score_shape(info: LossInfo, n: int) -> tuple[int, ...]:
    spatial = (SEG_SIZE, SEG_SIZE) if info.family is Family.SEGMENTATION else ()
    return (n, NUM_CLASSES, *spatial)


def _as_pred_kind(logits: Tensor, info: LossInfo) -> Tensor:
    if info.pred is Pred.LOG_PROBS:
        return F.log_softmax(logits, dim=1)
    if info.pred is Pred.PROBS:
        if info.family is Family.BINARY:
            return torch.sigmoid(logits)
        return F.softmax(logits, dim=1)
    return logits


def _scores(info, n, dtype, extreme, g) -> Inputs:
    shape = _score_shape(info, n)
    pred = _as_pred_kind(_logits(shape, dtype, extreme, g), info)
    index = torch.randint(NUM_CLASSES, (shape[0], *shape[2:]), generator=g)
    if info.target is Target.INDEX:
        return pred, index
    if info.family is Family.BINARY:
        return pred, torch.bernoulli(torch.full(shape, 0.5, dtype=dtype), generator=g)
    return pred, F.one_hot(index, NUM_CLASSES).movedim(-1, 1).to(dtype)


def _values(info, n, dtype, extreme, g) -> Inputs:
    pred = _logits((n, 3), dtype, True, g) if extreme else _randn((n, 3), dtype, g)
    return pred, _randn((n, 3), dtype, g)


def _values_var(info, n, dtype, extreme, g) -> Inputs:
    mean, target = _values(info, n, dtype, extreme, g)
    if extreme:  # variances from 1e-8 (below the usual eps) to 1e3
        var = 10 ** (11 * _rand((n, 3), dtype, g) - 8)
    else:
        var = 0.2 + _rand((n, 3), dtype, g)
    return torch.stack([mean, var], dim=-1), target


def _xyxy(xy: Tensor, wh: Tensor) -> Tensor:
    return torch.cat([xy, xy + wh], dim=-1)


def _boxes(info, n, dtype, extreme, g) -> Inputs:
    xy, wh = 10 * _rand((n, 2), dtype, g), 1 + 5 * _rand((n, 2), dtype, g)
    if extreme:  # far apart: no overlap
        t_xy, t_wh = xy + 100, 1 + 5 * _rand((n, 2), dtype, g)
    else:
        t_xy = xy + 0.5 * _randn((n, 2), dtype, g)
        t_wh = wh * torch.exp(0.3 * _randn((n, 2), dtype, g))
    return _xyxy(xy, wh), _xyxy(t_xy, t_wh)


def _images(info, n, dtype, extreme, g) -> Inputs:
    shape = (n, 3, image_size(info), image_size(info))
    if extreme:
        half = torch.full(shape, 0.5, dtype=dtype)
        return torch.bernoulli(half, generator=g), torch.bernoulli(half, generator=g)
    pred = _rand(shape, dtype, g)
    return pred, (pred + 0.1 * _randn(shape, dtype, g)).clamp(0, 1)


def _detections(info, n, dtype, extreme, g) -> Inputs:
    offsets = _randn((n, DET_ANCHORS, 4), dtype, g)
    logits = _logits((n, DET_ANCHORS, DET_CLASSES), dtype, extreme, g)
    encoded = 0.5 * _randn((n, DET_ANCHORS, 4), dtype, g)
    labels = torch.randint(DET_CLASSES, (n, DET_ANCHORS), generator=g)
    labels[:, ::2] = 0  # half the anchors are background
    labels[:, 1] = 1  # and every image has a positive
    return (offsets, logits), (encoded, labels)


_SCORE_KINDS = (Pred.LOGITS, Pred.LOG_PROBS, Pred.PROBS)
_BUILDERS: dict[tuple[Family | None, Pred, Target], Builder] = {
    **{(None, p, t): _scores for p in _SCORE_KINDS for t in (Target.INDEX, Target.BINARY)},
    (None, Pred.VALUES, Target.VALUES): _values,
    (None, Pred.VALUES_VAR, Target.VALUES): _values_var,
    (None, Pred.BOXES, Target.BOXES): _boxes,
    (None, Pred.IMAGES, Target.IMAGES): _images,
    (None, Pred.DETECTIONS, Target.DETECTIONS): _detections,
}


def make_inputs(
    info: LossInfo,
    n: int,
    dtype: torch.dtype = torch.float32,
    *,
    extreme: bool = False,
    generator: torch.Generator | None = None,
) -> Inputs:
    """``(pred, target)`` valid for the loss ``info`` with batch size ``n`` (see module doc).

    Floating tensors are ``dtype`` and do not require grad (see ``float_leaves``).
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    key = (info.family, info.pred, info.target)
    builder = _BUILDERS.get(key) or _BUILDERS.get((None, info.pred, info.target))
    if builder is None:
        raise KeyError(f"no test inputs for {info.name!r}: family/pred/target {key}")
    return builder(info, n, dtype, extreme, g)


def float_leaves(x: Tensor | tuple[Tensor, ...]) -> list[Tensor]:
    """Mark the floating tensors of ``x`` (a tensor or tuple) as requiring grad."""
    parts = x if isinstance(x, tuple) else (x,)
    return [t.requires_grad_() for t in parts if t.is_floating_point()]


def cast_inputs(x: Tensor | tuple[Tensor, ...], dtype: torch.dtype):
    """``x`` with its floating tensors cast to ``dtype`` (integer tensors unchanged)."""
    if isinstance(x, tuple):
        return tuple(cast_inputs(t, dtype) for t in x)
    return x.to(dtype) if x.is_floating_point() else x


def assert_value_and_grad_close(
    ours: Callable[..., Tensor],
    ref: Callable[..., Tensor],
    *inputs: Tensor,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> None:
    """``ours(*inputs)`` and ``ref(*inputs)`` agree in value and in the gradient of their
    sum w.r.t. every floating input (each side gets its own copies of the inputs)."""

    def run(fn):
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        out = fn(*xs)
        leaves = [x for x in xs if x.requires_grad]
        return out, torch.autograd.grad(out.sum(), leaves, allow_unused=True,
                                        materialize_grads=True)

    (a, grads_a), (b, grads_b) = run(ours), run(ref)
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, atol=atol, rtol=rtol)


def with_needs(info: LossInfo) -> LossInfo:
    """``info`` with the inputs it declares in ``needs`` bound to their ``NEEDS`` values."""
    if not info.needs:
        return info
    bound = functools.partial(info.fn, **{k: NEEDS[k] for k in info.needs})
    return dataclasses.replace(info, fn=bound)


def spec_with_needs(info: LossInfo) -> str:
    """A ``create_loss`` spec for ``info`` that passes its ``needs`` as spec parameters."""
    params = ",".join(f"{k}={format_value(NEEDS[k])}" for k in sorted(info.needs))
    return f"{info.name}:{params}" if params else info.name
