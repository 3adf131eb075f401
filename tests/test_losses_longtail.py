"""Long-tail and calibration losses against the authors' released code, re-typed below as
literal references (values and gradients), hand-computed values, limiting cases, the
``needs`` declaration and its error messages.

Released code re-typed (torch, same operations):
- github.com/google-research/google-research ``logit_adjustment/utils.py``: ``build_loss_fn``;
- github.com/jiawei-ren/BalancedMetaSoftmax-Classification ``loss/BalancedSoftmaxLoss.py``;
- github.com/kaidic/LDAM-DRW ``losses.py``: ``LDAMLoss`` (CPU tensors instead of cuda);
- github.com/richardaecn/class-balanced-loss ``src/cifar_main.py``: the weights, the
  softmax / sigmoid losses and ``focal_loss`` (TensorFlow);
- github.com/torrvision/focal_calibration ``Losses/focal_loss_adaptive_gamma.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_inputs import assert_value_and_grad_close

from losscli.losses import create_loss, get_loss_info, list_losses
from losscli.losses.longtail import CLASS_COUNTS, effective_number_weights

C = 5
IGNORE = -100
COUNTS = (400, 100, 40, 10, 4)
PRIOR_LOSSES = ["logit_adjust", "balanced_softmax", "ldam", "cb_ce", "cb_focal",
                "cb_sigmoid_focal"]
NAMES = [*PRIOR_LOSSES, "flsd"]


def fn(name: str):
    return get_loss_info(name).fn


def counts_for(name: str) -> dict:
    return {"class_counts": COUNTS} if name in PRIOR_LOSSES else {}


def logits_and_target(shape=(8, C), seed: int = 0, scale: float = 2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(shape, generator=g)).to(dtype)
    return x, torch.randint(shape[1], (shape[0], *shape[2:]), generator=g)


# ------------------------------------------------------------- released code, re-typed


def google_logit_adjust(labels, logits, base_probs, tau=1.0):
    """``build_loss_fn(use_la_loss=True, base_probs, tau)``'s ``loss_fn`` in torch."""
    logits = logits + torch.log(torch.as_tensor(base_probs**tau + 1e-12, dtype=logits.dtype))
    loss = F.cross_entropy(logits, labels, reduction="none")
    return torch.mean(loss, dim=0)


def bms_balanced_softmax_loss(labels, logits, sample_per_class, reduction):
    spc = sample_per_class.type_as(logits)
    spc = spc.unsqueeze(0).expand(logits.shape[0], -1)
    logits = logits + spc.log()
    return F.cross_entropy(input=logits, target=labels, reduction=reduction)


class LDAMLoss(torch.nn.Module):
    """LDAM-DRW's ``LDAMLoss`` (``torch.cuda.FloatTensor`` -> CPU tensors of x's dtype)."""

    def __init__(self, cls_num_list, max_m=0.5, weight=None, s=30):
        super().__init__()
        m_list = 1.0 / np.sqrt(np.sqrt(cls_num_list))
        m_list = m_list * (max_m / np.max(m_list))
        self.m_list = torch.tensor(m_list)
        self.s = s
        self.weight = weight

    def forward(self, x, target):
        index = torch.zeros_like(x, dtype=torch.uint8)
        index.scatter_(1, target.data.view(-1, 1), 1)
        index_float = index.type(x.dtype)
        batch_m = torch.matmul(self.m_list[None, :].to(x.dtype), index_float.transpose(0, 1))
        batch_m = batch_m.view((-1, 1))
        x_m = x - batch_m
        output = torch.where(index.bool(), x_m, x)
        return F.cross_entropy(self.s * output, target, weight=self.weight)


def cui_weights(img_num_per_cls, beta):
    effective_num = 1.0 - np.power(beta, img_num_per_cls)
    weights = (1.0 - beta) / np.array(effective_num)
    return weights / np.sum(weights) * len(img_num_per_cls)


