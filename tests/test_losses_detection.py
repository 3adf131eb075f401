"""Detection losses (ssd, focal_det), their pieces, and the SSD box coder / matcher.

References: loop implementations of ssd.pytorch's MultiBoxLoss and of RetinaNet's loss
written here, torchvision's BoxCoder and sigmoid_focal_loss, hand-computed tiny cases,
mmdetection's weighted-loss formula ``sum(w * l) / (avg_factor + eps)``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision import ops
from torchvision.models.detection._utils import BoxCoder

from losscli.losses import Family, Pred, Target, create_loss, get_loss_info
from losscli.losses.boxes import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    iou_loss,
)
from losscli.losses.detection import (
    box_regression_loss,
    focal_detection_loss,
    hard_negative_mask,
    num_positives,
    positive_mask,
    sigmoid_focal_classification_loss,
    ssd_classification_loss,
    ssd_loss,
)
from losscli.losses.reduction import _EPS
from losscli.ops import build_targets, decode, encode, match

# --------------------------------------------------------------------------- inputs


def detection_inputs(b=3, a=40, c=4, dtype=torch.float64, seed=0, ignore=True):
    """Random (pred, target); about 1/5 positives, some ignored anchors."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(b, a, 4, generator=g, dtype=dtype)
    logits = 2 * torch.randn(b, a, c, generator=g, dtype=dtype)
    target_offsets = torch.randn(b, a, 4, generator=g, dtype=dtype)
    u = torch.rand(b, a, generator=g)
    labels = torch.where(u < 0.2, torch.randint(1, c, (b, a), generator=g), 0)
    if ignore:
        labels = torch.where(u > 0.9, -1, labels)
    return (offsets, logits), (target_offsets, labels)


def _leaves(pred):
    return tuple(x.clone().requires_grad_(True) for x in pred)


# --------------------------------------------------------------------------- references


def reference_ssd(pred, target, neg_pos_ratio=3.0, beta=1.0, loc_weight=1.0):
    """ssd.pytorch's MultiBoxLoss, one image at a time, with boolean indexing and a
    Python sort; ignored anchors (-1) are neither positive nor negative candidates."""
    offsets, logits = pred
    target_offsets, labels = target
    loc_total = conf_total = 0.0
    n_pos_total = 0
    for i in range(labels.shape[0]):
        pos = labels[i] > 0
        n_pos = int(pos.sum())
        loc_total = loc_total + F.smooth_l1_loss(
            offsets[i][pos], target_offsets[i][pos], reduction="sum", beta=beta)
        bg_loss = (-F.log_softmax(logits[i], dim=-1)[:, 0]).tolist()
        candidates = [a for a in range(labels.shape[1]) if labels[i, a] == 0]
        candidates.sort(key=lambda a: -bg_loss[a])
        chosen = pos.clone()
        for a in candidates[: math.floor(neg_pos_ratio * n_pos)]:
            chosen[a] = True
        conf_total = conf_total + F.cross_entropy(
            logits[i][chosen], labels[i][chosen], reduction="sum")
        n_pos_total += n_pos
    return (loc_weight * loc_total + conf_total) / n_pos_total


def reference_focal_det(pred, target, alpha=0.25, gamma=2.0, box="smooth_l1", beta=0.11):
    """RetinaNet's loss anchor by anchor, class by class, from the paper's formula."""
    offsets, logits = pred
    target_offsets, labels = target
    total = 0.0
    n_pos = 0
    for i in range(labels.shape[0]):
        for a in range(labels.shape[1]):
            label = int(labels[i, a])
            if label < 0:
                continue
            for c in range(1, logits.shape[-1]):
                x, t = logits[i, a, c], float(label == c)
                p = torch.sigmoid(x)
                ce = -t * F.logsigmoid(x) - (1 - t) * F.logsigmoid(-x)
                p_t = p * t + (1 - p) * (1 - t)
                total = total + (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma * ce
            if label > 0:
                n_pos += 1
                d = (offsets[i, a] - target_offsets[i, a]).abs()
                if box == "l1" or beta == 0:
                    total = total + d.sum()
                else:
                    total = total + torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta).sum()
    return total / max(n_pos, 1)


