"""Classification losses against torch references and hand-computed formulas (fp32 values
and gradients to 1e-5; float64 gradcheck for non-default parameters)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_inputs import assert_value_and_grad_close

from losscli.losses import create_loss, get_loss_info

C = 5
IGNORE = -100
CLASS_WEIGHT = (0.5, 1.0, 2.0, 0.25, 3.0)


def fn(name: str):
    return get_loss_info(name).fn


def logits_and_target(shape=(8, C), ignored: int = 0, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(shape, generator=g)
    t = torch.randint(C, (shape[0], *shape[2:]), generator=g)
    flat = t.view(-1)
    flat[:ignored] = IGNORE
    return x, t


SHAPES = [(8, C), (3, C, 4, 4)]
ALL_SHAPES = [*SHAPES, (4, C, 6), (2, C, 2, 3, 2), (0, C), (0, C, 3)]  # every NLL kernel path
REDUCTIONS = ["none", "mean", "sum"]


# ----------------------------------------------------------------------- ce / nll


@pytest.mark.parametrize("shape", ALL_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("class_weight", [None, CLASS_WEIGHT])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("ignored", [0, 3])
def test_ce_matches_torch(shape, reduction, class_weight, label_smoothing, ignored):
    x, t = logits_and_target(shape, ignored)
    cw = None if class_weight is None else torch.tensor(class_weight)

    def ours(x):
        return fn("ce")(x, t, class_weight=class_weight, label_smoothing=label_smoothing,
                        reduction=reduction)

    def ref(x):
        if x.numel() == 0 and reduction == "mean":
            return 0 * x.sum()  # torch's mean of an empty batch is NaN; ours is 0
        return F.cross_entropy(x, t, weight=cw, label_smoothing=label_smoothing,
                               reduction=reduction)

    assert_value_and_grad_close(ours, ref, x)


@pytest.mark.parametrize("shape", ALL_SHAPES[:4])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("class_weight", [None, CLASS_WEIGHT])
def test_nll_matches_torch(shape, reduction, class_weight):
    x, t = logits_and_target(shape, ignored=4)
    cw = None if class_weight is None else torch.tensor(class_weight)
    assert_value_and_grad_close(
        lambda x: fn("nll")(F.log_softmax(x, 1), t, class_weight=class_weight,
                            reduction=reduction),
        lambda x: F.nll_loss(F.log_softmax(x, 1), t, weight=cw, reduction=reduction),
        x,
    )


def test_label_smoothing_is_ce_with_smoothing():
    x, t = logits_and_target(ignored=2)
    assert_value_and_grad_close(
        lambda x: fn("label_smoothing")(x, t, epsilon=0.2),
        lambda x: F.cross_entropy(x, t, label_smoothing=0.2),
        x,
    )


def test_ce_weighted_with_avg_factor_is_mmdetection():
    """mmdetection: element-wise CE (class weights, ignore -> 0) times ``weight``, summed and
    divided by ``avg_factor + eps``; without avg_factor the mean runs over all elements."""
    x, t = logits_and_target((6, C), ignored=2)
    w = torch.linspace(0.0, 2.0, 6)
    cw = torch.tensor(CLASS_WEIGHT)
    eps = torch.finfo(torch.float32).eps

    def elementwise(x):
        return F.cross_entropy(x, t, weight=cw, reduction="none") * w

    for avg_factor in (3.0, torch.tensor(4.5)):
        assert_value_and_grad_close(
            lambda x, a=avg_factor: fn("ce")(x, t, class_weight=CLASS_WEIGHT, weight=w,
                                             avg_factor=a),
            lambda x, a=avg_factor: elementwise(x).sum() / (a + eps),
            x,
        )
    assert_value_and_grad_close(
        lambda x: fn("ce")(x, t, class_weight=CLASS_WEIGHT, weight=w),
        lambda x: elementwise(x).mean(),
        x,
    )
    assert_value_and_grad_close(
        lambda x: fn("ce")(x, t, class_weight=CLASS_WEIGHT, weight=w, reduction="none"),
        elementwise,
        x,
    )
    with pytest.raises(ValueError, match="avg_factor"):
        fn("ce")(x, t, weight=w, avg_factor=2.0, reduction="sum")


# ------------------------------------------------------- ignore_index: all ignored

ALL_IGNORED_CASES = [
    ("ce", {}),
    ("ce", {"class_weight": CLASS_WEIGHT, "label_smoothing": 0.1}),
    ("label_smoothing", {}),
    ("focal", {"alpha": CLASS_WEIGHT}),
    ("poly1", {"label_smoothing": 0.1}),
    ("hinge", {"class_weight": CLASS_WEIGHT}),
    ("gce", {}),
    ("mae_probs", {}),
]


@pytest.mark.parametrize(("name", "params"), ALL_IGNORED_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_is_finite_zero(name, params, reduction):
    x = torch.randn(4, C, 3, requires_grad=True)
    t = torch.full((4, 3), IGNORE)
    loss = fn(name)(x, t, reduction=reduction, **params)
    assert float(loss.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.equal(grad, torch.zeros_like(x))


def test_nll_all_ignored_is_finite_zero():
    x = torch.randn(4, C).log_softmax(1).requires_grad_()
    loss = fn("nll")(x, torch.full((4,), 7), ignore_index=7, class_weight=CLASS_WEIGHT)
    assert float(loss.detach()) == 0.0
    assert torch.equal(torch.autograd.grad(loss, x)[0], torch.zeros_like(x))


@pytest.mark.parametrize("name", ["focal", "poly1", "hinge", "gce", "mae_probs"])
def test_ignored_entries_are_dropped(name):
    """``mean`` with ignored targets equals ``mean`` over the kept ones alone."""
    x, t = logits_and_target((10, C), ignored=4)
    keep = t != IGNORE
    assert_value_and_grad_close(lambda x: fn(name)(x, t), lambda x: fn(name)(x[keep], t[keep]), x)
    none = fn(name)(x, t, reduction="none")
    assert torch.equal(none[~keep], torch.zeros(4))


# ---------------------------------------------------------------------------- focal


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_gamma0_is_ce_with_gradients(shape, reduction):
    x, t = logits_and_target(shape, ignored=2)
    assert_value_and_grad_close(
        lambda x: fn("focal")(x, t, gamma=0.0, reduction=reduction),
        lambda x: F.cross_entropy(x, t, reduction=reduction),
        x,
    )


@pytest.mark.parametrize("alpha", [None, 0.25, CLASS_WEIGHT])
def test_focal_matches_formula(alpha):
    x, t = logits_and_target((3, C, 2, 2))

    def ref(x):
        p_t = F.softmax(x, 1).gather(1, t.unsqueeze(1)).squeeze(1)
        loss = -((1 - p_t) ** 2) * torch.log(p_t)
        if isinstance(alpha, float):
            loss = alpha * loss
        elif alpha is not None:
            loss = torch.tensor(alpha)[t] * loss
        return loss

    assert_value_and_grad_close(
        lambda x: fn("focal")(x, t, gamma=2.0, alpha=alpha, reduction="none"), ref, x
    )


# ---------------------------------------------------------------------------- poly1


@pytest.mark.parametrize("epsilon", [-1.0, 0.0, 1.0, 2.5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("shape", SHAPES)
def test_poly1_matches_paper_code(epsilon, label_smoothing, shape):
    """The paper's code: ``pt = sum(labels * softmax)``, ``CE + epsilon * (1 - pt)`` with
    the (smoothed) one-hot ``labels``."""
    x, t = logits_and_target(shape)

    def ref(x):
        labels = F.one_hot(t, C).movedim(-1, 1).float()
        labels = labels * (1 - label_smoothing) + label_smoothing / C
        pt = (labels * F.softmax(x, 1)).sum(1)
        ce = -(labels * F.log_softmax(x, 1)).sum(1)
        return ce + epsilon * (1 - pt)

    assert_value_and_grad_close(
        lambda x: fn("poly1")(x, t, epsilon=epsilon, label_smoothing=label_smoothing,
                              reduction="none"),
        ref,
        x,
    )


def test_poly1_epsilon0_is_ce():
    x, t = logits_and_target(ignored=3)
    assert_value_and_grad_close(
        lambda x: fn("poly1")(x, t, epsilon=0.0), lambda x: F.cross_entropy(x, t), x
    )


# ---------------------------------------------------------------------------- hinge


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3])
@pytest.mark.parametrize("class_weight", [None, CLASS_WEIGHT])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge_matches_multi_margin_loss(p, margin, class_weight, reduction):
    x, t = logits_and_target((16, C), scale=0.5)  # small scores: many active margins
    cw = None if class_weight is None else torch.tensor(class_weight)
    assert_value_and_grad_close(
        lambda x: fn("hinge")(x, t, p=p, margin=margin, class_weight=class_weight,
                              reduction=reduction),
        lambda x: torch.nn.MultiMarginLoss(p=p, margin=margin, weight=cw,
                                           reduction=reduction)(x, t),
        x,
    )


def test_hinge_hand_computed():
    # torch's documented example: 1/4 * ((1 - (0.8 - 0.1)) + (1 - (0.8 - 0.2)) + (1 - (0.8 - 0.4)))
    x = torch.tensor([[0.1, 0.2, 0.4, 0.8]])
    loss = fn("hinge")(x, torch.tensor([3]))
    torch.testing.assert_close(loss, torch.tensor(0.325))


def test_hinge_dense_is_per_position():
    x, t = logits_and_target((2, C, 3, 3), scale=0.5)
    assert_value_and_grad_close(
        lambda x: fn("hinge")(x, t, p=2, reduction="none"),
        lambda x: F.multi_margin_loss(x.movedim(1, -1).reshape(-1, C), t.reshape(-1), p=2,
                                      reduction="none").view(t.shape),
        x,
    )


# --------------------------------------------------------------------- gce / mae_probs


@pytest.mark.parametrize("q", [0.1, 0.7, 1.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_gce_matches_formula(q, shape):
    x, t = logits_and_target(shape)

    def ref(x):
        p_t = F.softmax(x, 1).gather(1, t.unsqueeze(1)).squeeze(1)
        return (1 - p_t**q) / q

    assert_value_and_grad_close(lambda x: fn("gce")(x, t, q=q, reduction="none"), ref, x)


def test_gce_limits():
    x, t = logits_and_target()
    # q -> 0 tends to cross-entropy; q = 1 is half of mae_probs
    torch.testing.assert_close(fn("gce")(x, t, q=1e-4), F.cross_entropy(x, t), rtol=1e-3,
                               atol=1e-3)
    assert_value_and_grad_close(lambda x: fn("gce")(x, t, q=1.0),
                                lambda x: fn("mae_probs")(x, t) / 2, x)


@pytest.mark.parametrize("shape", SHAPES)
def test_mae_probs_is_l1_between_softmax_and_one_hot(shape):
    x, t = logits_and_target(shape)
    assert_value_and_grad_close(
        lambda x: fn("mae_probs")(x, t, reduction="none"),
        lambda x: (F.softmax(x, 1) - F.one_hot(t, C).movedim(-1, 1)).abs().sum(1),
        x,
    )


# ------------------------------------------------------- extremes, gradcheck, errors

EXTREME_CASES = [
    ("ce", {"class_weight": CLASS_WEIGHT, "label_smoothing": 0.1}),
    ("focal", {"gamma": 0.5}),
    ("poly1", {"label_smoothing": 0.1}),
    ("hinge", {"p": 2}),
    ("gce", {"q": 0.1}),
    ("mae_probs", {}),
]


@pytest.mark.parametrize(("name", "params"), EXTREME_CASES)
def test_logits_pm100_are_finite(name, params):
    x, t = logits_and_target((6, C), ignored=1)
    x = torch.where(x > 0, 100.0, -100.0).requires_grad_()
    loss = fn(name)(x, t, **params)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


GRADCHECK_CASES = [
    ("ce", {"class_weight": CLASS_WEIGHT, "label_smoothing": 0.2}),
    ("focal", {"gamma": 1.5, "alpha": CLASS_WEIGHT}),
    ("poly1", {"epsilon": 2.0, "label_smoothing": 0.1}),
    ("hinge", {"p": 2, "margin": 2.0, "class_weight": CLASS_WEIGHT}),
    ("gce", {"q": 0.3}),
    ("mae_probs", {}),
]


@pytest.mark.parametrize(("name", "params"), GRADCHECK_CASES)
def test_gradcheck_float64(name, params):
    x, t = logits_and_target((3, C, 2), ignored=1)
    x = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fn(name)(x, t, reduction="none", **params), (x,))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("gce:q=0", "q must be in"),
        ("gce:q=1.5", "q must be in"),
        ("hinge:p=3", "p must be 1 or 2"),
        ("poly1:epsilon=-2", "epsilon must be"),
        ("ce:label_smoothing=1.5", "label_smoothing"),
        ("focal:gamma=-1", "gamma"),
        ("hinge:class_weight=[1,2]", "one value per class"),
    ],
)
def test_invalid_parameters_raise(spec, match):
    x, t = logits_and_target()
    with pytest.raises(ValueError, match=match):
        create_loss(spec)(x, t)


def test_target_shape_is_checked():
    with pytest.raises(ValueError, match="target must be class indices"):
        fn("poly1")(torch.randn(4, C), torch.zeros(5, dtype=torch.long))


def test_specs_reach_the_functions():
    x, t = logits_and_target(scale=0.5)
    torch.testing.assert_close(create_loss("hinge:p=2,margin=0.5")(x, t),
                               F.multi_margin_loss(x, t, p=2, margin=0.5))
    torch.testing.assert_close(create_loss("multi_margin")(x, t), F.multi_margin_loss(x, t))
    torch.testing.assert_close(create_loss("poly_loss:epsilon=0")(x, t), F.cross_entropy(x, t))