def cui_tiled_weights(weights, one_hot_labels):
    """The ``weights`` tensor of ``_tower_fn``: each row holds the label's weight."""
    num_classes = one_hot_labels.shape[1]
    w = torch.as_tensor(weights, dtype=one_hot_labels.dtype).unsqueeze(0)
    w = w.tile(one_hot_labels.shape[0], 1) * one_hot_labels
    return w.sum(1).unsqueeze(1).tile(1, num_classes)


def cui_softmax(one_hot_labels, logits, weights):
    """``tf.losses.softmax_cross_entropy(weights=mean(weights, 1))``, whose default
    reduction SUM_BY_NONZERO_WEIGHTS divides by the number of non-zero weights."""
    w = cui_tiled_weights(weights, one_hot_labels).mean(1)
    ce = -(one_hot_labels * F.log_softmax(logits, 1)).sum(1)
    return (w * ce).sum() / (w != 0).sum()


def cui_sigmoid(one_hot_labels, logits, weights):
    w = cui_tiled_weights(weights, one_hot_labels)
    loss = w * F.binary_cross_entropy_with_logits(logits, one_hot_labels, reduction="none")
    return loss.sum() / one_hot_labels.sum()


def cui_focal_loss(labels, logits, alpha, gamma):
    cross_entropy = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if gamma == 0.0:
        modulator = 1.0
    else:
        modulator = torch.exp(-gamma * labels * logits - gamma * torch.log1p(
            torch.exp(-1.0 * logits)))
    loss = modulator * cross_entropy
    weighted_loss = alpha * loss
    focal_loss = torch.sum(weighted_loss)
    return focal_loss / torch.sum(labels)


GAMMA_DIC = {0.2: 5.0, 0.5: 3.0}


def focal_loss_adaptive(input, target, gamma=3.0):
    """focal_calibration's ``FocalLossAdaptive(gamma, size_average=False)``."""
    target = target.view(-1, 1)
    logpt = F.log_softmax(input, dim=1)
    logpt = logpt.gather(1, target)
    logpt = logpt.view(-1)
    pt = logpt.exp()
    gamma_list = []
    for i in range(pt.shape[0]):
        pt_sample = pt[i].item()
        if pt_sample >= 0.5:
            gamma_list.append(gamma)
            continue
        for key in sorted(GAMMA_DIC.keys()):
            if pt_sample < key:
                gamma_list.append(GAMMA_DIC[key])
                break
    gammas = torch.tensor(gamma_list, dtype=input.dtype)
    loss = -1 * (1 - pt) ** gammas * logpt
    return loss.sum()


# ------------------------------------------------------------- against released code


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjust_matches_google_research(tau):
    x, t = logits_and_target()
    base_probs = np.array(COUNTS) / sum(COUNTS)
    assert_value_and_grad_close(lambda x: fn("logit_adjust")(x, t, tau=tau, class_counts=COUNTS),
                                lambda x: google_logit_adjust(t, x, base_probs, tau), x)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_balanced_softmax_matches_released(reduction):
    x, t = logits_and_target()
    spc = torch.tensor(COUNTS)
    assert_value_and_grad_close(
        lambda x: fn("balanced_softmax")(x, t, class_counts=COUNTS, reduction=reduction),
        lambda x: bms_balanced_softmax_loss(t, x, spc, reduction), x)


@pytest.mark.parametrize(("max_m", "s"), [(0.5, 30.0), (0.3, 1.0)])
def test_ldam_matches_released(max_m, s):
    x, t = logits_and_target((8, C), scale=0.3)  # cosine-like logits, as the authors' model
    ref = LDAMLoss(list(COUNTS), max_m=max_m, s=s)
    assert_value_and_grad_close(
        lambda x: fn("ldam")(x, t, max_m=max_m, s=s, class_counts=COUNTS), lambda x: ref(x, t), x)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.99, 0.999, 0.9999])
def test_effective_number_weights_match_cui(beta):
    np.testing.assert_allclose(effective_number_weights(COUNTS, beta), cui_weights(COUNTS, beta),
                               rtol=1e-12)


