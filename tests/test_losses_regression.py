"""Regression losses and ``reduce_loss`` against torch and hand-computed values (fp32
values and gradients to 1e-5; float64 gradcheck for non-default parameters)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_inputs import assert_value_and_grad_close

from losscli.losses import create_loss, get_loss_info, reduce_loss

REDUCTIONS = ["none", "mean", "sum"]
EPS32 = torch.finfo(torch.float32).eps


def fn(name: str):
    return get_loss_info(name).fn


def pred_and_target(shape=(6, 3), seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# ---------------------------------------------------------------- torch equivalents

TORCH_CASES = [
    ("mse", {}, lambda x, t, r: F.mse_loss(x, t, reduction=r)),
    ("l1", {}, lambda x, t, r: F.l1_loss(x, t, reduction=r)),
    ("smooth_l1", {}, lambda x, t, r: F.smooth_l1_loss(x, t, reduction=r)),
    ("smooth_l1", {"beta": 0.3}, lambda x, t, r: F.smooth_l1_loss(x, t, beta=0.3, reduction=r)),
    ("huber", {}, lambda x, t, r: torch.nn.HuberLoss(reduction=r)(x, t)),
    ("huber", {"delta": 0.4}, lambda x, t, r: torch.nn.HuberLoss(reduction=r, delta=0.4)(x, t)),
]


@pytest.mark.parametrize(("name", "params", "ref"), TORCH_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch(name, params, ref, reduction):
    x, t = pred_and_target()
    assert_value_and_grad_close(
        lambda x: fn(name)(x, t, reduction=reduction, **params),
        lambda x: ref(x, t, reduction),
        x,
    )


def test_huber_with_huge_delta_is_half_mse():
    x, t = pred_and_target()
    assert_value_and_grad_close(
        lambda x: fn("huber")(x, t, delta=1e6), lambda x: 0.5 * F.mse_loss(x, t), x
    )


def test_huber_is_delta_times_smooth_l1():
    x, t = pred_and_target()
    assert_value_and_grad_close(
        lambda x: fn("huber")(x, t, delta=0.7, reduction="none"),
        lambda x: 0.7 * F.smooth_l1_loss(x, t, beta=0.7, reduction="none"),
        x,
    )


def test_smooth_l1_beta0_is_l1():
    x, t = pred_and_target()
    assert_value_and_grad_close(
        lambda x: fn("smooth_l1")(x, t, beta=0.0), lambda x: F.l1_loss(x, t), x
    )


# ------------------------------------------------------------------------ log_cosh


def test_log_cosh_matches_formula():
    x, t = pred_and_target(scale=3.0)
    assert_value_and_grad_close(
        lambda x: fn("log_cosh")(x, t, reduction="none"),
        lambda x: torch.log(torch.cosh(x.double() - t.double())).float(),
        x,
    )


def test_log_cosh_large_residuals_are_stable():
    # cosh overflows fp32 beyond ~89; the loss tends to |x| - log 2 with gradient sign(x)
    x = torch.tensor([-1e4, -95.0, 95.0, 1e4, 1e30], requires_grad=True)
    loss = fn("log_cosh")(x, torch.zeros(5), reduction="none")
    torch.testing.assert_close(loss, x.detach().abs() - math.log(2))
    (grad,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(grad, torch.sign(x.detach()))


# --------------------------------------------------------------------- charbonnier


@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_charbonnier_matches_formula(eps):
    x, t = pred_and_target()
    x[0, 0] = t[0, 0]  # zero residual: value eps, gradient 0
    assert_value_and_grad_close(
        lambda x: fn("charbonnier")(x, t, eps=eps, reduction="none"),
        lambda x: torch.sqrt((x - t) ** 2 + eps**2),
        x,
    )


def test_charbonnier_small_eps_tends_to_l1():
    x, t = pred_and_target()
    torch.testing.assert_close(fn("charbonnier")(x, t, eps=1e-6), F.l1_loss(x, t))


# ------------------------------------------------------------------------ quantile


def test_quantile_hand_computed():
    pred = torch.tensor([1.0, 3.0, 2.0])
    target = torch.tensor([2.0, 1.0, 2.0])  # under by 1, over by 2, exact
    loss = fn("quantile")(pred, target, q=0.9, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.9, 0.2, 0.0]))


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_quantile_matches_formula(q):
    x, t = pred_and_target()

    def ref(x):
        r = t - x
        return torch.where(r >= 0, q * r, (q - 1) * r)

    assert_value_and_grad_close(lambda x: fn("quantile")(x, t, q=q, reduction="none"), ref, x)


def test_quantile_median_is_half_l1():
    x, t = pred_and_target()
    assert_value_and_grad_close(
        lambda x: fn("quantile")(x, t), lambda x: 0.5 * F.l1_loss(x, t), x
    )


# -------------------------------------------------------------------- gaussian_nll


def mean_var_target(shape=(6, 3), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mean, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    var = 0.1 + torch.rand(shape, generator=g)
    var[0, :2] = torch.tensor([1e-9, 0.0])  # below eps: clamped, gradient straight through
    return torch.stack([mean, var], dim=-1), target


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("full", [False, True])
def test_gaussian_nll_matches_torch(reduction, full):
    pred, t = mean_var_target()
    nll = torch.nn.GaussianNLLLoss(full=full, eps=1e-6, reduction=reduction)
    assert_value_and_grad_close(
        lambda p: fn("gaussian_nll")(p, t, full=full, reduction=reduction),
        lambda p: nll(p[..., 0], t, p[..., 1]),
        pred,
    )


def test_gaussian_nll_eps_matches_torch():
    pred, t = mean_var_target()
    assert_value_and_grad_close(
        lambda p: fn("gaussian_nll")(p, t, eps=1e-3, reduction="none"),
        lambda p: F.gaussian_nll_loss(p[..., 0], t, p[..., 1], eps=1e-3, reduction="none"),
        pred,
    )


def test_gaussian_nll_shape_is_checked():
    with pytest.raises(ValueError, match=r"pred must be \[\.\.\., 2\]"):
        fn("gaussian_nll")(torch.rand(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="target pred.shape"):
        fn("gaussian_nll")(torch.rand(4, 2), torch.rand(4, 1))


# ----------------------------------------------------------- reduce_loss semantics


def test_weighted_smooth_l1_with_avg_factor_is_mmdetection():
    """mmdetection's ``weighted_loss``: element-wise loss times ``weight`` (e.g. box
    targets' weights [N, 4]), summed, divided by ``avg_factor + eps``."""
    x, t = pred_and_target((8, 4))
    w = torch.zeros(8, 4)
    w[:5] = 1.0  # five positive boxes
    assert_value_and_grad_close(
        lambda x: fn("smooth_l1")(x, t, beta=0.5, weight=w, avg_factor=5.0),
        lambda x: (F.smooth_l1_loss(x, t, beta=0.5, reduction="none") * w).sum() / (5.0 + EPS32),
        x,
    )
    assert_value_and_grad_close(
        lambda x: fn("smooth_l1")(x, t, weight=w[:, :1], reduction="none"),
        lambda x: F.smooth_l1_loss(x, t, reduction="none") * w[:, :1],
        x,
    )
    assert_value_and_grad_close(  # weight without avg_factor: mean over all elements
        lambda x: fn("smooth_l1")(x, t, weight=w),
        lambda x: (F.smooth_l1_loss(x, t, reduction="none") * w).mean(),
        x,
    )


