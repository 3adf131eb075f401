"""Generalized Dice and top-k CE against their references, re-typed below as literal
references (values and gradients), MONAI live when installed, and hand-computed values.

Re-typed:
- ``monai.losses.GeneralizedDiceLoss.forward`` (MONAI 1.x, ``w_type="square"``), which
  keeps NiftyNet's (Sudre et al.'s) replacement of infinite weights by the largest one;
- nnU-Net's ``TopKLoss`` (github.com/MIC-DKFZ/nnUNet, ``nnunet/training/loss_functions/
  TopK_loss.py``; the Loss Odyssey's TopK10 trainer uses it with ``k=10``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_inputs import assert_value_and_grad_close

from losscli.losses import create_loss, get_loss_info

C = 3
IGNORE = 255


def fn(name: str):
    return get_loss_info(name).fn


def seg_inputs(n=2, c=C, size=(4, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn((n, c, *size), generator=g)).to(dtype)
    if c == 1:
        return x, torch.randint(2, (n, *size), generator=g).to(dtype)
    return x, torch.randint(c, (n, *size), generator=g)


# ------------------------------------------------------------- references, re-typed


def monai_generalized_dice(input, target, *, include_background=True, batch=False,
                           smooth_nr=1e-5, smooth_dr=1e-5, reduction="mean", valid=None):
    """``GeneralizedDiceLoss(softmax=True, to_onehot_y=True)`` (``sigmoid=True`` for one
    channel). ``valid`` (``[N, *]``, 0/1) zeroes ignored pixels in input and target first,
    which is how losscli defines ``ignore_index``."""
    n_pred_ch = input.shape[1]
    if n_pred_ch == 1:
        input = torch.sigmoid(input)
        target = target.unsqueeze(1).to(input.dtype)
    else:
        input = torch.softmax(input, 1)
        target = F.one_hot(target.clamp(0, n_pred_ch - 1), n_pred_ch).movedim(-1, 1)
        target = target.to(input.dtype)
    if valid is not None:
        input, target = input * valid.unsqueeze(1), target * valid.unsqueeze(1)
    if not include_background and n_pred_ch > 1:
        target = target[:, 1:]
        input = input[:, 1:]
    reduce_axis = list(range(2, len(input.shape)))
    if batch:
        reduce_axis = [0] + reduce_axis
    tp = torch.sum(input * target, reduce_axis)
    fp = torch.sum(input * (1 - target), reduce_axis)
    fn_ = torch.sum((1 - input) * target, reduce_axis)
    fp = fp * 0.5
    fn_ = fn_ * 0.5
    denominator = 2 * (tp + fp + fn_)
    ground_o = torch.sum(target, reduce_axis)
    w = torch.reciprocal(ground_o.float() * ground_o.float())
    infs = torch.isinf(w)
    if batch:
        w[infs] = 0.0
        w = w + infs * torch.max(w)
    else:
        w[infs] = 0.0
        max_values = torch.max(w, dim=1)[0].unsqueeze(dim=1)
        w = w + infs * max_values
    final_reduce_dim = 0 if batch else 1
    numer = 2.0 * (tp * w).sum(final_reduce_dim, keepdim=True) + smooth_nr
    denom = (denominator * w).sum(final_reduce_dim, keepdim=True) + smooth_dr
    f = 1.0 - (numer / denom)
    if reduction == "mean":
        return torch.mean(f)
    if reduction == "sum":
        return torch.sum(f)
    return f.view(-1)


def nnunet_topk(inp, target, k=10, ignore_index=-100):
    """nnU-Net's ``TopKLoss(k=k).forward`` (``target`` with its channel dim, as there)."""
    target = target[:, 0].long()
    res = F.cross_entropy(inp, target, reduction="none", ignore_index=ignore_index)
    num_voxels = np.prod(res.shape, dtype=np.int64)
    res, _ = torch.topk(res.view((-1,)), int(num_voxels * k / 100), sorted=False)
    return res.mean()


# ------------------------------------------------------------- generalized Dice


GDICE_CASES = [
    {},
    {"batch": True},
    {"include_background": False},
    {"include_background": False, "batch": True},
    {"smooth_nr": 0.0, "smooth_dr": 1e-3},
]