def reference_match(gt_boxes, gt_labels, anchors_xyxy, threshold=0.5):
    """ssd.pytorch's ``match`` (including its loop over ground-truth boxes)."""
    overlaps = ops.box_iou(gt_boxes, anchors_xyxy)
    best_prior_idx = overlaps.argmax(1)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap.index_fill_(0, best_prior_idx, 2)
    for j in range(best_prior_idx.shape[0]):
        best_truth_idx[best_prior_idx[j]] = j
    labels = gt_labels[best_truth_idx].clone()
    labels[best_truth_overlap < threshold] = 0
    return labels, gt_boxes[best_truth_idx]


def _assert_value_and_grads(fn, ref, pred, target, rtol=1e-6, atol=1e-8):
    leaves, ref_leaves = _leaves(pred), _leaves(pred)
    value, expected = fn(leaves, target), ref(ref_leaves, target)
    torch.testing.assert_close(value, expected, rtol=rtol, atol=atol)
    grads = torch.autograd.grad(value, leaves)
    ref_grads = torch.autograd.grad(expected, ref_leaves)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- ssd


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("neg_pos_ratio", "beta", "loc_weight"),
                         [(3.0, 1.0, 1.0), (1.0, 0.5, 2.0), (2.5, 0.0, 1.0), (100.0, 1.0, 0.5)])
def test_ssd_equals_reference(seed, neg_pos_ratio, beta, loc_weight):
    pred, target = detection_inputs(seed=seed)
    kwargs = {"neg_pos_ratio": neg_pos_ratio, "beta": beta, "loc_weight": loc_weight}
    _assert_value_and_grads(lambda p, t: ssd_loss(p, t, **kwargs),
                            lambda p, t: reference_ssd(p, t, **kwargs), pred, target)


def _tiny_ssd_case():
    """1 image, 5 anchors, 2 classes: anchor 0 positive, 1-3 background, 4 ignored."""
    logits = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, -1.0], [0.0, 5.0]]])
    offsets = torch.tensor([[[0.5, 0.0, 2.0, 0.0], [9.0, 9, 9, 9], [9, 9, 9, 9],
                             [9, 9, 9, 9], [9, 9, 9, 9]]])
    labels = torch.tensor([[1, 0, 0, 0, -1]])
    return (offsets, logits), (torch.zeros(1, 5, 4), labels)


@pytest.mark.parametrize(("neg_pos_ratio", "mined"), [(0.0, []), (1.0, [2]), (2.0, [2, 1]),
                                                      (3.0, [2, 1, 3]), (10.0, [2, 1, 3])])
def test_ssd_tiny_hand_computed(neg_pos_ratio, mined):
    pred, target = _tiny_ssd_case()
    loc = 0.5 * 0.5**2 + (2.0 - 0.5)  # smooth L1 (beta 1) of (0.5, 0, 2, 0)
    # background CE of anchor a with logits (0, x): softplus(x); anchor 4 (the hardest,
    # softplus(5)) is ignored and never mined; the positive's CE is log 2
    bg = {1: math.log1p(math.e), 2: math.log1p(math.e**2), 3: math.log1p(math.e**-1)}
    expected = loc + math.log(2) + sum(bg[a] for a in mined)
    out = ssd_loss(pred, target, neg_pos_ratio=neg_pos_ratio)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    mask = hard_negative_mask(-F.log_softmax(pred[1], -1)[..., 0], target[1], neg_pos_ratio)
    assert mask[0].nonzero().flatten().tolist() == sorted(mined)


def test_ssd_no_positive_is_exactly_zero_with_a_graph():
    (offsets, logits), (target_offsets, labels) = detection_inputs(seed=3)
    labels = labels.clamp_max(0)  # background and ignored only
    leaves = _leaves((offsets, logits))
    for reduction in ("mean", "sum", "none"):
        out = ssd_loss(leaves, (target_offsets, labels), reduction=reduction)
        assert out.requires_grad and bool((out == 0).all())
    grads = torch.autograd.grad(ssd_loss(leaves, (target_offsets, labels)), leaves)
    assert all(bool((g == 0).all()) for g in grads)


