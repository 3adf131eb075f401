"""The seg job: generator knobs, adapter, metrics, model, plan checks, CLI end to end."""

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from losscli.cli import app
from losscli.data import synthetic_segmentation as synth
from losscli.data.synthetic_segmentation import SHAPE_CLASSES, make_segmentation
from losscli.errors import UsageError
from losscli.jobs import Split, create_job
from losscli.jobs.segmentation import SmallUNet, segmentation_metrics
from losscli.losses import Family, Pred, Target, create_loss, list_losses
from losscli.sweep import compatible_losses

runner = CliRunner()
TINY = ["--steps", "20", "--batch-size", "16", "--eval-every", "10", "--quiet",
        "--device", "cpu", "--image-size", "16", "--opt", "n_train=64", "--opt", "n_test=32"]


def small(n=64, **kw):
    return make_segmentation(n, **{"image_size": 24, **kw})


# --------------------------------------------------------------------------- generator


def test_generator_is_deterministic_from_the_seed():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.masks, c.masks)
    assert a.images.shape == (64, 1, 24, 24) and a.images.dtype == torch.float32
    assert a.masks.shape == (64, 24, 24) and a.masks.dtype == torch.long


@pytest.mark.parametrize("fg", [0.03, 0.1, 0.3, 0.5])
def test_fg_fraction_is_close_to_the_asked_share(fg):
    data = make_segmentation(400, image_size=32, fg_fraction=fg, seed=1)
    realised = (data.masks > 0).float().mean().item()
    assert realised == pytest.approx(data.fg_fraction)
    # border clipping makes it a little lower; never far off
    assert 0.75 * fg < realised < 1.1 * fg


def test_small_fractions_shrink_the_shapes_instead_of_dropping_them():
    mean_shapes, scale = synth._shape_plan(32, 3, 0.02)
    assert mean_shapes == 1.0 and scale < 1
    assert synth._shape_plan(32, 3, 0.3)[1] == 1.0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_masks_hold_background_and_exactly_the_asked_classes(k):
    masks = make_segmentation(200, image_size=32, num_classes=k, fg_fraction=0.3).masks
    assert set(masks.unique().tolist()) == set(range(k + 1))


def test_noise_is_added_last_with_the_asked_std():
    clean, noisy = small(noise=0.0), small(noise=0.5)
    assert torch.equal(clean.masks, noisy.masks)  # same shapes: noise is the last draw
    assert (noisy.images - clean.images).std().item() == pytest.approx(0.5, rel=0.05)


def test_shapes_are_brighter_than_the_background_under_them():
    data = small(n=200, noise=0.0)
    fg = data.masks > 0
    bg = synth._background(200, 24, torch.Generator().manual_seed(0)).squeeze(1)
    offset = (data.images.squeeze(1) - bg)[fg]
    assert offset.min() >= synth._CONTRAST[0] - 1e-5 and offset.max() <= synth._CONTRAST[1] + 1e-5
    assert (data.images.squeeze(1) - bg)[~fg].abs().max() < 1e-5


@pytest.mark.parametrize("k", range(1, len(SHAPE_CLASSES) + 1))
def test_shape_areas_match_the_constants_used_to_plan_the_fraction(k):
    assert len(synth._UNIT_AREA) == len(SHAPE_CLASSES)
    t = (torch.arange(400, dtype=torch.float32) + 0.5) / 40 - 5  # fine grid over [-5, 5]
    u, v = t.view(1, 1, -1), t.view(1, -1, 1)
    area = synth._inside(k, u, v, torch.tensor(2.0)).float().sum() / 40**2
    assert area.item() == pytest.approx(synth._UNIT_AREA[k - 1] * 4, rel=0.03)


def test_shape_classes_differ():
    t = (torch.arange(200, dtype=torch.float32) + 0.5) / 20 - 5
    u, v = t.view(1, 1, -1), t.view(1, -1, 1)
    masks = [synth._inside(k, u, v, torch.tensor(3.0)) for k in range(1, 7)]
    for i in range(6):
        for j in range(i + 1, 6):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.8, (SHAPE_CLASSES[i], SHAPE_CLASSES[j])