@pytest.mark.parametrize("params", GDICE_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gdice_matches_monai_formula(params, reduction):
    x, t = seg_inputs()
    t[0][t[0] == 2] = 1  # class 2 absent from image 0: its weight is the image's largest
    assert_value_and_grad_close(
        lambda x: fn("gdice")(x, t, reduction=reduction, **params),
        lambda x: monai_generalized_dice(x, t, reduction=reduction, **params), x)


@pytest.mark.parametrize("batch", [False, True])
def test_gdice_binary_matches_monai_formula(batch):
    x, t = seg_inputs(c=1)
    t[0] = 0  # an empty mask
    assert_value_and_grad_close(lambda x: fn("gdice")(x, t, batch=batch),
                                lambda x: monai_generalized_dice(x, t, batch=batch), x)


@pytest.mark.parametrize("batch", [False, True])
def test_gdice_ignored_pixels_are_excluded(batch):
    x, t = seg_inputs()
    t[0, 0] = IGNORE
    t[1, :, :2] = IGNORE
    valid = (t != IGNORE).to(x.dtype)
    assert_value_and_grad_close(
        lambda x: fn("gdice")(x, t, ignore_index=IGNORE, batch=batch),
        lambda x: monai_generalized_dice(x, t, batch=batch, valid=valid), x)


@pytest.mark.parametrize("params", GDICE_CASES[:4])
def test_gdice_matches_monai_live(params):
    monai_losses = pytest.importorskip("monai.losses")
    x, t = seg_inputs(seed=3)
    ref = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, **params)
    assert_value_and_grad_close(lambda x: fn("gdice")(x, t, **params),
                                lambda x: ref(x, t.unsqueeze(1)), x)
    xb, tb = seg_inputs(c=1, seed=4)
    ref = monai_losses.GeneralizedDiceLoss(sigmoid=True, batch=params.get("batch", False))
    assert_value_and_grad_close(lambda x: fn("gdice")(x, tb, batch=params.get("batch", False)),
                                lambda x: ref(x, tb.unsqueeze(1)), xb)


def test_gdice_hand_computed():
    """Uniform p = 1/2 on 4 pixels, two classes, no smoothing.

    Target (0, 0, 0, 1): G = (3, 1), w = (1/9, 1), I = (1.5, 0.5), P = (2, 2):
    1 - 2 (1.5/9 + 0.5) / ((2 + 3)/9 + (2 + 1)) = 1 - (4/3) / (32/9) = 0.625.
    Target (0, 0, 0, 0): class 1 absent, w = (1/16, 1/16 (the largest)), I = (2, 0):
    1 - 2 (2/16) / ((2 + 4)/16 + (2 + 0)/16) = 0.5.
    """
    x = torch.zeros(2, 2, 1, 4, dtype=torch.float64)
    t = torch.tensor([[[0, 0, 0, 1]], [[0, 0, 0, 0]]])
    loss = fn("gdice")(x, t, smooth_nr=0.0, smooth_dr=0.0, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.625, 0.5], dtype=torch.float64))


def test_gdice_perfect_prediction_and_unlabelled_image_are_zero():
    t = torch.tensor([[[0, 1, 2, 2]]])
    x = 40.0 * F.one_hot(t, C).movedim(-1, 1).double()
    assert fn("gdice")(x, t).item() == pytest.approx(0.0, abs=1e-8)
    x = torch.randn(1, C, 1, 4, dtype=torch.float64, requires_grad=True)
    loss = fn("gdice")(x, torch.full((1, 1, 4), IGNORE), ignore_index=IGNORE)
    assert loss.item() == 0.0
    assert torch.equal(torch.autograd.grad(loss, x)[0], torch.zeros_like(x))


def test_gdice_one_class_is_dice_without_smoothing():
    """One channel: the single weight cancels, so gdice is dice (both unsmoothed)."""
    x, t = seg_inputs(c=1)
    kw = {"smooth_nr": 0.0, "smooth_dr": 0.0}
    assert_value_and_grad_close(lambda x: fn("gdice")(x, t, reduction="none", **kw),
                                lambda x: fn("dice")(x, t, reduction="none", **kw)[:, 0], x)