def test_ssd_reductions_and_weights():
    pred, target = detection_inputs(seed=4)
    labels = target[1]
    per_image = ssd_loss(pred, target, reduction="none")
    assert per_image.shape == (3,)
    torch.testing.assert_close(ssd_loss(pred, target, reduction="sum"), per_image.sum())
    torch.testing.assert_close(ssd_loss(pred, target),
                               per_image.sum() / positive_mask(labels).sum())
    # per-image 'none' equals the one-image loss's sum
    for i in range(3):
        one = ssd_loss((pred[0][i:i + 1], pred[1][i:i + 1]),
                       (target[0][i:i + 1], labels[i:i + 1]), reduction="sum")
        torch.testing.assert_close(per_image[i], one)
    # weight is per anchor; avg_factor replaces the number of positives
    w = torch.rand(3, 40, dtype=torch.float64)
    loc = box_regression_loss(pred[0], target[0], labels, "smooth_l1", 1.0)
    conf = ssd_classification_loss(pred[1], labels)
    torch.testing.assert_close(ssd_loss(pred, target, weight=w, avg_factor=7.0),
                               (w * (loc + conf)).sum() / (7.0 + _EPS))


def test_ssd_gradcheck_float64():
    pred, target = detection_inputs(b=2, a=8, c=3, seed=5)
    assert torch.autograd.gradcheck(lambda o, lg: ssd_loss((o, lg), target, neg_pos_ratio=1.0),
                                    _leaves(pred))


def test_ignored_anchors_contribute_nothing():
    pred, target = detection_inputs(seed=6)
    labels = target[1]
    leaves = _leaves(pred)
    grads = torch.autograd.grad(ssd_loss(leaves, target, neg_pos_ratio=100.0), leaves)
    ignored = labels < 0
    assert bool((grads[0][ignored] == 0).all()) and bool((grads[1][ignored] == 0).all())
    # non-finite target offsets on non-positive anchors are never read
    bad = torch.where(positive_mask(labels).unsqueeze(-1), target[0], float("nan"))
    torch.testing.assert_close(ssd_loss(pred, (bad, labels)), ssd_loss(pred, target))


def test_hard_negative_mask_counts():
    g = torch.Generator().manual_seed(7)
    labels = torch.zeros(4, 30, dtype=torch.int64)
    labels[0, :2] = 1
    labels[1, :5] = 2
    labels[1, 5:25] = -1  # only 5 negatives left for 15 wanted
    labels[3, 0] = 1
    loss = torch.rand(4, 30, generator=g)
    mask = hard_negative_mask(loss, labels, 3.0)
    assert mask.sum(1).tolist() == [6, 5, 0, 3]
    assert not bool((mask & (labels != 0)).any())
    # the chosen are the hardest of each image's negatives
    chosen = torch.where(mask[0], loss[0], float("inf")).min()
    assert chosen >= torch.where((labels[0] == 0) & ~mask[0], loss[0], float("-inf")).max()


# --------------------------------------------------------------------------- focal_det


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("box", "beta", "alpha", "gamma"),
                         [("smooth_l1", 0.11, 0.25, 2.0), ("l1", 0.11, 0.5, 0.0),
                          ("smooth_l1", 1.0, 0.75, 1.5)])
def test_focal_det_equals_reference(seed, box, beta, alpha, gamma):
    pred, target = detection_inputs(b=2, a=15, c=3, seed=seed)
    kwargs = {"box": box, "beta": beta, "alpha": alpha, "gamma": gamma}
    _assert_value_and_grads(lambda p, t: focal_detection_loss(p, t, **kwargs),
                            lambda p, t: reference_focal_det(p, t, **kwargs), pred, target)


