"""The denoise job: noisy data from the seed, model, adapter, metrics, LPIPS gating, CLI."""

import json
import math
import os

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import losscli.losses.image as image_losses
from losscli.cli import app
from losscli.errors import UsageError
from losscli.jobs import Split, create_job
from losscli.jobs.denoise import ResidualDenoiser, denoise_metrics
from losscli.losses import Family, Pred, Target, create_loss, list_losses
from losscli.sweep import compatible_losses

runner = CliRunner()
TINY = ["--steps", "20", "--batch-size", "16", "--eval-every", "10", "--quiet",
        "--device", "cpu", "--opt", "n_train=200", "--opt", "n_test=100",
        "--opt", "noisy_copies=1"]
MS_SSIM_28 = "ms_ssim:weights=[0.1356,0.8644],win_size=7"


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty torch hub cache: LPIPS/DISTS weights are absent (as offline)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    image_losses.clear_network_cache()
    yield
    image_losses.clear_network_cache()


def small(**options):
    return create_job("denoise", **{"n_train": 100, "n_test": 50, "noisy_copies": 2, **options})


# --------------------------------------------------------------------------- data


def test_noisy_data_is_fixed_by_the_seed(no_weights):
    a, b = small().load_data(), small().load_data()
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y, getattr(b, split).y)
    c = small(data_seed=1).load_data()
    assert not torch.equal(a.test.x, c.test.x)


def test_shapes_copies_and_clean_targets(no_weights):
    data = small(noisy_copies=3).load_data()
    assert data.train.x.shape == data.train.y.shape == (300, 1, 28, 28)
    assert data.test.x.shape == data.test.y.shape == (50, 1, 28, 28)
    clean = data.train.y[:100]
    assert torch.equal(data.train.y[100:200], clean) and torch.equal(data.train.y[200:], clean)
    assert clean.min() >= 0 and clean.max() <= 1 and clean.dtype == torch.float32
    noise = data.train.x - data.train.y
    assert not torch.equal(noise[:100], noise[100:200])  # independent copies
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    assert noise.min() < -0.5 and noise.max() > 0.5  # not clipped to [0, 1]


@pytest.mark.parametrize("sigma", [0.1, 0.3, 0.5])
def test_noisy_input_psnr_is_recorded_and_matches_sigma(sigma, no_weights):
    data = small(sigma=sigma, n_test=200).load_data()
    expected = -20 * math.log10(sigma)  # PSNR of N(0, sigma^2) noise at data range 1
    assert data.test.extra["psnr_input"] == pytest.approx(expected, abs=0.15)
    assert f"PSNR {data.test.extra['psnr_input']:.2f} dB" in data.source
    assert f"sigma {sigma:g}" in data.source and "embedded MNIST" in data.source


def test_n_train_subset_is_a_fixed_sample_of_every_class(no_weights):
    data = small(n_train=400, noisy_copies=1).load_data()
    # the embedded file is sorted by class; a random subset mixes them
    assert len(torch.unique(data.train.y.flatten(1), dim=0)) == 400
    assert small(n_train=4001).options["n_train"] == 4001
    with pytest.raises(UsageError, match="4000 images"):
        small(n_train=4001).load_data()


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_dataset(no_weights):
    data = small(dataset="fashion").load_data()
    assert "fashion" in data.source.lower() and data.test.y.shape == (50, 1, 28, 28)


@pytest.mark.parametrize("options, match", [
    ({"sigma": 0}, "sigma"), ({"sigma": "big"}, "sigma"), ({"dataset": "cifar"}, "mnist, fashion"),
    ({"noisy_copies": 0}, "noisy_copies"), ({"n_test": 1.5}, "n_test"),
    ({"binary": True}, "unknown option 'binary' for task 'denoise'"),
])
def test_bad_options_are_usage_errors(options, match):
    with pytest.raises(UsageError, match=match):
        create_job("denoise", **options)


# --------------------------------------------------------------------------- model, adapter


@pytest.mark.parametrize("sign, passed", [(1.0, [0, 1, 1, 1]), (-1.0, [1, 1, 1, 0])])
def test_model_output_is_clamped_with_a_one_sided_straight_through_gradient(sign, passed):
    model = ResidualDenoiser()
    for p in model.body.parameters():
        nn.init.zeros_(p)  # predicts no noise: the output is the clamped input
    x = torch.tensor([-0.5, 0.2, 0.7, 1.5]).view(1, 1, 2, 2).requires_grad_(True)
    out = model(x)
    assert torch.equal(out.detach(), x.detach().clamp(0, 1))
    (sign * out).sum().backward()
    # a clamped pixel passes the gradient that moves it back into [0, 1], never one that
    # pushes it further out (SSIM on photographs ran away through that)
    assert x.grad.flatten().tolist() == [sign * g for g in passed]