@pytest.mark.parametrize("kw, match", [
    ({"num_classes": 7}, "num_classes"), ({"fg_fraction": 1.0}, "fg_fraction"),
    ({"noise": -1.0}, "noise"), ({"image_size": 4}, "image_size"),
])
def test_generator_rejects_bad_knobs(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


# --------------------------------------------------------------------------- job options


@pytest.mark.parametrize("options, match", [
    ({"image_size": 30}, "multiple of 4"), ({"num_classes": 9}, r"in \[1, 6\]"),
    ({"fg_fraction": 0.0}, "fg-fraction"), ({"n_train": 0}, "--n-train"),
    ({"pixel_noise": "loud"}, "--pixel-noise .* must be a number"),
    ({"pixel_noise": -0.5}, "must be a number >= 0"),
    ({"noise": 0.1}, "did you mean 'pixel_noise'"),
    ({"binary": "maybe"}, "--binary"), ({"sigma": 0.3}, "unknown option 'sigma' for task 'seg'"),
])
def test_bad_options_are_usage_errors(options, match):
    with pytest.raises(UsageError, match=match):
        create_job("seg", **options)


def test_noise_given_as_text_on_the_command_line_is_a_number():
    assert create_job("seg", pixel_noise="0.25").option("pixel_noise") == 0.25


def test_load_data_uses_the_knobs_and_a_separate_test_stream():
    job = create_job("segmentation", image_size=16, n_train=40, n_test=20, num_classes=2)
    data = job.load_data()
    assert data.train.x.shape == (40, 1, 16, 16) and data.test.y.shape == (20, 16, 16)
    assert int(data.train.y.max()) <= 2 and "circle, square" in data.source
    bigger = create_job("seg", image_size=16, n_train=80, n_test=20, num_classes=2).load_data()
    assert torch.equal(bigger.test.x, data.test.x)  # n_train does not move the test set
    other = create_job("seg", image_size=16, n_train=40, n_test=20, num_classes=2,
                       data_seed=1).load_data()
    assert not torch.equal(other.test.y, data.test.y)


def test_binary_variant_masks_and_families():
    job = create_job("seg", binary=True, image_size=16, n_train=30, n_test=10)
    data = job.load_data()
    assert set(data.train.y.unique().tolist()) == {0, 1}
    assert isinstance(job.build_model(data)(data.test.x[:2]), torch.Tensor)
    assert job.build_model(data)(data.test.x[:2]).shape == (2, 1, 16, 16)
    names = compatible_losses(job)
    assert "bce_logits" in names and "dice" in names and "lovasz" in names
    assert "ce" not in names and "focal" not in names
    reason = job.incompatibility(create_loss("ce").terms[0].info)
    assert "binary seg variant" in reason


# --------------------------------------------------------------------------- adapter


def test_adapter_multiclass():
    job = create_job("seg", num_classes=3)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    assert job.adapt_pred(logits, Pred.LOGITS) is logits
    probs = job.adapt_pred(logits, Pred.PROBS)
    assert torch.allclose(probs.sum(1), torch.ones(2, 8, 8))
    assert torch.allclose(job.adapt_pred(logits, Pred.LOG_PROBS).exp(), probs, atol=1e-6)
    assert job.adapt_target(target, Target.INDEX, logits) is target
    onehot = job.adapt_target(target, Target.BINARY, logits)
    assert torch.equal(onehot, F.one_hot(target, 4).permute(0, 3, 1, 2).float())


def test_adapter_binary():
    job = create_job("seg", binary=True)
    logits = torch.randn(2, 1, 8, 8)
    mask = torch.randint(0, 2, (2, 8, 8))
    assert torch.allclose(job.adapt_pred(logits, Pred.PROBS), torch.sigmoid(logits))
    target = job.adapt_target(mask, Target.BINARY, logits)
    assert target.shape == (2, 1, 8, 8) and target.dtype == torch.float32
    assert torch.equal(target.squeeze(1).long(), mask)


@pytest.mark.parametrize("binary", [False, True])
def test_every_compatible_loss_trains_on_the_probe(binary):
    """The declarations say which losses apply; each of those must run on the real shapes
    and give a finite loss with gradients (the plan-time check does the same)."""
    job = create_job("seg", binary=binary, image_size=16)
    output, target = job.probe()
    for info in list_losses():
        if job.incompatibility(info) is not None or info.needs:  # needs: supplied by a job
            continue
        output = output.detach().requires_grad_(True)
        value = job.bind(create_loss(info.name))(output, target)
        value.backward()
        assert value.dim() == 0 and torch.isfinite(value), info.name
        assert torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0, info.name


def test_families_cover_segmentation_classification_and_binary():
    job = create_job("seg")
    assert job.families == {Family.SEGMENTATION, Family.CLASSIFICATION, Family.BINARY}
    assert "mse" not in compatible_losses(job) and "ssim" not in compatible_losses(job)


# --------------------------------------------------------------------------- metrics


def test_metrics_on_a_hand_computed_case():
    # 1 image, 2x4 pixels, 3 classes
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 2, 2, 0]]])
    # IoU: class 0: inter 2 (px 0,4), union 4 (px 0,1,4,7) -> 0.5; class 1: 2/3; class 2: 2/3
    # Dice (foreground): class 1: 2*2/(3+2) = 0.8; class 2: 2*2/(2+3) = 0.8
    miou, dice, acc = segmentation_metrics(pred, target, 3).tolist()
    assert miou == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert dice == pytest.approx(0.8)
    assert acc == pytest.approx(6 / 8)