def test_focal_det_tiny_hand_computed():
    logits = torch.zeros(1, 5, 2)  # one object class; p = 0.5 everywhere
    offsets = torch.tensor([[[1.0, 0, 0, 0], [5, 5, 5, 5], [5, 5, 5, 5], [5, 5, 5, 5],
                             [0, 0, 0, -2.0]]])
    labels = torch.tensor([[1, 0, 0, -1, 1]])
    target = (torch.zeros(1, 5, 4), labels)
    log2 = math.log(2)
    cls = 2 * 0.25 * 0.5**2 * log2 + 2 * 0.75 * 0.5**2 * log2  # 2 positives, 2 negatives
    out = focal_detection_loss((offsets, logits), target, box="l1")
    assert out.item() == pytest.approx((cls + 1.0 + 2.0) / 2, rel=1e-6)
    out = focal_detection_loss((offsets, logits), target, box="smooth_l1", beta=1.0)
    assert out.item() == pytest.approx((cls + 0.5 + 1.5) / 2, rel=1e-6)


def test_focal_classification_equals_torchvision():
    (_, logits), (_, labels) = detection_inputs(seed=8, dtype=torch.float32)
    one_hot = F.one_hot(labels.clamp_min(0), logits.shape[-1])[..., 1:].float()
    expected = ops.sigmoid_focal_loss(logits[..., 1:], one_hot, reduction="none").sum(-1)
    expected = expected * (labels >= 0)
    torch.testing.assert_close(sigmoid_focal_classification_loss(logits, labels), expected)


def test_focal_det_background_only_is_divided_by_one():
    pred, (target_offsets, labels) = detection_inputs(seed=9)
    labels = labels.clamp_max(0)
    cls = sigmoid_focal_classification_loss(pred[1], labels)
    torch.testing.assert_close(focal_detection_loss(pred, (target_offsets, labels)),
                               cls.sum() / (1 + _EPS))


def test_focal_det_gradcheck_float64():
    pred, target = detection_inputs(b=2, a=6, c=3, seed=10)
    assert torch.autograd.gradcheck(lambda o, lg: focal_detection_loss((o, lg), target),
                                    _leaves(pred))


# --------------------------------------------------------------------------- shared


@pytest.mark.parametrize("name", ["ssd", "focal_det"])
def test_registered_and_spec(name):
    info = get_loss_info(name)
    assert (info.family, info.pred, info.target) == (
        Family.DETECTION, Pred.DETECTIONS, Target.DETECTIONS)
    pred, target = detection_inputs(dtype=torch.float32)
    spec = "ssd:neg_pos_ratio=2,beta=0.5" if name == "ssd" else "focal_det:box=l1,gamma=1"
    kwargs = ({"neg_pos_ratio": 2.0, "beta": 0.5} if name == "ssd"
              else {"box": "l1", "gamma": 1.0})
    torch.testing.assert_close(create_loss(spec)(pred, target), info.fn(pred, target, **kwargs))
    half = create_loss(name)((pred[0].half(), pred[1].half()), (target[0].half(), target[1]))
    assert half.dtype == torch.float32


@pytest.mark.parametrize("fn", [ssd_loss, focal_detection_loss])
def test_invalid_arguments(fn):
    pred, target = detection_inputs(dtype=torch.float32)
    offsets, logits = pred
    target_offsets, labels = target
    with pytest.raises(ValueError, match="pred must be"):
        fn(offsets, target)
    with pytest.raises(ValueError, match="target must be"):
        fn(pred, labels)
    with pytest.raises(ValueError, match=r"offsets must be \[B, A, 4\]"):
        fn((offsets[..., :3], logits), target)
    with pytest.raises(ValueError, match=r"logits must be \[B, A, C\]"):
        fn((offsets, logits[:, :5]), target)
    with pytest.raises(ValueError, match="C >= 2"):
        fn((offsets, logits[..., :1]), target)
    with pytest.raises(ValueError, match="target offsets"):
        fn(pred, (target_offsets[:, :5], labels))
    with pytest.raises(ValueError, match="labels must be integers"):
        fn(pred, (target_offsets, labels.float()))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fn(pred, target, reduction="avg")
    with pytest.raises(ValueError, match="beta must be >= 0"):
        fn(pred, target, beta=-1.0)
    if fn is focal_detection_loss:
        with pytest.raises(ValueError, match="box must be one of"):
            fn(pred, target, box="giou")
        with pytest.raises(ValueError, match=r"alpha must be in \[0.0, 1.0\]"):
            fn(pred, target, alpha=1.5)
    else:
        with pytest.raises(ValueError, match="neg_pos_ratio must be >= 0"):
            fn(pred, target, neg_pos_ratio=-1.0)