def test_one_sided_clamp_under_vmap():
    from torch.func import grad, vmap

    model = ResidualDenoiser()
    for p in model.body.parameters():
        nn.init.zeros_(p)
    x = torch.tensor([[-0.5, 0.2, 0.7, 1.5], [1.5, 0.2, 0.7, -0.5]]).view(2, 1, 1, 2, 2)
    grads = vmap(grad(lambda xi: model(xi).sum()))(x)
    assert grads.flatten().tolist() == [0, 1, 1, 1, 1, 1, 1, 0]


def test_model_is_a_residual_denoiser_without_batchnorm():
    model = ResidualDenoiser()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < 50_000
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 1, 28, 28)


def test_adapter_passes_images_and_values_through():
    job = create_job("denoise")
    out, target = job.probe()
    for kind in (Pred.IMAGES, Pred.VALUES):
        assert job.adapt_pred(out, kind) is out
    for kind in (Target.IMAGES, Target.VALUES):
        assert job.adapt_target(target, kind, out) is target


def test_compatible_losses_are_image_and_regression(no_weights):
    job = create_job("denoise")
    assert job.families == {Family.IMAGE, Family.REGRESSION}
    names = compatible_losses(job)
    assert {"mse", "l1", "smooth_l1", "ssim", "ms_ssim", "psnr"} <= set(names)
    assert "ce" not in names and "gaussian_nll" not in names and "dice" not in names


def test_every_compatible_loss_without_weights_runs_on_the_probe(no_weights):
    job = create_job("denoise")
    output, target = job.probe()
    for info in list_losses():
        if job.incompatibility(info) is not None or info.needs_weights:
            continue
        spec = MS_SSIM_28 if info.name == "ms_ssim" else info.name
        out = output.detach().requires_grad_(True)
        value = job.bind(create_loss(spec))(out, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(out.grad).all(), info.name


def test_default_ms_ssim_is_refused_on_28px_with_valid_settings_named(no_weights):
    job = create_job("denoise")
    with pytest.raises(ValueError, match="valid for this size"):
        job.bind(create_loss("ms_ssim"))(*job.probe())


def test_missing_lpips_weights_are_a_usage_error(no_weights):
    job = create_job("denoise")
    with pytest.raises(UsageError, match="squeezenet1_1"):
        job.bind(create_loss("lpips:net=squeeze"))(*job.probe())


def test_lpips_metric_without_weights_is_refused_at_plan_time(no_weights):
    assert "lpips" not in create_job("denoise").metrics  # the cache never decides
    with pytest.raises(UsageError, match="--lpips needs the SqueezeNet"):
        create_job("denoise", lpips=True)


def test_default_losses_all_apply(no_weights):
    job = create_job("denoise")
    assert "l1" in job.task.losses and MS_SSIM_28 in job.task.losses
    for spec in job.task.losses:
        assert torch.isfinite(job.bind(create_loss(spec))(*job.probe()))


# --------------------------------------------------------------------------- metrics


def test_metrics_on_known_inputs():
    target = torch.full((4, 1, 28, 28), 0.5)
    psnr, ssim = denoise_metrics(target + 0.1, target).tolist()
    assert psnr == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 at data range 1
    c1 = 0.01**2  # flat images: only SSIM's luminance term is below 1
    assert ssim == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1), abs=1e-4)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    psnr, ssim = denoise_metrics(x, x.flip(0)).tolist()
    assert psnr < 10 and ssim < 0.2
    _, ssim = denoise_metrics(x, x).tolist()
    assert ssim == pytest.approx(1.0)


def test_ssim_metric_uses_the_valid_window_positions_like_the_reference():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(1)
    target = torch.zeros(4, 1, 28, 28)
    target[:, :, 6:22, 10:18] = 1  # a bright stroke on a black image, like MNIST
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    ssim = denoise_metrics(pred, target)[1].item()
    assert ssim == pytest.approx(pytorch_msssim.ssim(pred, target, data_range=1.0).item(),
                                 abs=1e-5)
    # torchmetrics' own average also counts the reflect-padded border positions
    full = structural_similarity_index_measure(pred, target, data_range=1.0).item()
    assert abs(full - ssim) > 0.01


def test_evaluate_reports_the_gain_over_the_noisy_input(no_weights):
    job = small()
    data = job.load_data()
    assert job.metrics == ("psnr", "ssim", "psnr_gain")
    m = job.evaluate(nn.Identity(), data.test, None)  # "denoiser" that returns its (noisy) input
    assert m["psnr"] == pytest.approx(data.test.extra["psnr_input"], abs=1e-4)
    assert m["psnr_gain"] == pytest.approx(0.0, abs=1e-4)
    perfect = Split(data.test.y + 0.01, data.test.y, dict(data.test.extra))
    m = job.evaluate(nn.Identity(), perfect, None)
    assert m["psnr"] == pytest.approx(40.0, abs=1e-3) and m["psnr_gain"] > 25