@pytest.mark.parametrize("beta", [0.9999, 0.99])
def test_cb_ce_matches_cui_softmax(beta):
    x, t = logits_and_target()
    w = cui_weights(COUNTS, beta)
    assert_value_and_grad_close(
        lambda x: fn("cb_ce")(x, t, beta=beta, class_counts=COUNTS),
        lambda x: cui_softmax(F.one_hot(t, C).float(), x, w), x)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("beta", [0.9999, 0.9])
def test_cb_sigmoid_focal_matches_cui_focal_loss(gamma, beta):
    x, t = logits_and_target()
    onehot = F.one_hot(t, C).float()
    w = cui_weights(COUNTS, beta)
    assert_value_and_grad_close(
        lambda x: fn("cb_sigmoid_focal")(x, t, beta=beta, gamma=gamma, class_counts=COUNTS),
        lambda x: cui_focal_loss(onehot, x, cui_tiled_weights(w, onehot), gamma), x)
    if gamma == 0.0:  # the released 'sigmoid' loss type
        assert_value_and_grad_close(
            lambda x: fn("cb_sigmoid_focal")(x, t, beta=beta, gamma=0.0, class_counts=COUNTS),
            lambda x: cui_sigmoid(onehot, x, w), x)


def test_flsd_matches_focal_calibration():
    # spread p_t over all three bands of the released table (< 0.2, [0.2, 0.5), >= 0.5)
    x, t = logits_and_target((64, C), scale=1.5)
    pt = F.softmax(x, 1).gather(1, t[:, None]).squeeze(1)
    assert (pt < 0.2).any() and ((pt >= 0.2) & (pt < 0.5)).any() and (pt >= 0.5).any()
    assert_value_and_grad_close(lambda x: fn("flsd")(x, t, reduction="sum"),
                                lambda x: focal_loss_adaptive(x, t), x)


# ------------------------------------------------------------- hand-computed values


def test_ldam_margins_by_hand():
    """m_c = 0.5 (4 / n_c)^(1/4): 0.1581, 0.2236, 0.2812, 0.3976, 0.5 for COUNTS."""
    margins = [0.5 * (4 / n) ** 0.25 for n in COUNTS]
    assert margins == pytest.approx([0.158114, 0.223607, 0.281171, 0.397635, 0.5], abs=1e-6)
    x, t = torch.zeros(C, C), torch.arange(C)  # uniform logits; each class once
    expected = [math.log(1 + (C - 1) * math.exp(30 * m)) for m in margins]  # s = 30
    torch.testing.assert_close(fn("ldam")(x, t, class_counts=COUNTS, reduction="none"),
                               torch.tensor(expected))


def test_prior_shift_by_hand():
    """Uniform logits: logit adjustment gives -log(prior_y^tau / sum_c prior_c^tau)."""
    x, t = torch.zeros(C, C), torch.arange(C)
    for tau in (1.0, 0.5):
        powered = [(n / sum(COUNTS)) ** tau for n in COUNTS]
        expected = torch.tensor([-math.log(p / sum(powered)) for p in powered])
        torch.testing.assert_close(
            fn("logit_adjust")(x, t, tau=tau, class_counts=COUNTS, reduction="none"), expected)
    expected = torch.tensor([-math.log(n / sum(COUNTS)) for n in COUNTS])
    torch.testing.assert_close(
        fn("balanced_softmax")(x, t, class_counts=COUNTS, reduction="none"), expected)


def test_cb_weights_by_hand():
    """beta = 0.9: effective numbers 1 - 0.9^n -> ~1, ~1, 0.98522, 0.65132, 0.3439."""
    eff = [1 - 0.9**n for n in COUNTS]
    assert eff[2:] == pytest.approx([0.985219, 0.651322, 0.3439], abs=1e-6)
    raw = [0.1 / e for e in eff]
    assert effective_number_weights(COUNTS, 0.9) == pytest.approx([C * r / sum(raw) for r in raw])
    assert effective_number_weights(COUNTS, 0.0) == [1.0] * C


