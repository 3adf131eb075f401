"""Noisy-label losses against the authors' released code, re-typed below as literal
references (values and gradients), hand-computed cases, limiting cases and edge cases.

Released code re-typed (torch, same operations, ``.mean()`` left to the caller):
- github.com/HanxunH/Active-Passive-Losses ``loss.py``: ``SCELoss``, ``ReverseCrossEntropy``,
  ``NormalizedCrossEntropy``, ``NormalizedFocalLoss``, ``NCEandRCE``, ``NFLandRCE``;
- github.com/YisenWang/symmetric_cross_entropy_for_noisy_labels ``loss.py`` (Keras):
  ``symmetric_cross_entropy``, ``boot_soft``, ``boot_hard``;
- github.com/ErikEnglesson/GJS ``losses.py``: ``JensenShannonDivergenceWeightedScaled``;
- github.com/torrvision/focal_calibration ``Losses/brier_score.py``: ``BrierScore``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_inputs import assert_value_and_grad_close

from losscli.losses import create_loss, get_loss_info
from losscli.losses.noisy import RCE_A

C = 5
IGNORE = -100
NAMES = ["sce", "rce", "nce", "nce_rce", "nfl_rce", "bootstrap_soft", "bootstrap_hard", "js",
         "brier"]


def fn(name: str):
    return get_loss_info(name).fn


def logits_and_target(shape=(8, C), seed: int = 0, scale: float = 2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(shape, generator=g)).to(dtype)
    return x, torch.randint(shape[1], (shape[0], *shape[2:]), generator=g)


# ------------------------------------------------------------- released code, re-typed


def apl_rce(pred, labels, num_classes=C, scale=1.0):
    """APL ``ReverseCrossEntropy.forward`` without the final ``.mean()``."""
    pred = F.softmax(pred, dim=1)
    pred = torch.clamp(pred, min=1e-7, max=1.0)
    label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
    label_one_hot = torch.clamp(label_one_hot, min=1e-4, max=1.0)
    rce = -1 * torch.sum(pred * torch.log(label_one_hot), dim=1)
    return scale * rce


def apl_nce(pred, labels, num_classes=C, scale=1.0):
    """APL ``NormalizedCrossEntropy.forward`` without the final ``.mean()``."""
    pred = F.log_softmax(pred, dim=1)
    label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
    nce = -1 * torch.sum(label_one_hot * pred, dim=1) / (-pred.sum(dim=1))
    return scale * nce


def apl_sce(pred, labels, alpha, beta, num_classes=C):
    """APL ``SCELoss.forward`` (a mean)."""
    ce = F.cross_entropy(pred, labels)
    return alpha * ce + beta * apl_rce(pred, labels, num_classes).mean()


def apl_nfl(input, target, gamma, scale=1.0, detach=True):
    """APL ``NormalizedFocalLoss.forward`` without the final ``.mean()``. ``detach=True``
    is the released code (``.data``); ``detach=False`` differentiates the same formula."""
    data = (lambda t: t.detach()) if detach else (lambda t: t)
    target = target.view(-1, 1)
    logpt = F.log_softmax(input, dim=1)
    normalizor = torch.sum(-1 * (1 - data(logpt).exp()) ** gamma * data(logpt), dim=1)
    logpt = logpt.gather(1, target)
    logpt = logpt.view(-1)
    pt = data(logpt).exp() if detach else logpt.exp()
    loss = -1 * (1 - pt) ** gamma * logpt
    return scale * loss / normalizor


def keras_sce(y_true, y_pred, alpha, beta):
    """Wang et al.'s Keras ``symmetric_cross_entropy(alpha, beta)`` on probabilities."""
    y_pred_1 = torch.clamp(y_pred, 1e-7, 1.0)
    y_true_2 = torch.clamp(y_true, 1e-4, 1.0)
    return (alpha * torch.mean(-torch.sum(y_true * torch.log(y_pred_1), dim=-1))
            + beta * torch.mean(-torch.sum(y_pred * torch.log(y_true_2), dim=-1)))


def keras_boot_soft(y_true, y_pred, beta=0.95):
    y_pred = y_pred / torch.sum(y_pred, dim=-1, keepdim=True)
    y_pred = torch.clamp(y_pred, 1e-7, 1.0 - 1e-7)
    return -torch.sum((beta * y_true + (1.0 - beta) * y_pred) * torch.log(y_pred), dim=-1)


def keras_boot_hard(y_true, y_pred, beta=0.8):
    y_pred = y_pred / torch.sum(y_pred, dim=-1, keepdim=True)
    y_pred = torch.clamp(y_pred, 1e-7, 1.0 - 1e-7)
    pred_labels = F.one_hot(torch.argmax(y_pred, 1), y_true.shape[1]).to(y_pred.dtype)
    return -torch.sum((beta * y_true + (1.0 - beta) * pred_labels) * torch.log(y_pred), dim=-1)