def test_metrics_skip_classes_absent_from_prediction_and_truth():
    target = torch.tensor([[[0, 1], [0, 1]]])
    miou, dice, acc = segmentation_metrics(target, target, 4).tolist()
    assert (miou, dice, acc) == (1.0, 1.0, 1.0)


class _OneHotToLogits(nn.Module):
    def forward(self, x):
        return 10 * x - 5


def test_evaluate_scores_a_perfect_and_a_wrong_model():
    job = create_job("seg", num_classes=2, image_size=16)
    y = make_segmentation(10, image_size=16, num_classes=2).masks
    onehot = F.one_hot(y, 3).permute(0, 3, 1, 2).float()
    perfect = {"miou": 1.0, "dice": 1.0, "pixel_acc": 1.0}
    assert job.evaluate(_OneHotToLogits(), Split(onehot, y), None) == perfect
    background = torch.zeros_like(onehot)
    background[:, 0] = 1
    m = job.evaluate(_OneHotToLogits(), Split(background, y), None)
    fg = (y > 0).float().mean().item()
    assert m["pixel_acc"] == pytest.approx(1 - fg) and m["dice"] == 0.0
    assert m["miou"] == pytest.approx((1 - fg) / 3)  # only background has an IoU above 0


# --------------------------------------------------------------------------- model


def test_unet_shapes_and_no_batchnorm():
    model = SmallUNet(out_channels=5)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 5, 32, 32)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # per-sample gradients through torch.func: possible because nothing mixes the batch
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 5, (2, 16, 16))

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    assert grads["head.weight"].shape == (2, *model.head.weight.shape)


# --------------------------------------------------------------------------- CLI


def invoke(*args):
    return runner.invoke(app, list(args))


def test_train_seg_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = invoke("train", "--task", "seg", "--loss", "ce", "--loss", "dice_ce",
                 "--loss", "bce_logits", "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["status"]) == {"ok"} and len(runs) == 3
    assert (runs["primary_metric"] == "miou").all()
    for metrics in runs["test_metrics"].map(json.loads):
        assert set(metrics) == {"miou", "dice", "pixel_acc"}
        assert all(0 <= v <= 1 for v in metrics.values())
    assert (runs["test_final"] > 0).all() and runs["data_source"].str.contains("16px").all()
    assert "dice_ce" in res.output


def test_train_seg_binary_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = invoke("train", "--task", "segmentation", "--binary", "--loss", "bce_logits",
                 "--loss", "lovasz", "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["status"]) == {"ok"}
    assert runs["data_source"].str.contains("binary").all()


@pytest.mark.parametrize("args, expected", [
    (["--binary", "--loss", "ce"], "binary seg variant"),
    (["--loss", "mse"], "losses that apply to seg"),
    (["--sigma", "0.2", "--loss", "ce"], "unknown option '--sigma' for task 'seg'"),
    (["--image-size", "18", "--loss", "ce"], "multiple of 4"),
])
def test_usage_errors_exit_2(args, expected, tmp_path):
    res = invoke("train", "--task", "seg", *args, "--out", str(tmp_path / "never"),
                 "--steps", "2", "--quiet")
    assert res.exit_code == 2, res.output
    assert expected in " ".join(res.output.split())
    assert not (tmp_path / "never").exists()

