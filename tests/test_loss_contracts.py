"""Contracts every registered loss keeps, parametrised over ``list_losses()``.

A loss registered anywhere (by any module imported from ``losscli.losses``) is covered the
moment it is registered: output shape per reduction, invalid reduction, finite values and
gradients for extreme inputs, empty batch, float64 gradcheck, half-precision inputs.
"""

from __future__ import annotations

import pytest
import torch
from loss_inputs import cast_inputs, float_leaves, make_inputs, spec_with_needs, with_needs

from losscli.losses import LossInfo, Pred, create_loss, list_losses

# Losses that document they cannot take an empty batch: name -> reason.
SKIP_EMPTY: dict[str, str] = {}

# Known failures of losses owned by other modules: (test, loss name) -> reason.
XFAIL: dict[tuple[str, str], str] = {
    ("gradcheck", "ciou"): "by design: alpha is a constant for the gradient (CIoU paper, "
    "torchvision), so the gradient is not the derivative of the value",
}

# Inputs above this many elements are gradchecked in fast mode (one random direction).
_FULL_GRADCHECK_MAX = 64


def _cases(test: str) -> list:
    params = []
    for info in list_losses():
        marks = []
        if info.needs_weights:
            marks.append(pytest.mark.skip(reason="needs pretrained weights"))
        if (test, info.name) in XFAIL:
            marks.append(pytest.mark.xfail(reason=XFAIL[(test, info.name)], strict=True))
        params.append(pytest.param(with_needs(info), id=info.name, marks=marks))
    return params


def _inputs(info: LossInfo, n: int = 3, dtype=torch.float32, extreme: bool = False):
    if info.pred is Pred.IMAGES:
        n = min(n, 2)  # images are large (MS-SSIM needs 161 px)
    g = torch.Generator().manual_seed(1234)
    return make_inputs(info, n, dtype, extreme=extreme, generator=g)


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("info", _cases("shapes"))
def test_output_shape_per_reduction(info: LossInfo) -> None:
    pred, target = _inputs(info)
    none = info.fn(pred, target, reduction="none")
    assert isinstance(none, torch.Tensor) and none.dtype == torch.float32
    for reduction in ("mean", "sum"):
        out = info.fn(pred, target, reduction=reduction)
        assert out.shape == (), f"{reduction} must give a scalar, got {tuple(out.shape)}"
        assert torch.isfinite(out)


@pytest.mark.parametrize("info", _cases("sum_of_none"))
def test_sum_equals_sum_of_none(info: LossInfo) -> None:
    pred, target = _inputs(info)
    none = info.fn(pred, target, reduction="none")
    total = info.fn(pred, target, reduction="sum")
    torch.testing.assert_close(total, none.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("info", _cases("invalid_reduction"))
def test_invalid_reduction_raises(info: LossInfo) -> None:
    pred, target = _inputs(info)
    with pytest.raises(ValueError, match="reduction"):
        info.fn(pred, target, reduction="avg")


@pytest.mark.parametrize("info", _cases("extreme"))
def test_finite_for_extreme_inputs(info: LossInfo) -> None:
    pred, target = _inputs(info, extreme=True)
    leaves = float_leaves(pred)
    for reduction in ("mean", "sum"):
        loss = info.fn(pred, target, reduction=reduction)
        assert torch.isfinite(loss), f"{reduction}: {loss}"
        if info.differentiable:
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            assert _all_finite(g for g in grads if g is not None), f"{reduction}: grads"


@pytest.mark.parametrize("info", _cases("empty"))
def test_empty_batch_is_zero_with_gradient(info: LossInfo) -> None:
    if info.name in SKIP_EMPTY:
        pytest.skip(SKIP_EMPTY[info.name])
    pred, target = _inputs(info, n=0)
    leaves = float_leaves(pred)
    for reduction in ("mean", "sum"):
        loss = info.fn(pred, target, reduction=reduction)
        assert loss.shape == () and float(loss.detach()) == 0.0, f"{reduction}: {loss}"
        if info.differentiable:
            assert loss.requires_grad, f"{reduction}: no graph"
            grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
            assert [g.shape for g in grads] == [t.shape for t in leaves]


@pytest.mark.parametrize("info", _cases("gradcheck"))
def test_gradcheck_float64(info: LossInfo) -> None:
    if not info.differentiable:
        pytest.skip("declared not differentiable")
    n = 1 if info.pred is Pred.IMAGES else 2
    pred, target = _inputs(info, n=n, dtype=torch.float64)
    leaves = float_leaves(pred)
    is_tuple = isinstance(pred, tuple)

    def fn(*xs):
        return info.fn(tuple(xs) if is_tuple else xs[0], target, reduction="mean")

    fast = sum(t.numel() for t in leaves) > _FULL_GRADCHECK_MAX
    assert torch.autograd.gradcheck(fn, tuple(leaves), fast_mode=fast)


@pytest.mark.parametrize("info", _cases("bf16"))
def test_bf16_inputs_through_create_loss(info: LossInfo) -> None:
    pred, target = _inputs(info)
    pred16, target16 = cast_inputs(pred, torch.bfloat16), cast_inputs(target, torch.bfloat16)
    loss = create_loss(spec_with_needs(info))(pred16, target16)
    assert loss.dtype == torch.float32
    # computed in fp32 on the bf16-rounded values
    expected = info.fn(cast_inputs(pred16, torch.float32), cast_inputs(target16, torch.float32))
    torch.testing.assert_close(loss, expected)