def test_lpips_metric_appears_when_its_weights_are_cached(tmp_path, monkeypatch):
    import torchvision

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(),
               hub / image_losses.BACKBONE_FILES["squeeze"][1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    image_losses.clear_network_cache()
    try:
        assert "lpips" not in small(n_test=20).metrics  # only when asked for
        job = small(n_test=20, lpips=True)
        assert job.metrics[-1] == "lpips"
        data = job.load_data()
        m = job.evaluate(nn.Identity(), data.test, None)
        assert m["lpips"] > 0 and math.isfinite(m["lpips"])
        clean = Split(data.test.y, data.test.y, dict(data.test.extra))
        assert job.evaluate(nn.Identity(), clean, None)["lpips"] == pytest.approx(0.0, abs=1e-6)
    finally:
        image_losses.clear_network_cache()


# --------------------------------------------------------------------------- CLI


def invoke(*args):
    return runner.invoke(app, list(args))


def test_train_denoise_end_to_end(tmp_path, no_weights):
    out = tmp_path / "run"
    res = invoke("train", "--task", "denoise", "--loss", "l1", "--loss",
                 f"0.84*{MS_SSIM_28}+0.16*l1", "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["status"]) == {"ok"} and len(runs) == 2
    assert (runs["primary_metric"] == "psnr").all()
    for metrics in runs["test_metrics"].map(json.loads):
        assert set(metrics) == {"psnr", "ssim", "psnr_gain"}
        assert metrics["psnr_gain"] > 0  # 20 steps already denoise a little
    assert runs["data_source"].str.contains("noisy test input: PSNR").all()


@pytest.mark.parametrize("args, expected", [
    (["--loss", "ce"], "losses that apply to denoise"),
    (["--loss", "ms_ssim"], "valid for this size"),
    (["--loss", "lpips:net=squeeze"], "squeezenet1_1"),
    (["--opt", "dataset=cifar", "--loss", "l1"], "mnist, fashion"),
])
def test_usage_errors_exit_2(args, expected, tmp_path, no_weights):
    res = invoke("train", "--task", "denoise", *args, "--out", str(tmp_path / "never"),
                 "--steps", "2", "--quiet")
    assert res.exit_code == 2, res.output
    assert expected in " ".join(res.output.split())
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- photographs


@pytest.fixture
def photos():
    pytest.importorskip("skimage")


@pytest.mark.parametrize("dataset, channels", [("natural", 3), ("natural_grey", 1)])
def test_natural_photographs(photos, dataset, channels):
    job = create_job("denoise", dataset=dataset, crop_size=48, train_crops=8)
    data = job.load_data()
    assert data.train.x.shape == data.train.y.shape == (8, channels, 48, 48)
    assert data.val.x.shape[1:] == data.test.x.shape[1:] == (channels, 48, 48)
    assert abs(data.test.extra["psnr_input"] - 20.0) < 0.1  # sigma 0.1 by default
    assert "astronaut" in data.source and "noisy test input: PSNR 20.0" in data.source
    model = job.build_model(data)
    assert model(data.val.x[:2]).shape == (2, channels, 48, 48)
    assert job.probe()[0].shape == (2, channels, 48, 48)
    assert job.task.losses[3] == "ms_ssim"  # tasks/denoise_natural.toml: 5 standard scales
    again = create_job("denoise", dataset=dataset, crop_size=48, train_crops=8).load_data()
    assert torch.equal(data.train.x, again.train.x) and torch.equal(data.test.x, again.test.x)


def test_photographs_and_digits_take_their_own_options():
    with pytest.raises(UsageError, match="--crop-size, --train-crops do not apply to --dataset "
                                         "mnist"):
        create_job("denoise", crop_size=64, train_crops=4)
    with pytest.raises(UsageError, match="--n-train do not apply to --dataset natural"):
        create_job("denoise", dataset="natural", n_train=10)
    assert create_job("denoise", dataset="natural").sigma == 0.1
    assert create_job("denoise").sigma == 0.3
    assert create_job("denoise", dataset="natural", sigma=0.2).sigma == 0.2


def test_standard_ms_ssim_needs_161_px_crops(photos, tmp_path):
    args = ["train", "--task", "denoise", "--dataset", "natural_grey", "--train-crops", "8",
            "--loss", "ms_ssim", "--steps", "2", "--batch-size", "4", "--quiet", "--out",
            str(tmp_path / "run")]
    res = runner.invoke(app, [*args, "--crop-size", "96"])
    assert res.exit_code == 2 and "at least 161x161 for 5 scales" in " ".join(res.output.split())
    res = runner.invoke(app, [*args, "--crop-size", "164"])
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(tmp_path / "run" / "runs.csv")
    assert set(runs["status"]) == {"ok"} and "164-px crops" in runs["data_source"].iloc[0]
    assert {"psnr", "ssim", "psnr_gain"} == set(json.loads(runs["test_metrics"].iloc[0]))
