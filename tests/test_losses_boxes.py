"""Box losses against torchvision.ops: values and gradients, degenerate boxes, reductions."""

from __future__ import annotations

import pytest
import torch
from torchvision import ops

from losscli.losses import Family, Pred, Target, create_loss, get_loss_info
from losscli.losses.boxes import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    iou_loss,
)
from losscli.losses.reduction import _EPS


def _tv_iou_loss(b1: torch.Tensor, b2: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    # batched [N, 1, 1]: the diagonal of the [N, N] matrix would leak NaN gradients of
    # unrelated 0/0 pairs into the comparison
    loss = 1 - ops.box_iou(b1[:, None], b2[:, None]).reshape(-1)
    if reduction == "none":
        return loss
    if loss.numel() == 0:
        return 0 * loss.sum()
    return loss.sum() if reduction == "sum" else loss.mean()


PAIRS = [
    (iou_loss, _tv_iou_loss),
    (generalized_box_iou_loss, ops.generalized_box_iou_loss),
    (distance_box_iou_loss, ops.distance_box_iou_loss),
    (complete_box_iou_loss, ops.complete_box_iou_loss),
]
IDS = ["iou", "giou", "diou", "ciou"]


def random_boxes(n: int, gen: torch.Generator, dtype=torch.float32, scale: float = 10.0):
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * scale
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * scale / 2 + 0.1
    return torch.cat([xy, xy + wh], dim=1)


def degenerate_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Identical, disjoint, touching, nested, zero-width, zero-height and 0x0 boxes."""
    pred = torch.tensor([
        [0.0, 0.0, 2.0, 2.0],  # identical
        [0.0, 0.0, 1.0, 1.0],  # disjoint
        [0.0, 0.0, 1.0, 1.0],  # touching edge
        [0.0, 0.0, 4.0, 4.0],  # nested
        [1.0, 1.0, 1.0, 3.0],  # zero width (pred)
        [1.0, 1.0, 3.0, 1.0],  # zero height (pred)
        [2.0, 2.0, 2.0, 2.0],  # a point
        [0.0, 0.0, 0.0, 0.0],  # two identical points
        [0.0, 0.0, 2.0, 3.0],  # target with zero height
    ])
    target = torch.tensor([
        [0.0, 0.0, 2.0, 2.0],
        [5.0, 6.0, 7.0, 9.0],
        [1.0, 0.0, 2.0, 1.0],
        [1.0, 1.0, 2.0, 3.0],
        [0.0, 0.0, 2.0, 2.0],
        [0.0, 0.0, 2.0, 2.0],
        [1.0, 1.0, 3.0, 3.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 3.0, 1.0],
    ])
    return pred, target


def _value_and_grads(fn, pred, target, reduction="sum", **kwargs):
    pred = pred.clone().requires_grad_(True)
    target = target.clone().requires_grad_(True)
    value = fn(pred, target, reduction=reduction, **kwargs)
    grads = torch.autograd.grad(value.sum(), (pred, target), allow_unused=True)
    return value.detach(), [torch.zeros_like(pred) if g is None else g for g in grads]


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_torchvision_random(ours, ref, reduction, dtype):
    gen = torch.Generator().manual_seed(0)
    # scale 10 with sizes up to 5: a mix of overlapping and disjoint pairs
    pred, target = random_boxes(300, gen, dtype), random_boxes(300, gen, dtype)
    overlap = torch.diagonal(ops.box_iou(pred, target)) > 0
    assert 30 < overlap.sum() < 270  # both cases are exercised
    v, g = _value_and_grads(ours, pred, target, reduction)
    v_ref, g_ref = _value_and_grads(ref, pred, target, reduction)
    assert v.dtype == dtype and v.shape == v_ref.shape
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=IDS)
def test_degenerate_boxes_match_torchvision_where_it_is_finite(ours, ref):
    pred, target = degenerate_pairs()
    v, g = _value_and_grads(ours, pred, target, "none")
    v_ref, g_ref = _value_and_grads(ref, pred, target, "none")
    assert torch.isfinite(v).all()
    assert all(torch.isfinite(x).all() for x in g)
    finite = torch.isfinite(v_ref)
    torch.testing.assert_close(v[finite], v_ref[finite], rtol=1e-5, atol=1e-5)
    rows = torch.isfinite(g_ref[0]).all(1) & torch.isfinite(g_ref[1]).all(1)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a[rows], b[rows], rtol=1e-5, atol=1e-5)
    # where torchvision is not finite (so the comparison above covers all other rows):
    # box_iou's 0/0 for two points; CIoU's atan(w / h) with h == 0
    nan_values, nan_grads = {
        iou_loss: ([7], [7]),
        generalized_box_iou_loss: ([], []),
        distance_box_iou_loss: ([], []),
        complete_box_iou_loss: ([6, 7], [5, 6, 7, 8]),
    }[ours]
    assert (~finite).nonzero().flatten().tolist() == nan_values
    assert (~rows).nonzero().flatten().tolist() == nan_grads


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=IDS)
def test_inverted_boxes_match_torchvision(ours, ref):
    """Unconstrained xyxy regression can predict x2 < x1 or y2 < y1: same as torchvision."""
    gen = torch.Generator().manual_seed(4)
    pred, target = random_boxes(40, gen), random_boxes(40, gen)
    pred[:20] = pred[:20, [2, 1, 0, 3]]  # x2 < x1
    pred[10:30] = pred[10:30, [0, 3, 2, 1]]  # y2 < y1 (both for 10..19)
    v, g = _value_and_grads(ours, pred, target, "none")
    v_ref, g_ref = _value_and_grads(ref, pred, target, "none")
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=IDS)
def test_limiting_cases_by_hand(ours, ref):
    pred, target = degenerate_pairs()
    loss = ours(pred, target, reduction="none")
    assert loss[0] == pytest.approx(0.0, abs=1e-6)  # identical boxes
    assert loss[7] == pytest.approx(1.0, abs=1e-6)  # two points: IoU 0 (eps), no penalty
    # nested box: IoU 2/16, enclosing box = pred (no GIoU penalty), centres 1.5 apart
    assert loss[3] >= 1 - 2 / 16 - 1e-6
    if ours in (iou_loss, generalized_box_iou_loss):
        assert loss[3] == pytest.approx(1 - 2 / 16, abs=1e-6)


def test_hand_computed_values():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]])
    # pair 0: inter 1, union 7, enclosing 9, centres (1,1)-(2,2), diagonal^2 18
    # pair 1: inter 0, union 2, enclosing 3, centres 2 apart, diagonal^2 10
    iou = iou_loss(pred, target, reduction="none")
    torch.testing.assert_close(iou, torch.tensor([1 - 1 / 7, 1.0]))
    giou = generalized_box_iou_loss(pred, target, reduction="none")
    torch.testing.assert_close(giou, torch.tensor([1 - 1 / 7 + 2 / 9, 1 + 1 / 3]))
    diou = distance_box_iou_loss(pred, target, reduction="none")
    torch.testing.assert_close(diou, torch.tensor([1 - 1 / 7 + 2 / 18, 1 + 4 / 10]))
    # equal aspect ratios: CIoU = DIoU
    torch.testing.assert_close(complete_box_iou_loss(pred, target, reduction="none"), diou)


def test_ciou_aspect_term_by_hand():
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    target = torch.tensor([[0.0, 0.0, 1.0, 2.0]])
    v = 4 / torch.pi**2 * (torch.atan(torch.tensor(0.5)) - torch.atan(torch.tensor(2.0))) ** 2
    iou = 1 / 3
    alpha = v / (1 - iou + v)
    diou = distance_box_iou_loss(pred, target, reduction="none")
    torch.testing.assert_close(complete_box_iou_loss(pred, target, reduction="none"),
                               diou + alpha * v)


@pytest.mark.parametrize(("ours", "ref"), PAIRS, ids=IDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty_input(ours, ref, reduction):
    pred = torch.zeros(0, 4, requires_grad=True)
    target = torch.zeros(0, 4)
    loss = ours(pred, target, reduction=reduction)
    expected = ref(pred, target, reduction=reduction)
    assert loss.shape == expected.shape
    if reduction != "none":
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, pred)
        assert grad.shape == (0, 4)


@pytest.mark.parametrize("ours", [p[0] for p in PAIRS[:3]], ids=IDS[:3])
def test_gradcheck_float64(ours):
    gen = torch.Generator().manual_seed(1)
    pred = random_boxes(6, gen, torch.float64, scale=3.0).requires_grad_(True)
    target = random_boxes(6, gen, torch.float64, scale=3.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, t: ours(p, t, reduction="none"), (pred, target))


def _v_and_alpha(p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    def angle(b):
        return torch.atan((b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1]))

    v = 4 / torch.pi**2 * (angle(t) - angle(p)) ** 2
    iou = 1 - iou_loss(p, t, reduction="none")
    return v, v / (1 - iou + v + 1e-7)


def test_gradcheck_ciou_with_alpha_held_constant():
    """CIoU's alpha is a constant for the gradient (paper, torchvision), so the numerical
    derivative is that of ``DIoU + alpha_0 v`` with alpha frozen at the checked point."""
    gen = torch.Generator().manual_seed(1)
    pred = random_boxes(6, gen, torch.float64, scale=3.0).requires_grad_(True)
    target = random_boxes(6, gen, torch.float64, scale=3.0).requires_grad_(True)
    _, alpha0 = _v_and_alpha(pred.detach(), target.detach())

    def frozen(p, t):
        v, alpha = _v_and_alpha(p, t)
        return complete_box_iou_loss(p, t, reduction="none") + (alpha0 - alpha.detach()) * v

    assert torch.autograd.gradcheck(frozen, (pred, target))


@pytest.mark.parametrize("ours", [p[0] for p in PAIRS], ids=IDS)
def test_weight_and_avg_factor(ours):
    gen = torch.Generator().manual_seed(2)
    pred, target = random_boxes(8, gen), random_boxes(8, gen)
    w = torch.rand(8, generator=gen)
    per_box = ours(pred, target, reduction="none")
    torch.testing.assert_close(ours(pred, target, weight=w, avg_factor=3.0),
                               (w * per_box).sum() / (3.0 + _EPS))
    torch.testing.assert_close(ours(pred, target, weight=w, reduction="sum"), (w * per_box).sum())


@pytest.mark.parametrize("name", IDS)
def test_registered_and_spec_params(name):
    info = get_loss_info(name)
    assert (info.family, info.pred, info.target) == (Family.BOXES, Pred.BOXES, Target.BOXES)
    assert info.params == {"eps": 1e-7}
    gen = torch.Generator().manual_seed(3)
    pred, target = random_boxes(5, gen), random_boxes(5, gen)
    torch.testing.assert_close(create_loss(f"{name}:eps=0.001")(pred, target),
                               info.fn(pred, target, eps=1e-3))
    # half precision is computed in fp32 by the registry
    out = create_loss(name)(pred.half(), target.half())
    assert out.dtype == torch.float32


@pytest.mark.parametrize("ours", [p[0] for p in PAIRS], ids=IDS)
def test_integer_boxes_are_upcast(ours):
    pred = torch.tensor([[0, 0, 2, 2]])
    target = torch.tensor([[1, 1, 3, 3]])
    out = ours(pred, target)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ours(pred.float(), target.float()))


@pytest.mark.parametrize("ours", [p[0] for p in PAIRS], ids=IDS)
def test_invalid_arguments(ours):
    boxes = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"same shape \[N, 4\]"):
        ours(boxes, torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        ours(torch.rand(3, 5), torch.rand(3, 5))
    with pytest.raises(ValueError, match="reduction must be one of"):
        ours(boxes, boxes, reduction="avg")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ours(boxes, boxes, eps=-1.0)