@pytest.mark.parametrize("fn", [ssd_loss, focal_detection_loss])
def test_empty_batch_and_no_anchors(fn):
    for b, a in ((0, 10), (2, 0)):
        pred, target = detection_inputs(b=b, a=a, dtype=torch.float32)
        leaves = _leaves(pred)
        out = fn(leaves, target)
        assert out.item() == 0.0 and out.requires_grad
        assert fn(leaves, target, reduction="none").shape == (b,)


def test_num_positives_and_mask():
    labels = torch.tensor([[1, 0, -1, 3], [0, 0, 2, 0]])
    assert positive_mask(labels).tolist() == [[True, False, False, True],
                                              [False, False, True, False]]
    assert num_positives(labels).item() == 3.0


def test_no_host_sync_on_meta_tensors():
    """Data-dependent ops (``.item()``, boolean-mask indexing, ``nonzero``) fail on the
    meta device, so a loss that runs there does not sync with the host."""
    m = "meta"
    pred = (torch.randn(2, 10, 4, device=m, requires_grad=True),
            torch.randn(2, 10, 3, device=m, requires_grad=True))
    target = (torch.randn(2, 10, 4, device=m), torch.randint(-1, 3, (2, 10), device=m))
    for fn in (ssd_loss, focal_detection_loss):
        for reduction in ("mean", "sum", "none"):
            fn(pred, target, reduction=reduction).sum().backward()
    boxes = torch.rand(5, 4, device=m, requires_grad=True)
    for fn in (iou_loss, generalized_box_iou_loss, distance_box_iou_loss, complete_box_iou_loss):
        fn(boxes, boxes.detach()).backward()
    anchors = torch.rand(10, 4, device=m)
    labels, matched = match(torch.rand(3, 4, device=m), torch.ones(3, dtype=torch.int64,
                                                                    device=m), anchors, 0.5, 0.4)
    decode(encode(matched, anchors), anchors)
    # the check can fail: torchvision's loss uses boolean-mask assignment
    with pytest.raises((NotImplementedError, RuntimeError)):
        ops.generalized_box_iou_loss(boxes, boxes.detach())


# ------------------------------------------------------- mmdetection-style weighted losses


def test_weighted_smooth_l1_as_mmdetection():
    g = torch.Generator().manual_seed(11)
    pred, target = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    w, k = torch.rand(6, 4, generator=g), 2.5
    d = (pred - target).abs()
    beta = 0.5
    elementwise = torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    out = create_loss("smooth_l1:beta=0.5")(pred, target, weight=w, avg_factor=k)
    torch.testing.assert_close(out, (w * elementwise).sum() / (k + _EPS))


def test_weighted_cross_entropy_as_mmdetection():
    g = torch.Generator().manual_seed(12)
    logits, labels = torch.randn(7, 5, generator=g), torch.randint(5, (7,), generator=g)
    w, k = torch.rand(7, generator=g), 3.0
    elementwise = -torch.log_softmax(logits, 1)[torch.arange(7), labels]
    out = create_loss("ce")(logits, labels, weight=w, avg_factor=k)
    torch.testing.assert_close(out, (w * elementwise).sum() / (k + _EPS))