# ------------------------------------------------------------- limiting cases


def test_balanced_softmax_is_logit_adjust_tau1():
    x, t = logits_and_target((4, C, 3))
    assert_value_and_grad_close(
        lambda x: fn("balanced_softmax")(x, t, class_counts=COUNTS),
        lambda x: fn("logit_adjust")(x, t, tau=1.0, class_counts=COUNTS), x)


@pytest.mark.parametrize(("name", "params"), [
    ("logit_adjust", {"tau": 0.0, "class_counts": COUNTS}),
    ("balanced_softmax", {"class_counts": (7,) * C}),
    ("cb_ce", {"beta": 0.0, "class_counts": COUNTS}),
    ("ldam", {"s": 1.0, "max_m": 1e-9, "class_counts": COUNTS}),
])
def test_limits_equal_cross_entropy(name, params):
    x, t = logits_and_target((4, C, 3))
    assert_value_and_grad_close(lambda x: fn(name)(x, t, **params),
                                lambda x: F.cross_entropy(x, t), x)


def test_cb_focal_beta0_is_focal_and_weights_scale_it():
    x, t = logits_and_target((4, C, 3))
    assert_value_and_grad_close(
        lambda x: fn("cb_focal")(x, t, beta=0.0, gamma=1.5, class_counts=COUNTS),
        lambda x: fn("focal")(x, t, gamma=1.5), x)
    w = torch.tensor(cui_weights(COUNTS, 0.999), dtype=torch.float32)
    assert_value_and_grad_close(
        lambda x: fn("cb_focal")(x, t, beta=0.999, class_counts=COUNTS, reduction="none"),
        lambda x: w[t] * fn("focal")(x, t, reduction="none"), x)


def test_cb_sigmoid_focal_is_weighted_sum_of_sigmoid_focal():
    x, t = logits_and_target((4, C, 3))
    onehot = F.one_hot(t, C).movedim(-1, 1).float()
    w = torch.tensor(cui_weights(COUNTS, 0.99), dtype=torch.float32)
    assert_value_and_grad_close(
        lambda x: fn("cb_sigmoid_focal")(x, t, beta=0.99, class_counts=COUNTS, reduction="none"),
        lambda x: w[t] * fn("sigmoid_focal")(x, onehot, alpha=-1.0, reduction="none").sum(1), x)


def test_flsd_with_one_gamma_is_focal():
    x, t = logits_and_target((4, C, 3))
    assert_value_and_grad_close(lambda x: fn("flsd")(x, t, gamma=2.0, gamma_hard=2.0),
                                lambda x: fn("focal")(x, t, gamma=2.0), x)


def test_ldam_pushes_rare_classes_harder():
    """Same logits, target a frequent vs a rare class: the rare one pays the larger margin."""
    x = torch.zeros(2, C)
    loss = fn("ldam")(x, torch.tensor([0, C - 1]), class_counts=COUNTS, s=1.0, reduction="none")
    assert loss[1] > loss[0]


# ------------------------------------------------------------- the declared need


def test_prior_losses_declare_class_counts_and_take_it_as_keyword():
    declared = {i.name for i in list_losses() if CLASS_COUNTS in i.needs}
    assert declared == set(PRIOR_LOSSES)
    for name in PRIOR_LOSSES:
        info = get_loss_info(name)
        assert info.needs == frozenset({"class_counts"})
        assert info.params["class_counts"] is None  # supplied by the job, not defaulted
    assert get_loss_info("flsd").needs == frozenset()


@pytest.mark.parametrize("name", PRIOR_LOSSES)
def test_missing_class_counts_states_the_rule(name):
    x, t = logits_and_target()
    with pytest.raises(ValueError, match=f"{name} needs class_counts: the number of training "
                                         "examples of each of the 5 classes"):
        fn(name)(x, t)