def gjs_custom_kl_div(prediction, target):
    """GJS ``custom_kl_div`` without the final ``.mean()``."""
    output_pos = target * (target.clamp(min=1e-7).log() - prediction)
    zeros = torch.zeros_like(output_pos)
    output = torch.where(target > 0, output_pos, zeros)
    return torch.sum(output, axis=1)


def gjs_js(pred, labels, pi, num_classes=C):
    """GJS ``JensenShannonDivergenceWeightedScaled`` with ``weights = [pi, 1 - pi]``."""
    weights = [pi, 1.0 - pi]
    scale = -1.0 / ((1.0 - weights[0]) * np.log(1.0 - weights[0]))
    preds = [F.softmax(pred, dim=1)]
    labels = F.one_hot(labels, num_classes).to(pred.dtype)
    distribs = [labels] + preds
    mean_distrib = sum([w * d for w, d in zip(weights, distribs, strict=True)])
    mean_distrib_log = mean_distrib.clamp(1e-7, 1.0).log()
    jsw = sum([w * gjs_custom_kl_div(mean_distrib_log, d)
               for w, d in zip(weights, distribs, strict=True)])
    return scale * jsw


def calibration_brier(input, target):
    """focal_calibration ``BrierScore.forward`` (its sum over elements / N)."""
    target = target.view(-1, 1)
    target_one_hot = torch.zeros(input.shape, dtype=input.dtype)
    target_one_hot.scatter_(1, target, 1)
    pt = F.softmax(input, dim=1)
    squared_diff = (target_one_hot - pt) ** 2
    return torch.sum(squared_diff) / float(input.shape[0])


# ------------------------------------------------------------- against released code


@pytest.mark.parametrize(("alpha", "beta"), [(0.01, 1.0), (0.1, 1.0), (6.0, 0.1)])
def test_sce_matches_apl_and_keras(alpha, beta):
    x, t = logits_and_target()
    ours = lambda x: fn("sce")(x, t, alpha=alpha, beta=beta)  # noqa: E731
    assert_value_and_grad_close(ours, lambda x: apl_sce(x, t, alpha, beta), x)
    onehot = F.one_hot(t, C).float()
    assert_value_and_grad_close(ours, lambda x: keras_sce(onehot, F.softmax(x, 1), alpha, beta), x)


def test_rce_matches_apl():
    x, t = logits_and_target()
    assert_value_and_grad_close(lambda x: fn("rce")(x, t, reduction="none"),
                                lambda x: apl_rce(x, t), x)


def test_nce_matches_apl():
    x, t = logits_and_target()
    assert_value_and_grad_close(lambda x: fn("nce")(x, t, reduction="none"),
                                lambda x: apl_nce(x, t), x)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 10.0), (1.0, 1.0), (10.0, 0.1)])
def test_nce_rce_matches_apl(alpha, beta):
    """``NCEandRCE``: ``NormalizedCrossEntropy(scale=alpha) + ReverseCrossEntropy(scale=beta)``."""
    x, t = logits_and_target()
    assert_value_and_grad_close(
        lambda x: fn("nce_rce")(x, t, alpha=alpha, beta=beta),
        lambda x: apl_nce(x, t, scale=alpha).mean() + apl_rce(x, t, scale=beta).mean(),
        x,
    )


@pytest.mark.parametrize("gamma", [0.5, 0.0, 2.0])
def test_nfl_rce_values_match_apl_gradients_match_formula(gamma):
    """Values equal the released ``NFLandRCE``; gradients equal autograd of the same
    formula without the released ``.data`` (see the loss's docstring)."""
    x, t = logits_and_target()

    def ours(x):
        return fn("nfl_rce")(x, t, alpha=1.0, beta=10.0, gamma=gamma)

    def released(x, detach=True):
        return (apl_nfl(x, t, gamma, scale=1.0, detach=detach).mean()
                + apl_rce(x, t, scale=10.0).mean())

    torch.testing.assert_close(ours(x), released(x))
    assert_value_and_grad_close(ours, lambda x: released(x, detach=False), x)


def test_released_nfl_gradient_is_not_the_derivative():
    """Why ours differs: the released NFL detaches its normaliser and (1 - p_t)^gamma."""
    x, t = logits_and_target()
    x = x.double().requires_grad_()
    (g_released,) = torch.autograd.grad(apl_nfl(x, t, 0.5).sum(), x)
    (g_ours,) = torch.autograd.grad(fn("nfl_rce")(x, t, beta=0.0, reduction="sum"), x)
    assert not torch.allclose(g_released, g_ours, atol=1e-3)
    assert torch.autograd.gradcheck(lambda x: fn("nfl_rce")(x, t, beta=0.0), (x,))