def test_reduce_loss_hand_computed():
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = torch.tensor([[1.0], [0.5]])
    torch.testing.assert_close(reduce_loss(loss, "none", w), torch.tensor([[1.0, 2.0],
                                                                           [1.5, 2.0]]))
    torch.testing.assert_close(reduce_loss(loss, "sum", w), torch.tensor(6.5))
    torch.testing.assert_close(reduce_loss(loss, "mean", w), torch.tensor(6.5 / 4))
    torch.testing.assert_close(reduce_loss(loss, "mean", w, avg_factor=2), torch.tensor(3.25))
    torch.testing.assert_close(reduce_loss(loss, "none", avg_factor=2), loss)
    with pytest.raises(ValueError, match="avg_factor"):
        reduce_loss(loss, "sum", avg_factor=2)
    with pytest.raises(ValueError, match="reduction must be one of"):
        reduce_loss(loss, "batchmean")


@pytest.mark.parametrize("name", ["mse", "l1", "smooth_l1", "huber", "log_cosh", "charbonnier",
                                  "quantile"])
def test_empty_with_weight_is_zero_with_gradient(name):
    x = torch.zeros(0, 4, requires_grad=True)
    loss = fn(name)(x, torch.zeros(0, 4), weight=torch.zeros(0, 4))
    assert float(loss.detach()) == 0.0
    assert torch.autograd.grad(loss, x)[0].shape == (0, 4)


# ----------------------------------------------------- extremes, gradcheck, errors

CASES = [
    ("huber", {"delta": 0.5}),
    ("smooth_l1", {"beta": 0.5}),
    ("log_cosh", {}),
    ("charbonnier", {"eps": 0.1}),
    ("quantile", {"q": 0.8}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_gradcheck_float64(name, params):
    x, t = pred_and_target((3, 2))
    x = x.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: fn(name)(x, t.double(), reduction="none", **params), (x,)
    )


def test_gaussian_nll_gradcheck_float64():
    pred, t = mean_var_target((3, 2))
    pred = pred.double()
    pred[0, :, 1] = 0.5  # away from the clamp, where the gradient is straight-through
    pred.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p: fn("gaussian_nll")(p, t.double(), full=True, reduction="none"), (pred,)
    )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("huber:delta=0", "delta must be > 0"),
        ("quantile:q=1", "q must be in"),
        ("quantile:q=0", "q must be in"),
        ("charbonnier:eps=0", "eps must be > 0"),
        ("smooth_l1:beta=-1", "beta"),
    ],
)
def test_invalid_parameters_raise(spec, match):
    x, t = pred_and_target()
    with pytest.raises(ValueError, match=match):
        create_loss(spec)(x, t)


def test_same_shape_is_checked():
    for name in ("huber", "log_cosh", "charbonnier", "quantile"):
        with pytest.raises(ValueError, match="same shape"):
            fn(name)(torch.randn(4, 3), torch.randn(4, 2))