@pytest.mark.parametrize("name", PRIOR_LOSSES)
@pytest.mark.parametrize("counts", [(1, 2, 3), (400, 100, 0, 10, 4), (400, 100, -1, 10, 4),
                                    5, ("a",) * 5, (400, 100, float("nan"), 10, 4)])
def test_bad_class_counts_raise(name, counts):
    x, t = logits_and_target()
    with pytest.raises(ValueError, match="class_counts must be 5 positive numbers"):
        fn(name)(x, t, class_counts=counts)


def test_class_counts_through_a_spec():
    x, t = logits_and_target()
    loss = create_loss("ldam:class_counts=[400,100,40,10,4],s=1")
    torch.testing.assert_close(loss(x, t), fn("ldam")(x, t, class_counts=COUNTS, s=1.0))
    with pytest.raises(ValueError, match="needs class_counts"):
        create_loss("balanced_softmax")(x, t)


@pytest.mark.parametrize(("spec", "match"), [
    ("logit_adjust:tau=-1", "tau must be >= 0"),
    ("ldam:s=0", "must be > 0"),
    ("ldam:max_m=-0.5", "must be > 0"),
    ("cb_ce:beta=1", r"beta must be in \[0, 1\)"),
    ("cb_focal:gamma=-1", "gamma must be >= 0"),
    ("cb_sigmoid_focal:beta=-0.1", r"beta must be in \[0, 1\)"),
    ("flsd:threshold=1.5", r"threshold must be in \[0.0, 1.0\]"),
    ("flsd:gamma_hard=-1", "gamma_hard must be >= 0"),
])
def test_bad_parameters_raise_with_the_rule(spec, match):
    x, t = logits_and_target()
    name = spec.split(":")[0]
    extra = f",class_counts=[{','.join(map(str, COUNTS))}]" if name in PRIOR_LOSSES else ""
    with pytest.raises(ValueError, match=match):
        create_loss(spec + extra)(x, t)


# ------------------------------------------------------------- shapes, ignore, gradcheck


@pytest.mark.parametrize("name", NAMES)
def test_dense_equals_flattened(name):
    x, t = logits_and_target((2, C, 3, 2))
    kw = counts_for(name)
    flat_t = t.reshape(-1)
    assert_value_and_grad_close(
        lambda x: fn(name)(x, t, reduction="none", **kw),
        lambda x: fn(name)(x.movedim(1, -1).reshape(-1, C), flat_t, reduction="none",
                           **kw).view(t.shape),
        x,
    )


@pytest.mark.parametrize("name", NAMES)
def test_ignored_entries_are_dropped(name):
    x, t = logits_and_target((10, C))
    t[:4] = IGNORE
    keep = t != IGNORE
    kw = counts_for(name)
    assert_value_and_grad_close(lambda x: fn(name)(x, t, **kw),
                                lambda x: fn(name)(x[keep], t[keep], **kw), x)
    assert torch.equal(fn(name)(x, t, reduction="none", **kw)[~keep], torch.zeros(4))
    x = x.clone().requires_grad_()
    loss = fn(name)(x, torch.full_like(t, IGNORE), **kw)
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, x)[0], torch.zeros_like(x))


@pytest.mark.parametrize(("name", "params"), [
    ("logit_adjust", {"tau": 0.7}),
    ("ldam", {"max_m": 0.3, "s": 5.0}),
    ("cb_ce", {"beta": 0.99}),
    ("cb_focal", {"beta": 0.99, "gamma": 0.5}),
    ("cb_sigmoid_focal", {"beta": 0.99, "gamma": 1.0}),
    ("flsd", {"gamma": 2.0, "gamma_hard": 4.0, "threshold": 0.3}),
])
def test_gradcheck_float64_non_default(name, params):
    x, t = logits_and_target((3, C, 2), dtype=torch.float64)
    x.requires_grad_()
    kw = {**params, **counts_for(name)}
    assert torch.autograd.gradcheck(lambda x: fn(name)(x, t, **kw), (x,))
