"""Binary / multi-label losses against torch, torchvision.ops and the ASL authors' code
(fp32 values and gradients to 1e-5; float64 gradcheck for non-default parameters)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_inputs import assert_value_and_grad_close
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from losscli.losses import create_loss, get_loss_info

REDUCTIONS = ["none", "mean", "sum"]
EPS32 = torch.finfo(torch.float32).eps


def fn(name: str):
    return get_loss_info(name).fn


def logits_and_target(shape=(6, 4), soft: bool = False, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(shape, generator=g)
    t = torch.rand(shape, generator=g)
    return x, (t if soft else (t > 0.6).float())


def authors_asl(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8):
    """``AsymmetricLoss.forward`` from github.com/Alibaba-MIIL/ASL (src/loss_functions/
    losses.py), with ``disable_torch_grad_focal_loss=False``."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt0 = xs_pos * y
        pt1 = xs_neg * (1 - y)
        pt = pt0 + pt1
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        one_sided_w = torch.pow(1 - pt, one_sided_gamma)
        loss *= one_sided_w
    return -loss.sum()


# ------------------------------------------------------------------ bce / bce_logits


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_matches_torch_incl_saturated_probabilities(reduction):
    x, t = logits_and_target(soft=True)
    p = torch.sigmoid(x)
    p[0, :2] = torch.tensor([0.0, 1.0])  # torch clamps the log at -100
    w = torch.rand(6, 4)
    assert_value_and_grad_close(
        lambda p: fn("bce")(p, t, reduction=reduction, weight=w),
        lambda p: F.binary_cross_entropy(p, t, weight=w, reduction=reduction),
        p,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("pos_weight", [None, 3.0, (0.5, 1.0, 2.0, 4.0)])
def test_bce_logits_matches_torch(reduction, pos_weight):
    x, t = logits_and_target()
    pw = None if pos_weight is None else torch.as_tensor(pos_weight)
    assert_value_and_grad_close(
        lambda x: fn("bce_logits")(x, t, pos_weight=pos_weight, reduction=reduction),
        lambda x: F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=reduction),
        x,
    )


def test_bce_logits_negative_pos_weight_raises():
    x, t = logits_and_target()
    with pytest.raises(ValueError, match="pos_weight must be >= 0"):
        fn("bce_logits")(x, t, pos_weight=(1.0, -1.0, 1.0, 1.0))


# -------------------------------------------------------------------- sigmoid_focal


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("soft", [False, True])
def test_sigmoid_focal_matches_torchvision(reduction, alpha, gamma, soft):
    x, t = logits_and_target((4, 3, 5), soft=soft)
    assert_value_and_grad_close(
        lambda x: fn("sigmoid_focal")(x, t, alpha=alpha, gamma=gamma, reduction=reduction),
        lambda x: tv_sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction),
        x,
    )


def test_sigmoid_focal_gamma0_without_alpha_is_bce_logits():
    x, t = logits_and_target()
    assert_value_and_grad_close(
        lambda x: fn("sigmoid_focal")(x, t, alpha=-1.0, gamma=0.0),
        lambda x: F.binary_cross_entropy_with_logits(x, t),
        x,
    )


def test_sigmoid_focal_weighted_with_avg_factor_is_mmdetection():
    """mmdetection's ``py_sigmoid_focal_loss``: element-wise focal loss times ``weight``
    (per anchor, broadcast over classes), summed, divided by ``avg_factor + eps``."""
    x, t = logits_and_target((10, 3))
    w = (torch.arange(10) % 3 != 0).float().unsqueeze(1)  # some anchors ignored
    avg_factor = t.sum()  # number of positives

    def ref(x):
        return (tv_sigmoid_focal_loss(x, t) * w).sum() / (avg_factor + EPS32)

    assert_value_and_grad_close(
        lambda x: fn("sigmoid_focal")(x, t, weight=w, avg_factor=avg_factor), ref, x
    )
    assert_value_and_grad_close(
        lambda x: fn("sigmoid_focal")(x, t, weight=w, reduction="sum"),
        lambda x: (tv_sigmoid_focal_loss(x, t) * w).sum(),
        x,
    )


def test_sigmoid_focal_invalid_alpha_raises():
    x, t = logits_and_target()
    with pytest.raises(ValueError, match="alpha must be"):
        create_loss("sigmoid_focal:alpha=1.5")(x, t)


# ----------------------------------------------------------------------- asymmetric


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05},
        {"gamma_neg": 2.0, "gamma_pos": 0.0, "clip": 0.0},
        {"gamma_neg": 0.0, "gamma_pos": 0.0, "clip": 0.1, "eps": 1e-6},
    ],
)
@pytest.mark.parametrize("soft", [False, True])
def test_asymmetric_matches_authors_code(params, soft):
    x, t = logits_and_target((8, 6), soft=soft, scale=4.0)
    full = {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "eps": 1e-8, **params}
    assert_value_and_grad_close(
        lambda x: fn("asymmetric")(x, t, reduction="sum", **params),
        lambda x: authors_asl(x, t, **full),
        x,
    )
    # the default reduction is the mean of the same element-wise loss
    torch.testing.assert_close(fn("asymmetric")(x, t, **params),
                               authors_asl(x, t, **full) / t.numel())


def test_asymmetric_without_focusing_or_clip_is_bce_logits():
    x, t = logits_and_target()
    assert_value_and_grad_close(
        lambda x: fn("asymmetric")(x, t, gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
        lambda x: F.binary_cross_entropy_with_logits(x, t),
        x,
    )


def test_asymmetric_clip_zeroes_easy_negatives():
    # p = sigmoid(-4) = 0.018 < clip: shifted probability 0 -> no loss, no gradient
    x = torch.full((3,), -4.0, requires_grad=True)
    loss = fn("asymmetric")(x, torch.zeros(3), clip=0.05, reduction="sum")
    assert float(loss.detach()) == 0.0
    assert torch.equal(torch.autograd.grad(loss, x)[0], torch.zeros(3))


@pytest.mark.parametrize(
    ("spec", "match"),
    [("asymmetric:clip=-0.1", "clip"), ("asymmetric:eps=0", "eps"),
     ("asymmetric:gamma_neg=-1", "gamma_neg")],
)
def test_asymmetric_invalid_parameters_raise(spec, match):
    x, t = logits_and_target()
    with pytest.raises(ValueError, match=match):
        create_loss(spec)(x, t)


# ------------------------------------------------------------- extremes, gradcheck

CASES = [
    ("bce_logits", {"pos_weight": 2.0}),
    ("sigmoid_focal", {"gamma": 2.0}),
    ("sigmoid_focal", {"gamma": 1.5, "alpha": -1.0}),
    ("asymmetric", {}),
    ("asymmetric", {"gamma_pos": 1.0, "clip": 0.0}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_logits_pm100_are_finite(name, params):
    x, t = logits_and_target()
    x = torch.where(x > 0, 100.0, -100.0)
    x[0] = 100.0
    t[0] = 0.0  # confidently wrong negatives as well as right ones
    x.requires_grad_()
    loss = fn(name)(x, t, **params)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize(("name", "params"), CASES)
def test_gradcheck_float64(name, params):
    x, t = logits_and_target((3, 4), soft=True)
    x = x.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: fn(name)(x, t.double(), reduction="none", **params), (x,)
    )


def test_same_shape_is_checked():
    with pytest.raises(ValueError, match="same shape"):
        fn("sigmoid_focal")(torch.randn(4, 3), torch.ones(4, 2))