def test_weighted_sigmoid_focal_as_mmdetection():
    try:
        get_loss_info("sigmoid_focal")
    except Exception:
        pytest.skip("sigmoid_focal is not registered")
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(8, 3, generator=g)
    targets = F.one_hot(torch.randint(4, (8,), generator=g), 4)[:, 1:].float()
    w, k, alpha, gamma = torch.rand(8, generator=g), 2.0, 0.25, 2.0
    # mmdetection's py_sigmoid_focal_loss, with a per-anchor weight broadcast over classes
    p = logits.sigmoid()
    pt = (1 - p) * targets + p * (1 - targets)
    focal_weight = (alpha * targets + (1 - alpha) * (1 - targets)) * pt.pow(gamma)
    elementwise = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = (elementwise * focal_weight * w[:, None]).sum() / (k + _EPS)
    out = create_loss("sigmoid_focal")(logits, targets, weight=w[:, None], avg_factor=k)
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------- box coder


def test_encode_hand_computed():
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[[0.4, 0.4, 0.6, 0.6]], [[0.45, 0.4, 0.65, 0.6]],
                       [[0.3, 0.45, 0.7, 0.55]]])
    expected = torch.tensor([[[0.0, 0.0, 0.0, 0.0]],
                             [[0.05 / (0.1 * 0.2), 0.0, 0.0, 0.0]],
                             [[0.0, 0.0, math.log(2) / 0.2, math.log(0.5) / 0.2]]])
    torch.testing.assert_close(encode(gt, anchors), expected)


def test_encode_decode_equal_torchvision_boxcoder():
    g = torch.Generator().manual_seed(14)
    anchors = torch.cat([torch.rand(50, 2, generator=g), torch.rand(50, 2, generator=g) + 0.05],
                        1)
    gt_xy = torch.rand(50, 2, generator=g)
    gt = torch.cat([gt_xy, gt_xy + torch.rand(50, 2, generator=g) + 0.01], 1)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))  # = variances (0.1, 0.2)
    anchors_xyxy = ops.box_convert(anchors, "cxcywh", "xyxy")
    offsets = encode(gt, anchors)
    torch.testing.assert_close(offsets, coder.encode_single(gt, anchors_xyxy),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decode(offsets, anchors),
                               coder.decode_single(offsets, anchors_xyxy), rtol=1e-5, atol=1e-5)


def test_round_trip_and_variances():
    g = torch.Generator().manual_seed(15)
    anchors = torch.cat([torch.rand(30, 2, generator=g), torch.rand(30, 2, generator=g) + 0.1],
                        1).double()
    offsets = torch.randn(2, 30, 4, generator=g, dtype=torch.float64)
    for variances in ((0.1, 0.2), (1.0, 1.0), (0.05, 0.5)):
        boxes = decode(offsets, anchors, variances)
        torch.testing.assert_close(encode(boxes, anchors, variances), offsets)
        torch.testing.assert_close(decode(encode(boxes, anchors, variances), anchors, variances),
                                   boxes)
    with pytest.raises(ValueError, match="variances must be two positive numbers"):
        encode(boxes, anchors, (0.1, 0.0))
    with pytest.raises(ValueError, match=r"offsets must have shape \[..., 4\]"):
        decode(offsets[..., :2], anchors)


def test_decode_gradcheck_and_giou_through_decode():
    g = torch.Generator().manual_seed(16)
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.2, 0.7, 0.4, 0.1]], dtype=torch.float64)
    offsets = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda o: decode(o, anchors), (offsets,))
    gt = decode(torch.randn(2, 4, generator=g, dtype=torch.float64), anchors)
    assert torch.autograd.gradcheck(
        lambda o: generalized_box_iou_loss(decode(o, anchors), gt), (offsets,))


def test_match_hand_computed():
    anchors = torch.tensor([
        [0.0, 0.0, 1.0, 1.0],  # IoU 1 with gt 0
        [0.0, 0.0, 1.0, 2.0],  # IoU 0.5 with gt 0
        [0.0, 0.0, 1.2, 1.0],  # IoU 1/1.2 with gt 0
        [5.0, 5.0, 6.0, 6.0],  # gt 1's best anchor, IoU only 1/4
        [9.0, 9.0, 10.0, 10.0],  # nothing
        [0.0, 0.0, 1.0, 4.0],  # IoU 0.25 with gt 0
    ])
    gt = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 7.0, 7.0]])
    gt_labels = torch.tensor([3, 7])
    labels, matched = match(gt, gt_labels, anchors, 0.5)
    assert labels.tolist() == [3, 3, 3, 7, 0, 0]
    assert matched[3].tolist() == gt[1].tolist() and matched[0].tolist() == gt[0].tolist()
    labels, _ = match(gt, gt_labels, anchors, 0.6, ignore_threshold=0.25)
    assert labels.tolist() == [3, -1, 3, 7, 0, -1]