@pytest.mark.parametrize(("name", "keras", "beta"), [
    ("bootstrap_soft", keras_boot_soft, 0.95),
    ("bootstrap_soft", keras_boot_soft, 0.5),
    ("bootstrap_hard", keras_boot_hard, 0.8),
    ("bootstrap_hard", keras_boot_hard, 0.3),
])
def test_bootstrap_matches_keras(name, keras, beta):
    x, t = logits_and_target()
    onehot = F.one_hot(t, C).float()
    assert_value_and_grad_close(
        lambda x: fn(name)(x, t, beta=beta, reduction="none"),
        lambda x: keras(onehot, F.softmax(x, 1), beta), x)


@pytest.mark.parametrize("pi", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_js_matches_gjs(pi):
    x, t = logits_and_target()
    assert_value_and_grad_close(lambda x: fn("js")(x, t, pi=pi, reduction="none"),
                                lambda x: gjs_js(x, t, pi), x)


def test_brier_matches_focal_calibration():
    x, t = logits_and_target()
    assert_value_and_grad_close(lambda x: fn("brier")(x, t), lambda x: calibration_brier(x, t), x)


# ------------------------------------------------------------- hand-computed values


def test_hand_computed_two_class_uniform():
    """Logits (0, 0), target 0: p_t = 1/2."""
    x, t = torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)
    half, log2 = 0.5, math.log(2)
    m = 0.75  # pi y + (1 - pi) p at the target, pi = 1/2
    js = (0.5 * -math.log(m) + 0.5 * (0.5 * log2 + 0.5 * (math.log(0.5) - math.log(m))))
    expected = {
        "rce": 4 * math.log(10) * half,  # -log(1e-4) (1 - p_t)
        "nce": 0.5,  # log 2 / (2 log 2)
        "sce": 0.01 * log2 + 4 * math.log(10) * half,
        "nce_rce": 0.5 + 10 * 4 * math.log(10) * half,
        "nfl_rce": 0.5 + 10 * 4 * math.log(10) * half,  # symmetric: NFL = 1/2 too
        "bootstrap_soft": 0.95 * log2 + 0.05 * log2,  # CE and entropy are both log 2
        "bootstrap_hard": log2,  # argmax is class 0 (first of a tie): both terms log 2
        "js": js / (0.5 * log2),
        "brier": 0.5,
    }
    for name, value in expected.items():
        assert fn(name)(x, t).item() == pytest.approx(value, rel=1e-6), name


def test_hand_computed_confident_wrong():
    """Logits (0, log 9), target 0: p_t = 0.1."""
    x, t = torch.tensor([[0.0, math.log(9)]]), torch.zeros(1, dtype=torch.long)
    assert fn("rce")(x, t).item() == pytest.approx(0.9 * RCE_A, rel=1e-6)
    nce = math.log(0.1) / (math.log(0.1) + math.log(0.9))
    assert fn("nce")(x, t).item() == pytest.approx(nce, rel=1e-6)
    assert fn("brier")(x, t).item() == pytest.approx(0.81 + 0.81, rel=1e-6)
    # hard bootstrapping follows the (wrong) prediction: class 1
    boot = -(0.8 * math.log(0.1) + 0.2 * math.log(0.9))
    assert fn("bootstrap_hard")(x, t).item() == pytest.approx(boot, rel=1e-6)
    nfl = (0.9**0.5 * -math.log(0.1)) / (0.9**0.5 * -math.log(0.1) + 0.1**0.5 * -math.log(0.9))
    assert fn("nfl_rce")(x, t, beta=0.0).item() == pytest.approx(nfl, rel=1e-6)


# ------------------------------------------------------------- limiting cases


@pytest.mark.parametrize(("name", "params"), [
    ("sce", {"alpha": 1.0, "beta": 0.0}),
    ("bootstrap_soft", {"beta": 1.0}),
    ("bootstrap_hard", {"beta": 1.0}),
])
def test_limits_equal_cross_entropy(name, params):
    x, t = logits_and_target((4, C, 3))
    assert_value_and_grad_close(lambda x: fn(name)(x, t, **params),
                                lambda x: F.cross_entropy(x, t), x)


def test_rce_is_scaled_mae():
    x, t = logits_and_target()
    assert_value_and_grad_close(lambda x: fn("rce")(x, t),
                                lambda x: RCE_A / 2 * fn("mae_probs")(x, t), x)


def test_nfl_rce_gamma0_is_nce_rce():
    x, t = logits_and_target()
    assert_value_and_grad_close(lambda x: fn("nfl_rce")(x, t, gamma=0.0, alpha=2.0, beta=3.0),
                                lambda x: fn("nce_rce")(x, t, alpha=2.0, beta=3.0), x)


