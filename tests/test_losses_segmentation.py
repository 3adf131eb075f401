"""Segmentation losses against MONAI / segmentation_models_pytorch (recorded tables and,
when installed, live), hand-computed Lovász cases, limiting cases and edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from make_segmentation_fixtures import CASES, IGNORE, Case, evaluate, make_inputs

from losscli.losses import create_loss, get_loss_info
from losscli.losses.classification import cross_entropy
from losscli.losses.kinds import Family
from losscli.losses.segmentation import (
    dice_ce_loss,
    dice_focal_loss,
    dice_loss,
    focal_tversky_loss,
    jaccard_loss,
    lovasz_loss,
    tversky_loss,
)

FIXTURES = Path(__file__).parent / "fixtures"
REGION = (dice_loss, jaccard_loss, tversky_loss, focal_tversky_loss)
PER_IMAGE = (lovasz_loss, dice_ce_loss, dice_focal_loss)
ALL = REGION + PER_IMAGE
# MONAI runs in float64 except its focal term (float32); smp's Lovász computes in float32
TOL = {"monai": {"rtol": 1e-5, "atol": 1e-6}, "smp": {"rtol": 1e-5, "atol": 1e-6}}


def _ours(name: str, pred: torch.Tensor, target: torch.Tensor, params: dict):
    x = pred.detach().clone().requires_grad_()
    loss = get_loss_info(name).fn(x, target, **params)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _value_and_grad(fn, pred, target, **kw):
    x = pred.detach().clone().requires_grad_()
    loss = fn(x, target, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# --------------------------------------------------------------------------- recorded tables


def _fixture_rows() -> list:
    params = []
    for source in ("monai", "smp"):
        doc = json.loads((FIXTURES / f"segmentation_{source}.json").read_text())
        for row in doc["cases"]:
            inp = doc["inputs"][row["inputs"]]
            params.append(pytest.param(source, row, inp, id=f"{source}:{row['id']}"))
    return params


@pytest.mark.parametrize(("source", "row", "inp"), _fixture_rows())
def test_matches_recorded_reference(source: str, row: dict, inp: dict) -> None:
    pred = torch.tensor(inp["pred"], dtype=torch.float64)
    target = torch.tensor(inp["target"])
    target = target.double() if pred.shape[1] == 1 else target.long()
    loss, grad = _ours(row["loss"], pred, target, row["params"])
    expected = torch.tensor(row["expected"], dtype=torch.float64)
    torch.testing.assert_close(loss, expected, **TOL[source])
    torch.testing.assert_close(grad, torch.tensor(row["grad"], dtype=torch.float64), **TOL[source])


def test_fixture_tables_cover_every_case_and_stay_small() -> None:
    ids = set()
    for source in ("monai", "smp"):
        path = FIXTURES / f"segmentation_{source}.json"
        assert path.stat().st_size < 200_000
        ids |= {row["id"] for row in json.loads(path.read_text())["cases"]}
    assert ids == {c.id for c in CASES}, "re-run tests/make_segmentation_fixtures.py"
    assert {c.loss for c in CASES} == {i.__name__.removesuffix("_loss") for i in ALL}


# --------------------------------------------------------------------------- live references


def _live_cases(source: str) -> list:
    return [pytest.param(c, id=c.id) for c in CASES if c.source == source]


def _check_live(case: Case) -> None:
    # fresh inputs: another seed, batch 3, four classes, a non-square image
    pred, target = make_inputs(case.inputs, seed=7, n=3, c=4, size=(5, 6))
    ref_loss, ref_grad = evaluate(case, pred, target)
    loss, grad = _ours(case.loss, pred, target, case.params)
    torch.testing.assert_close(loss, ref_loss, **TOL[case.source])
    torch.testing.assert_close(grad, ref_grad, **TOL[case.source])


@pytest.mark.parametrize("case", _live_cases("monai"))
def test_matches_monai_live(case: Case) -> None:
    pytest.importorskip("monai")
    _check_live(case)


@pytest.mark.parametrize("case", _live_cases("smp"))
def test_matches_smp_live(case: Case) -> None:
    pytest.importorskip("segmentation_models_pytorch")
    _check_live(case)


def test_dice_matches_monai_on_volumes() -> None:
    ml = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 4, 3, 4, 5, dtype=torch.float64, generator=g)
    target = torch.randint(4, (2, 3, 4, 5), generator=g)
    kw = {"include_background": False, "batch": True, "smooth_nr": 0.5, "smooth_dr": 0.1}
    ours = _value_and_grad(dice_loss, pred, target, **kw)
    ref = _value_and_grad(
        lambda x, y: ml.DiceLoss(softmax=True, to_onehot_y=True, **kw)(x, y.unsqueeze(1)),
        pred, target)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- Lovász by hand


def test_lovasz_hinge_hand_computed() -> None:
    # errors 1 - x * sign = [-1, 0, 1.5]; sorted labels [0, 0, 1]: Jaccard steps
    # [1/2, 2/3, 1] -> gradient [1/2, 1/6, 1/3]; loss = 1.5 * 1/2 = 0.75
    x = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64).view(1, 1, 1, 3)
    y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 3)
    loss, grad = _value_and_grad(lovasz_loss, x, y)
    torch.testing.assert_close(loss, torch.tensor(0.75, dtype=torch.float64))
    torch.testing.assert_close(grad.flatten(), torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64))


def _two_class_logits(p1: list[float]) -> torch.Tensor:
    """Logits [1, 2, 1, P] whose softmax gives class-1 probabilities ``p1``."""
    p = torch.tensor(p1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))]).view(1, 2, 1, -1)


def test_lovasz_softmax_hand_computed() -> None:
    # p1 = [.9, .2, .6], labels [1, 0, 0]. Both classes have errors [.1, .2, .6].
    # class 1: sorted labels [0, 0, 1] -> grad [1/2, 1/6, 1/3] -> .3 + .2/6 + .1/3 = 11/30
    # class 0: sorted labels [1, 1, 0] -> Jaccard [1/2, 1, 1] -> grad [1/2, 1/2, 0] -> .4
    x = _two_class_logits([0.9, 0.2, 0.6])
    y = torch.tensor([1, 0, 0]).view(1, 1, 3)
    f64 = {"dtype": torch.float64}
    torch.testing.assert_close(lovasz_loss(x, y), torch.tensor((0.4 + 11 / 30) / 2, **f64))
    torch.testing.assert_close(lovasz_loss(x, y, include_background=False),
                               torch.tensor(11 / 30, **f64))
    # only class 1 present: 'present' averages it alone, 'all' adds class 0's loss.
    # class 1: errors [.1, .8, .4], all foreground: Jaccard [1/3, 2/3, 1] -> mean error 13/30
    # class 0 (absent): same errors, no foreground: Jaccard 1 from the start -> max error .8
    ones = torch.ones_like(y)
    torch.testing.assert_close(lovasz_loss(x, ones), torch.tensor(13 / 30, **f64))
    torch.testing.assert_close(lovasz_loss(x, ones, classes="all"),
                               torch.tensor((13 / 30 + 0.8) / 2, **f64))
    torch.testing.assert_close(lovasz_loss(x, ones, reduction="none", batch=True),
                               torch.tensor([13 / 30], **f64))


def test_lovasz_ignored_pixels_change_nothing() -> None:
    x = _two_class_logits([0.9, 0.2, 0.6, 0.3, 0.99])
    y = torch.tensor([1, 0, 0, IGNORE, IGNORE]).view(1, 1, 5)
    loss, grad = _value_and_grad(lovasz_loss, x, y, ignore_index=IGNORE)
    ref, ref_grad = _value_and_grad(lovasz_loss, x[..., :3], y[..., :3])
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad[..., :3], ref_grad)
    assert torch.equal(grad[..., 3:], torch.zeros_like(grad[..., 3:]))


# --------------------------------------------------------------------------- limiting cases


def _mc(n=2, c=3, size=(4, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n, c, *size), generator=g, dtype=dtype),
            torch.randint(c, (n, *size), generator=g))


def _binary(n=2, size=(4, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n, 1, *size), generator=g, dtype=dtype),
            torch.bernoulli(torch.full((n, *size), 0.5, dtype=dtype), generator=g))


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("binary", [False, True], ids=["softmax", "sigmoid"])
def test_perfect_prediction_is_about_zero(fn, binary: bool) -> None:
    if binary:
        _, target = _binary()
        pred = 50.0 * (2 * target - 1).unsqueeze(1)
    else:
        _, target = _mc()
        target[0][target[0] == 2] = 0  # class 2 absent from image 0: an empty class
        pred = 50.0 * F.one_hot(target, 3).movedim(-1, 1).double()
    for batch in (False, True):
        loss = fn(pred.float(), target, batch=batch)
        assert 0 <= float(loss) < 1e-6, (batch, float(loss))


def test_tversky_limits_are_dice_and_jaccard() -> None:
    pred, target = _mc(seed=1)
    s = 0.3  # Tversky's ratio has no factor 2: half the smoothing gives the same score
    tv = _value_and_grad(tversky_loss, pred, target, alpha=0.5, beta=0.5, smooth_nr=s / 2,
                         smooth_dr=s / 2)
    torch.testing.assert_close(tv, _value_and_grad(dice_loss, pred, target, smooth_nr=s,
                                                   smooth_dr=s))
    tv = _value_and_grad(tversky_loss, pred, target, alpha=1.0, beta=1.0, smooth_nr=s / 2,
                         smooth_dr=s / 2)
    torch.testing.assert_close(tv, _value_and_grad(jaccard_loss, pred, target, smooth_nr=s,
                                                   smooth_dr=s))


def test_focal_tversky_gamma_one_is_tversky() -> None:
    pred, target = _mc(seed=2)
    kw = {"alpha": 0.3, "beta": 0.7, "batch": True}
    torch.testing.assert_close(_value_and_grad(focal_tversky_loss, pred, target, gamma=1.0, **kw),
                               _value_and_grad(tversky_loss, pred, target, **kw))
    # and gamma < 1 raises small per-class losses: 0.75 is the paper's 1/gamma = 3/4
    ti = 1 - tversky_loss(pred, target, reduction="none", **kw)
    torch.testing.assert_close(focal_tversky_loss(pred, target, reduction="none", **kw),
                               (1 - ti) ** 0.75)


@pytest.mark.parametrize("binary", [False, True], ids=["softmax", "sigmoid"])
def test_dice_focal_gamma_zero_is_dice_ce(binary: bool) -> None:
    pred, target = _binary(seed=3) if binary else _mc(seed=3)
    kw = {"batch": False, "lambda_dice": 0.7}
    torch.testing.assert_close(
        _value_and_grad(dice_focal_loss, pred, target, gamma=0.0, lambda_focal=1.3, **kw),
        _value_and_grad(dice_ce_loss, pred, target, lambda_ce=1.3, **kw))


def test_dice_ce_is_dice_plus_ce_with_ignored_pixels() -> None:
    pred, target = _mc(n=3, seed=4)
    target[0, :2] = IGNORE
    target[2] = IGNORE  # one image fully ignored
    kw = {"ignore_index": IGNORE}
    # batch=True: pooled Dice plus the batch pixel-mean CE (the registered 'ce')
    total = create_loss("dice:batch=true,ignore_index=255+ce:ignore_index=255")
    torch.testing.assert_close(_value_and_grad(dice_ce_loss, pred, target, batch=True, **kw),
                               _value_and_grad(total, pred, target))
    # batch=False, 'none': per image, class-mean Dice plus that image's pixel-mean CE
    dice = dice_loss(pred, target, reduction="none", **kw).mean(1)
    ce = cross_entropy(pred, target, reduction="none", **kw).sum((1, 2))
    ce = ce / (target != IGNORE).sum((1, 2)).clamp_min(1)
    torch.testing.assert_close(dice_ce_loss(pred, target, reduction="none", **kw), dice + ce)
    assert float(ce[2]) == 0.0


# --------------------------------------------------------------------------- empty and ignored


def test_empty_class_without_smoothing_scores_perfectly() -> None:
    """No ground truth and no prediction mass (all its pixels ignored) and smooth 0: loss 0,
    gradient 0 (defined, where MONAI would give NaN)."""
    pred, target = _mc(seed=5)
    target[1] = IGNORE
    kw = {"ignore_index": IGNORE, "smooth_nr": 0.0, "smooth_dr": 0.0}
    for fn in REGION:
        x = pred.clone().requires_grad_()
        none = fn(x, target, reduction="none", **kw)
        assert none.shape == (2, 3) and torch.equal(none[1], torch.zeros(3, dtype=none.dtype))
        (grad,) = torch.autograd.grad(none.mean(), x)
        assert torch.isfinite(grad).all() and torch.equal(grad[1], torch.zeros_like(grad[1]))


def test_empty_class_with_smoothing_is_about_zero_like_monai() -> None:
    pred, target = _mc(seed=6)
    target[target == 2] = 0
    pred[:, 2] = -30.0  # no ground truth, (almost) no predicted mass for class 2
    per_class = dice_loss(pred, target, reduction="none")
    assert float(per_class[:, 2].max()) < 1e-6
    # with predicted mass the absent class costs ~1 (MONAI's rule; smp would zero it)
    pred[:, 2] = 0.0
    assert float(dice_loss(pred, target, reduction="none")[:, 2].min()) > 0.99


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("binary", [False, True], ids=["softmax", "sigmoid"])
@pytest.mark.parametrize("smooth", [0.0, 1e-5])
def test_all_ignored_and_empty_masks_are_finite(fn, binary: bool, smooth: float) -> None:
    pred, target = _binary(seed=7, dtype=torch.float32) if binary else _mc(seed=7,
                                                                          dtype=torch.float32)
    kw = {} if fn is lovasz_loss else {"smooth_nr": smooth, "smooth_dr": smooth}
    targets = [torch.full_like(target, IGNORE), torch.zeros_like(target)]
    for tgt in targets:
        for batch in (False, True):
            x = (100 * pred).requires_grad_()  # saturated probabilities too
            loss = fn(x, tgt, ignore_index=IGNORE, batch=batch, **kw)
            (grad,) = torch.autograd.grad(loss, x)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (batch, loss)
    x = pred.clone().requires_grad_()
    loss = fn(x, targets[0], ignore_index=IGNORE, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    assert float(loss.detach()) == 0.0 and not grad.any(), "all ignored: no loss, no gradient"


def test_binary_mask_with_or_without_channel_dim() -> None:
    pred, target = _binary(seed=8)
    for fn in ALL:
        torch.testing.assert_close(fn(pred, target), fn(pred, target.unsqueeze(1)))
        torch.testing.assert_close(fn(pred, target), fn(pred, target.bool()))


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("binary", [False, True], ids=["softmax", "sigmoid"])
def test_gradcheck_float64(fn, binary: bool) -> None:
    pred, target = _binary(size=(2, 3), seed=9) if binary else _mc(size=(2, 3), seed=9)
    target[0, 0, 0] = IGNORE
    kw = {"ignore_index": IGNORE, "batch": bool(binary)}
    if fn is not lovasz_loss:
        kw["include_background"] = False
    x = pred.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, target, **kw), (x,))


# --------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("binary", [False, True], ids=["softmax", "sigmoid"])
def test_reduction_shapes(fn, batch: bool, binary: bool) -> None:
    pred, target = _binary(n=4, seed=10) if binary else _mc(n=4, c=3, seed=10)
    none = fn(pred, target, batch=batch, reduction="none")
    rows = 1 if batch else 4
    if fn in REGION:
        classes = 1 if binary else 3
        assert none.shape == (rows, classes)
        no_bg = fn(pred, target, batch=batch, include_background=False, reduction="none")
        assert no_bg.shape == (rows, classes if binary else classes - 1)
    else:
        assert none.shape == (rows,)
    torch.testing.assert_close(fn(pred, target, batch=batch), none.mean())
    torch.testing.assert_close(fn(pred, target, batch=batch, reduction="sum"), none.sum())
    w = torch.linspace(0.5, 2.0, none.numel(), dtype=none.dtype).view(none.shape)
    torch.testing.assert_close(fn(pred, target, batch=batch, weight=w, avg_factor=3.0),
                               (none * w).sum() / (3.0 + torch.finfo(torch.float32).eps))


# --------------------------------------------------------------------------- registry / checks


def test_registered_as_segmentation_losses() -> None:
    for name in ("dice", "jaccard", "tversky", "focal_tversky", "lovasz", "dice_ce",
                 "dice_focal"):
        info = get_loss_info(name)
        assert info.family is Family.SEGMENTATION and info.pred.value == "logits"
        assert info.target.value == "index" and "ignore_index" in info.params
    assert get_loss_info("dice").params["smooth_nr"] == 1e-5
    assert get_loss_info("focal_tversky").params["gamma"] == 0.75
    loss = create_loss("dice:batch=true,include_background=false+0.5*lovasz:classes=all")
    pred, target = _mc(seed=11)
    expected = dice_loss(pred, target, batch=True, include_background=False) + 0.5 * lovasz_loss(
        pred, target, classes="all")
    torch.testing.assert_close(loss(pred, target), expected)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p, t: dice_loss(p, t.float()), "integer"),
        (lambda p, t: dice_loss(p, t[:, :2]), "class indices of shape"),
        (lambda p, t: dice_loss(p[:, :1], t[:, :2]), "binary mode"),
        (lambda p, t: dice_loss(p[0, 0, 0], t), "pred must be"),
        (lambda p, t: jaccard_loss(p, t, smooth_nr=-1.0), "smooth_nr must be >= 0"),
        (lambda p, t: tversky_loss(p, t, beta=-0.1), "beta must be >= 0"),
        (lambda p, t: focal_tversky_loss(p, t, gamma=-1.0), "gamma must be >= 0"),
        (lambda p, t: lovasz_loss(p, t, classes="some"), "classes must be one of"),
        (lambda p, t: dice_ce_loss(p, t, lambda_ce=-1.0), "lambda_ce must be >= 0"),
        (lambda p, t: dice_focal_loss(p, t, lambda_focal=-1.0), "lambda_focal must be >= 0"),
        (lambda p, t: dice_focal_loss(p, t, reduction="avg"), "reduction must be"),
    ],
)
def test_invalid_arguments_raise(call, match: str) -> None:
    pred, target = _mc()
    with pytest.raises(ValueError, match=match):
        call(pred, target)


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("binary", [False, True], ids=["softmax", "sigmoid"])
def test_no_data_dependent_ops_on_meta_device(fn, binary: bool) -> None:
    """Tensors on the meta device have no data: ``.item()``, ``if tensor``, boolean-mask
    indexing and ``nonzero`` raise there, so forward and backward passing means no host sync."""
    channels = 1 if binary else 3
    x = torch.empty(2, channels, 8, 8, device="meta", requires_grad=True)
    target = torch.empty(2, 8, 8, device="meta", dtype=torch.float32 if binary else torch.long)
    for batch in (False, True):
        for reduction in ("none", "mean"):
            loss = fn(x, target, ignore_index=IGNORE, batch=batch, reduction=reduction)
            loss.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_no_host_sync_on_cuda(fn) -> None:
    pred, target = _mc(n=2, c=3, size=(16, 16), dtype=torch.float32)
    target[0, :3] = IGNORE
    x = pred.cuda().requires_grad_()
    target = target.cuda()
    fn(x, target, ignore_index=IGNORE).backward()  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in (False, True):
            fn(x, target, ignore_index=IGNORE, batch=batch).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(float(x.grad.sum()))