# ------------------------------------------------------------- top-k CE


@pytest.mark.parametrize("k", [0.1, 0.25, 0.5, 1.0])
def test_topk_ce_batch_matches_nnunet(k):
    x, t = seg_inputs(size=(8, 8))
    assert_value_and_grad_close(lambda x: fn("topk_ce")(x, t, k=k, batch=True),
                                lambda x: nnunet_topk(x, t.unsqueeze(1), k=100 * k), x)


def test_topk_ce_per_image_is_nnunet_on_each_image():
    x, t = seg_inputs(n=3, size=(8, 8))
    assert_value_and_grad_close(
        lambda x: fn("topk_ce")(x, t, reduction="none"),
        lambda x: torch.stack([nnunet_topk(x[i:i + 1], t[i:i + 1, None]) for i in range(3)]), x)


def test_topk_ce_ignored_pixels_count_with_loss_zero_as_nnunet():
    x, t = seg_inputs(size=(8, 8))
    t[:, :6] = IGNORE  # 48 of 64 pixels ignored per image: fewer valid pixels than 12
    assert_value_and_grad_close(
        lambda x: fn("topk_ce")(x, t, k=0.2, batch=True, ignore_index=IGNORE),
        lambda x: nnunet_topk(x, t.unsqueeze(1), k=20, ignore_index=IGNORE), x)


def test_topk_ce_k1_is_pixel_mean_ce():
    x, t = seg_inputs()
    assert_value_and_grad_close(lambda x: fn("topk_ce")(x, t, k=1.0),
                                lambda x: F.cross_entropy(x, t), x)


def test_topk_ce_binary_is_topk_bce():
    x, t = seg_inputs(c=1, size=(4, 5))

    def ref(x):
        bce = F.binary_cross_entropy_with_logits(x[:, 0], t, reduction="none").reshape(2, -1)
        return bce.topk(5, dim=1).values.mean(1)  # 25 % of 20 pixels

    assert_value_and_grad_close(lambda x: fn("topk_ce")(x, t, k=0.25, reduction="none"), ref, x)


def test_topk_ce_hand_computed_count():
    """Floor of k * P, at least one: P = 100 keeps 29 at k = 0.29 (not 28) and 1 at 0.001."""
    x = torch.zeros(1, 2, 10, 10, dtype=torch.float64)
    x[0, 1].view(-1)[:40] = torch.linspace(1.0, 4.0, 40, dtype=torch.float64)
    t = torch.zeros(1, 10, 10, dtype=torch.long)
    per_pixel = F.cross_entropy(x, t, reduction="none").view(-1)
    for k, count in ((0.29, 29), (0.001, 1), (0.1, 10)):
        expected = per_pixel.sort(descending=True).values[:count].mean()
        torch.testing.assert_close(fn("topk_ce")(x, t, k=k), expected)


# ------------------------------------------------------------- both


@pytest.mark.parametrize(("name", "params"), [
    ("gdice", {"include_background": False}),
    ("gdice", {"batch": True, "smooth_nr": 0.0, "smooth_dr": 1e-2}),
    ("topk_ce", {"k": 0.3}),
    ("topk_ce", {"k": 0.2, "batch": True}),
])
@pytest.mark.parametrize("channels", [C, 1])
def test_gradcheck_float64_non_default(name, params, channels):
    x, t = seg_inputs(c=channels, size=(3, 3))
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fn(name)(x, t, **params), (x,))


@pytest.mark.parametrize(("spec", "match"), [
    ("topk_ce:k=0", r"k must be a fraction in \(0, 1\]"),
    ("topk_ce:k=1.5", r"k must be a fraction in \(0, 1\]"),
    ("gdice:smooth_dr=-1", "smooth_dr must be >= 0"),
])
def test_bad_parameters_raise_with_the_rule(spec, match):
    x, t = seg_inputs()
    with pytest.raises(ValueError, match=match):
        create_loss(spec)(x, t)


def test_registered_as_segmentation_losses():
    for name, alias in (("gdice", "generalized_dice"), ("topk_ce", "topk")):
        info = get_loss_info(alias)
        assert info.name == name and info.family.value == "segmentation" and info.reference
        assert info.needs == frozenset()