def test_bootstrap_soft_is_ce_plus_entropy():
    x, t = logits_and_target()

    def ref(x):
        logp = F.log_softmax(x, 1)
        return 0.9 * F.cross_entropy(x, t) - 0.1 * (logp.exp() * logp).sum(1).mean()

    assert_value_and_grad_close(lambda x: fn("bootstrap_soft")(x, t, beta=0.9), ref, x)


def test_js_limits_are_ce_and_half_mae():
    """The paper's Proposition 1: pi -> 0 gives CE (the error is O(pi)); pi -> 1 gives
    half of ``mae_probs`` (1 - p_t), the error shrinking only as 1 / log(1 / (1 - pi))."""
    x, t = logits_and_target(dtype=torch.float64)
    torch.testing.assert_close(fn("js")(x, t, pi=1e-7), F.cross_entropy(x, t), rtol=1e-5,
                               atol=0)
    half_mae = fn("mae_probs")(x, t) / 2
    errors = [abs(fn("js")(x, t, pi=1 - eps) - half_mae) / half_mae for eps in (1e-4, 1e-8, 1e-12)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.04


def test_perfect_prediction_is_zero():
    x = torch.tensor([[30.0, -30.0, -30.0], [-30.0, 30.0, -30.0]])
    t = torch.tensor([0, 1])
    for name in ("rce", "nce", "sce", "nce_rce", "nfl_rce", "js", "brier"):
        assert fn(name)(x, t).item() == pytest.approx(0.0, abs=1e-6), name


# ------------------------------------------------------------- shapes, ignore, params


@pytest.mark.parametrize("name", NAMES)
def test_dense_equals_flattened(name):
    x, t = logits_and_target((2, C, 3, 2))
    flat_x, flat_t = x.movedim(1, -1).reshape(-1, C), t.reshape(-1)
    assert_value_and_grad_close(
        lambda x: fn(name)(x, t, reduction="none"),
        lambda x: fn(name)(x.movedim(1, -1).reshape(-1, C), flat_t,
                           reduction="none").view(t.shape),
        x,
    )
    torch.testing.assert_close(fn(name)(x, t), fn(name)(flat_x, flat_t))


@pytest.mark.parametrize("name", NAMES)
def test_ignored_entries_are_dropped(name):
    x, t = logits_and_target((10, C))
    t[:4] = IGNORE
    keep = t != IGNORE
    assert_value_and_grad_close(lambda x: fn(name)(x, t), lambda x: fn(name)(x[keep], t[keep]), x)
    assert torch.equal(fn(name)(x, t, reduction="none")[~keep], torch.zeros(4))
    x = x.clone().requires_grad_()
    loss = fn(name)(x, torch.full_like(t, IGNORE))
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, x)[0], torch.zeros_like(x))


@pytest.mark.parametrize(("name", "params"), [
    ("sce", {"alpha": 0.3, "beta": 2.0}),
    ("nce_rce", {"alpha": 2.0, "beta": 0.5}),
    ("nfl_rce", {"gamma": 2.0, "alpha": 0.5, "beta": 0.1}),
    ("nfl_rce", {"gamma": 0.5}),
    ("bootstrap_soft", {"beta": 0.6}),
    ("bootstrap_hard", {"beta": 0.6}),
    ("js", {"pi": 0.2}),
    ("js", {"pi": 0.9}),
])
def test_gradcheck_float64_non_default(name, params):
    x, t = logits_and_target((3, C, 2), dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fn(name)(x, t, **params), (x,))


@pytest.mark.parametrize(("spec", "match"), [
    ("sce:alpha=-1", "alpha must be >= 0"),
    ("nce_rce:beta=-0.5", "beta must be >= 0"),
    ("nfl_rce:gamma=-1", "gamma must be >= 0"),
    ("bootstrap_soft:beta=1.5", r"beta must be in \[0.0, 1.0\]"),
    ("bootstrap_hard:beta=-0.1", r"beta must be in \[0.0, 1.0\]"),
    ("js:pi=0", r"pi must be in \(0, 1\)"),
    ("js:pi=1", r"pi must be in \(0, 1\)"),
])
def test_bad_parameters_raise_with_the_rule(spec, match):
    x, t = logits_and_target()
    with pytest.raises(ValueError, match=match):
        create_loss(spec)(x, t)


@pytest.mark.parametrize("name", ["nce", "nce_rce", "nfl_rce"])
def test_normalized_losses_need_two_classes(name):
    with pytest.raises(ValueError, match="at least 2 classes"):
        fn(name)(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


def test_registered_with_references_and_no_needs():
    for name in NAMES:
        info = get_loss_info(name)
        assert info.family.value == "classification" and info.reference
        assert info.needs == frozenset()
    assert get_loss_info("symmetric_ce").name == "sce"
    assert get_loss_info("jensen_shannon").name == "js"