def test_match_shared_best_anchor_last_gt_wins_and_empty():
    anchors = torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 4.0, 4.0]])
    gt = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.5, 1.5]])
    labels, matched = match(gt, torch.tensor([1, 2]), anchors)
    ref_labels, ref_matched = reference_match(gt, torch.tensor([1, 2]), anchors)
    assert labels.tolist() == ref_labels.tolist() == [2, 0]
    torch.testing.assert_close(matched, ref_matched)
    labels, matched = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), anchors)
    assert labels.tolist() == [0, 0] and torch.equal(matched, anchors)


@pytest.mark.parametrize("seed", range(5))
def test_match_equals_ssd_pytorch_loop(seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(200, 2, generator=g)
    anchors = ops.box_convert(torch.cat([centers, torch.rand(200, 2, generator=g) * 0.4 + 0.05],
                                        1), "cxcywh", "xyxy")
    xy = torch.rand(6, 2, generator=g) * 0.7
    gt = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 0.3 + 0.02], 1)
    gt_labels = torch.randint(1, 5, (6,), generator=g)
    labels, matched = match(gt, gt_labels, anchors, 0.5)
    ref_labels, ref_matched = reference_match(gt, gt_labels, anchors, 0.5)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(matched, ref_matched)
    assert bool((labels > 0).any())


def test_build_targets_per_image():
    g = torch.Generator().manual_seed(20)
    anchors = torch.cat([torch.rand(40, 2, generator=g), torch.rand(40, 2, generator=g) * 0.3 +
                         0.05], 1)
    gts = [torch.tensor([[0.1, 0.1, 0.4, 0.5]]), torch.zeros(0, 4),
           torch.tensor([[0.5, 0.5, 0.9, 0.8], [0.0, 0.6, 0.3, 1.0]])]
    gt_labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.int64), torch.tensor([1, 3])]
    offsets, labels = build_targets(gts, gt_labels, anchors)
    assert offsets.shape == (3, 40, 4) and labels.shape == (3, 40)
    anchors_xyxy = ops.box_convert(anchors, "cxcywh", "xyxy")
    for i in range(3):
        image_labels, matched = match(gts[i], gt_labels[i], anchors_xyxy)
        assert torch.equal(labels[i], image_labels)
        torch.testing.assert_close(offsets[i], encode(matched, anchors))
    assert labels[1].eq(0).all() and offsets[1].abs().max() < 1e-5
    assert torch.isfinite(offsets).all()
    # the targets feed the losses directly
    pred = (torch.zeros(3, 40, 4), torch.zeros(3, 40, 4))
    assert torch.isfinite(ssd_loss(pred, (offsets, labels)))
    empty = build_targets([], [], anchors)
    assert empty[0].shape == (0, 40, 4) and empty[1].shape == (0, 40)


def test_match_invalid_arguments():
    anchors = torch.rand(4, 4)
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \[G, 4\]"):
        match(torch.rand(2, 5), torch.ones(2, dtype=torch.int64), anchors)
    with pytest.raises(ValueError, match="gt_labels must be integer labels"):
        match(torch.rand(2, 4), torch.ones(2), anchors)
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\]"):
        match(torch.rand(2, 4), torch.ones(2, dtype=torch.int64), anchors, 1.5)
    with pytest.raises(ValueError, match="ignore_threshold must be in"):
        match(torch.rand(2, 4), torch.ones(2, dtype=torch.int64), anchors, 0.5, 0.7)
    with pytest.raises(ValueError, match="same images"):
        build_targets([torch.rand(1, 4)], [], anchors)
