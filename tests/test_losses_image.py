"""Image losses against pytorch_msssim, torchmetrics, lpips and DISTS_pytorch.

LPIPS/DISTS run their real loading path: randomly initialised torchvision backbone state
dicts are saved into a temporary ``$TORCH_HOME/hub/checkpoints`` and both our loss and the
reference package load them from there (downloads are patched to fail).
"""

from __future__ import annotations

import contextlib
import importlib
import math

import pytest
import torch
import torchvision
from torch import Tensor

from losscli.losses import create_loss, get_loss_info
from losscli.losses import image as image_losses
from losscli.losses.image import (
    BACKBONE_FILES,
    MS_SSIM_WEIGHTS,
    MissingWeightsError,
    backbone_checkpoint,
    dists_loss,
    lpips_loss,
    min_image_size,
    ms_ssim_loss,
    ms_ssim_options,
    psnr_loss,
    ssim_loss,
)

pytorch_msssim = pytest.importorskip("pytorch_msssim")
# The reference packages build torchvision models with the deprecated ``pretrained=``.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The parameter 'pretrained' is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:Arguments other than a weight enum:UserWarning"),
]


def _pair(shape, seed=0, noise=0.1, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    y = (x + noise * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


def _grad(fn, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x = x.clone().requires_grad_()
    value = fn(x, y)
    (g,) = torch.autograd.grad(value, x)
    return value.detach(), g


def _close(a: Tensor, b: Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5, check_dtype=False)


# --------------------------------------------------------------------------- SSIM

SSIM_CASES = [
    ((2, 3, 32, 40), {}),
    ((1, 1, 11, 11), {}),  # the image is exactly one window
    ((3, 2, 20, 17), {"win_size": 7, "win_sigma": 1.0, "k1": 0.02, "k2": 0.05}),
    ((2, 1, 24, 24), {"win_size": 3, "win_sigma": 0.5}),
]


@pytest.mark.parametrize(("shape", "kwargs"), SSIM_CASES)
def test_ssim_matches_pytorch_msssim(shape, kwargs):
    x, y = _pair(shape)
    k = (kwargs.get("k1", 0.01), kwargs.get("k2", 0.03))
    ref_kw = {"win_size": kwargs.get("win_size", 11), "win_sigma": kwargs.get("win_sigma", 1.5),
              "K": k, "data_range": 1}
    ours = ssim_loss(x, y, reduction="none", **kwargs)
    assert ours.shape == (shape[0],)
    _close(ours, 1 - pytorch_msssim.ssim(x, y, size_average=False, **ref_kw))
    _close(ssim_loss(x, y, reduction="sum", **kwargs), ours.sum())
    v, g = _grad(lambda a, b: ssim_loss(a, b, **kwargs), x, y)
    v_ref, g_ref = _grad(lambda a, b: 1 - pytorch_msssim.ssim(a, b, **ref_kw), x, y)
    _close(v, v_ref)
    _close(g, g_ref, atol=1e-6)


def test_ssim_data_range_255():
    x, y = _pair((2, 3, 16, 16))
    ours = ssim_loss(255 * x, 255 * y, data_range=255.0, reduction="none")
    _close(ours, 1 - pytorch_msssim.ssim(255 * x, 255 * y, data_range=255, size_average=False))
    _close(ours, ssim_loss(x, y, reduction="none"))  # SSIM is scale-invariant with data_range


def test_ssim_identical_is_zero_and_weighted_reduction():
    x, y = _pair((3, 1, 16, 16))
    assert ssim_loss(x, x, reduction="none").abs().max() < 1e-6
    w = torch.tensor([0.0, 1.0, 3.0])
    per_image = ssim_loss(x, y, reduction="none")
    _close(ssim_loss(x, y, reduction="sum", weight=w), (per_image * w).sum())
    _close(ssim_loss(x, y, weight=w, avg_factor=2.0), (per_image * w).sum() / 2)


def test_ssim_gradcheck_float64():
    x, y = _pair((1, 1, 5, 6), dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ssim_loss(a, y, win_size=5), (x,))


@pytest.mark.parametrize(
    ("shape", "kwargs", "match"),
    [
        ((1, 1, 16, 16), {"win_size": 4}, "odd integer >= 3"),
        ((1, 1, 16, 16), {"win_size": 1}, "odd integer >= 3"),
        ((1, 1, 10, 16), {}, "at least 11x11"),
        ((1, 16, 16), {}, r"\[N, C, H, W\]"),
        ((1, 1, 16, 16), {"k1": 0.0}, "k1 must be > 0"),
        ((1, 1, 16, 16), {"data_range": -1.0}, "data_range must be > 0"),
    ],
)
def test_ssim_rejects_bad_arguments(shape, kwargs, match):
    x, y = _pair(shape)
    with pytest.raises(ValueError, match=match):
        ssim_loss(x, y, **kwargs)


# --------------------------------------------------------------------------- MS-SSIM

MS_CASES = [
    ((2, 1, 161, 170), {}),  # default 5 scales; odd and even sides exercise the padding
    ((2, 3, 40, 37), {"weights": (0.2, 0.3, 0.5), "win_size": 3}),
    ((1, 2, 36, 36), {"weights": (0.0, 1.0), "win_size": 3, "k2": 0.1}),  # 0 ** 0 == 1
]


def _ms_ref_kw(kwargs: dict) -> dict:
    return {"weights": list(kwargs.get("weights", MS_SSIM_WEIGHTS)),
            "win_size": kwargs.get("win_size", 11),
            "K": (0.01, kwargs.get("k2", 0.03)), "data_range": 1}


@pytest.mark.parametrize(("shape", "kwargs"), MS_CASES)
def test_ms_ssim_matches_pytorch_msssim(shape, kwargs):
    x, y = _pair(shape, noise=0.05)
    ref_kw = _ms_ref_kw(kwargs)
    ours = ms_ssim_loss(x, y, reduction="none", **kwargs)
    assert ours.shape == (shape[0],)
    _close(ours, 1 - pytorch_msssim.ms_ssim(x, y, size_average=False, **ref_kw))
    v, g = _grad(lambda a, b: ms_ssim_loss(a, b, **kwargs), x, y)
    v_ref, g_ref = _grad(lambda a, b: 1 - pytorch_msssim.ms_ssim(a, b, **ref_kw), x, y)
    _close(v, v_ref)
    _close(g, g_ref, atol=1e-6)


def test_ms_ssim_28px_two_scales_matches_composition():
    """pytorch_msssim refuses images <= (win-1)*16 whatever the scales; compose its parts."""
    x, y = _pair((3, 1, 28, 28), noise=0.2)
    w = (0.1356, 0.8644)
    impl = importlib.import_module("pytorch_msssim.ssim")  # the module, not the function
    win = impl._fspecial_gauss_1d(7, 1.5).repeat(1, 1, 1, 1)  # [C=1, 1, 1, 7]
    _, cs0 = impl._ssim(x, y, data_range=1, win=win)
    xp, yp = torch.nn.functional.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(y, 2)
    ssim1, _ = impl._ssim(xp, yp, data_range=1, win=win)
    expected = 1 - (cs0.relu() ** w[0] * ssim1.relu() ** w[1]).mean(1)
    _close(ms_ssim_loss(x, y, weights=w, win_size=7, reduction="none"), expected)
    spec = create_loss("ms_ssim:weights=[0.1356,0.8644],win_size=7")
    _close(spec(x, y), expected.mean())


def test_ms_ssim_negative_cs_is_clipped_with_finite_gradient():
    x, _ = _pair((2, 1, 40, 40))
    y = 1 - x  # anti-correlated: negative cs at every scale
    kw = {"weights": (0.3, 0.3, 0.4), "win_size": 3}
    ours = ms_ssim_loss(x, y, reduction="none", **kw)
    _close(ours, 1 - pytorch_msssim.ms_ssim(x, y, size_average=False, **_ms_ref_kw(kw)))
    _close(ours, torch.ones(2))  # relu(cs) = 0 -> MS-SSIM 0
    _, g = _grad(lambda a, b: ms_ssim_loss(a, b, **kw), x, y)
    assert torch.isfinite(g).all()  # pytorch_msssim's gradient is NaN here


def test_ms_ssim_gradcheck_float64():
    x, y = _pair((1, 1, 5, 6), dtype=torch.float64, noise=0.05)
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: ms_ssim_loss(a, y, weights=(0.4, 0.6), win_size=3), (x,))


def test_ms_ssim_too_small_names_size_and_remedy():
    x, y = _pair((1, 1, 28, 28))
    with pytest.raises(ValueError, match="at least 161x161") as info:
        ms_ssim_loss(x, y)
    msg = str(info.value)
    assert "weights=" in msg and "win_size" in msg and "2 scales with win_size <= 13" in msg


@pytest.mark.parametrize(
    ("weights", "win_size", "expected"),
    [(MS_SSIM_WEIGHTS, 11, 161), ((0.5, 0.5), 7, 13), ((1, 1, 1), 7, 25), ((1,) * 4, 3, 17)],
)
def test_ms_ssim_min_size_is_tight(weights, win_size, expected):
    assert min_image_size("ms_ssim", weights=weights, win_size=win_size) == expected
    kw = {"weights": weights, "win_size": win_size}
    x, y = _pair((1, 1, expected, expected + 1))
    assert torch.isfinite(ms_ssim_loss(x, y, **kw))
    with pytest.raises(ValueError, match=f"at least {expected}x{expected}"):
        ms_ssim_loss(x[..., :-1, :], y[..., :-1, :], **kw)


def test_min_image_size_other_losses_and_options():
    assert min_image_size("ssim") == 11 and min_image_size("ssim", win_size=5) == 5
    assert min_image_size("psnr") == min_image_size("dists") == 1
    assert min_image_size("lpips") == 31 and min_image_size("lpips", net="vgg") == 16
    assert ms_ssim_options(28) == {1: 27, 2: 13, 3: 7, 4: 3}
    assert ms_ssim_options(161)[5] == 11


@pytest.mark.parametrize(("weights", "match"), [((), "non-empty"), ((0.5, -0.1), ">= 0"),
                                                (0.5, "non-empty")])
def test_ms_ssim_rejects_bad_weights(weights, match):
    x, y = _pair((1, 1, 40, 40))
    with pytest.raises(ValueError, match=match):
        ms_ssim_loss(x, y, weights=weights, win_size=3)


# --------------------------------------------------------------------------- PSNR


def test_psnr_matches_torchmetrics_and_hand_value():
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = _pair((4, 3, 8, 9))
    expected = tm.peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none",
                                          dim=(1, 2, 3))
    _close(psnr_loss(x, y, reduction="none"), -expected)
    _close(psnr_loss(x, y), -expected.mean())
    _close(psnr_loss(255 * x, 255 * y, data_range=255.0, reduction="none"), -expected)
    zeros = torch.zeros(1, 1, 4, 4)
    _close(psnr_loss(zeros, zeros + 0.1), torch.tensor(-20.0))  # MSE 0.01 -> 20 dB


def test_psnr_identical_images_are_capped_with_finite_gradient():
    x, _ = _pair((2, 1, 5, 5))
    v, g = _grad(lambda a, b: psnr_loss(a, b), x, x)
    _close(v, torch.tensor(-100.0))
    assert torch.isfinite(g).all()
    _close(psnr_loss(x, x, eps=1e-8), torch.tensor(-80.0))


def test_psnr_gradcheck_float64():
    x, y = _pair((2, 1, 4, 5), dtype=torch.float64)
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: psnr_loss(a, b), (x, y))


@pytest.mark.parametrize("kwargs", [{"eps": 0.0}, {"eps": 1.0}, {"data_range": 0.0}])
def test_psnr_rejects_bad_arguments(kwargs):
    x, y = _pair((1, 1, 4, 4))
    with pytest.raises(ValueError, match="must be"):
        psnr_loss(x, y, **kwargs)


# ------------------------------------------------- SSIM / MS-SSIM / PSNR: gradient paths

# SSIM and MS-SSIM have a hand-written backward: check it wrt both inputs, under
# torch.func.vmap (the engine vmaps the loss over seeds) and on channels-last images.
_GRAD_CASES = [
    ("ssim", ssim_loss, (2, 3, 24, 20), {"win_size": 7}),
    ("ms_ssim", ms_ssim_loss, (2, 2, 40, 37), {"weights": (0.2, 0.3, 0.5), "win_size": 3}),
    ("psnr", psnr_loss, (2, 3, 8, 9), {}),
]


def _reference(name: str, kwargs: dict):
    if name == "ssim":
        return lambda a, b: 1 - pytorch_msssim.ssim(a, b, data_range=1, win_size=7)
    if name == "ms_ssim":
        return lambda a, b: 1 - pytorch_msssim.ms_ssim(a, b, **_ms_ref_kw(kwargs))
    tm = pytest.importorskip("torchmetrics.functional.image")
    return lambda a, b: -tm.peak_signal_noise_ratio(a, b, data_range=1.0, dim=(1, 2, 3))


@pytest.mark.parametrize(("name", "fn", "shape", "kwargs"), _GRAD_CASES)
def test_gradients_wrt_pred_and_target_match_reference(name, fn, shape, kwargs):
    x, y = _pair(shape, noise=0.05)
    grads = []
    for f in (lambda a, b: fn(a, b, **kwargs), _reference(name, kwargs)):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        grads.append(torch.autograd.grad(f(a, b), (a, b)))
    for g, g_ref in zip(*grads, strict=True):
        _close(g, g_ref, atol=1e-6)


@pytest.mark.parametrize(("name", "fn", "shape", "kwargs"), _GRAD_CASES)
def test_gradcheck_float64_wrt_pred_and_target(name, fn, shape, kwargs):
    x, y = _pair((1, 1, 9, 10) if name == "ssim" else shape, dtype=torch.float64, noise=0.05)
    x.requires_grad_()
    y.requires_grad_()
    kw = {**kwargs, "win_size": 5} if name == "ssim" else kwargs
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, **kw), (x, y), fast_mode=True)


@pytest.mark.parametrize(("name", "fn", "shape", "kwargs"), _GRAD_CASES)
def test_vmap_over_seeds_matches_loop(name, fn, shape, kwargs):
    from torch.func import grad, vmap

    pairs = [_pair(shape, seed=s) for s in range(3)]
    x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def one(a: Tensor, b: Tensor) -> Tensor:
        return fn(a, b, **kwargs)

    _close(vmap(one)(x, y), torch.stack([one(a, b) for a, b in pairs]))
    _close(vmap(grad(one))(x, y), torch.stack([grad(one)(a, b) for a, b in pairs]), atol=1e-7)


@pytest.mark.parametrize(("name", "fn", "shape", "kwargs"), _GRAD_CASES)
def test_channels_last_images(name, fn, shape, kwargs):
    x, y = _pair(shape)
    v, g = _grad(lambda a, b: fn(a, b, **kwargs), x, y)
    cl = torch.channels_last
    v_cl, g_cl = _grad(lambda a, b: fn(a, b, **kwargs), x.contiguous(memory_format=cl),
                       y.contiguous(memory_format=cl))
    _close(v_cl, v)
    _close(g_cl, g, atol=1e-7)


# --------------------------------------------------------------------------- weights


def _random_backbone(arch: str, seed: int) -> dict[str, Tensor]:
    """A torchvision ``arch`` state dict: random conv features; the classifier (unused by
    the losses) stored as a zero expanded from one number so the file stays small."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in getattr(torchvision.models, arch)().state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if not key.startswith("features."):
            out[key] = torch.zeros(1).expand(shape)
        elif key.endswith("weight"):
            out[key] = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
        else:
            out[key] = 0.01 * torch.randn(shape, generator=g)
    return out


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_home")
    checkpoints = root / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for seed, (arch, file, _) in enumerate(BACKBONE_FILES.values()):
        torch.save(_random_backbone(arch, seed), checkpoints / file)
    return root


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    image_losses.clear_network_cache()
    yield monkeypatch
    image_losses.clear_network_cache()


@contextlib.contextmanager
def _skip_random_init():
    """Build reference models without drawing random weights that are overwritten anyway
    (torchvision initialises VGG16's 124M classifier weights: seconds on 2 cores)."""
    names = ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "constant_",
             "xavier_uniform_")
    with pytest.MonkeyPatch.context() as mp:
        for name in names:
            mp.setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield


@pytest.fixture(scope="module")
def dists_reference(torch_home):
    """DISTS_pytorch's model (VGG16 from the temporary hub cache), built once."""
    dists_pkg = pytest.importorskip("DISTS_pytorch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        mp.setattr(torch.hub, "download_url_to_file", _no_download)
        with _skip_random_init():
            return dists_pkg.DISTS()  # alpha/beta from the package's weights.pt


@pytest.fixture
def hub(torch_home, offline):
    offline.setenv("TORCH_HOME", str(torch_home))
    return torch_home


def test_backbone_file_names_match_torchvision_weight_enums():
    enums = {"alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
             "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
             "squeeze": torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1}
    for net, (_, file, url) in BACKBONE_FILES.items():
        assert enums[net].url == url and url.rsplit("/", 1)[1] == file


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_lpips_missing_weights_names_file_and_place(net, offline, tmp_path):
    offline.setenv("TORCH_HOME", str(tmp_path))
    x, y = _pair((1, 3, 32, 32))
    with pytest.raises(MissingWeightsError) as info:
        lpips_loss(x, y, net=net)
    file = BACKBONE_FILES[net][1]
    assert backbone_checkpoint(net) == tmp_path / "hub" / "checkpoints" / file
    assert file in str(info.value) and str(tmp_path / "hub" / "checkpoints") in str(info.value)
    assert isinstance(info.value, RuntimeError) and not image_losses._NETWORKS


LPIPS_SIZE = {"alex": 32, "vgg": 24, "squeeze": 24}


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_lpips_matches_package_built_from_same_weights(net, hub):
    import lpips

    x, y = _pair((2, 3, LPIPS_SIZE[net], LPIPS_SIZE[net]), noise=0.2)
    with _skip_random_init():
        ref = lpips.LPIPS(net=net, pretrained=True, verbose=False)  # trunk from the hub cache
    v, g = _grad(lambda a, b: lpips_loss(a, b, net=net), x, y)
    v_ref, g_ref = _grad(lambda a, b: ref(a, b, normalize=True).mean(), x, y)
    _close(v, v_ref)
    _close(g, g_ref, atol=1e-6)
    assert v > 0 and g.abs().sum() > 0
    ours = image_losses._NETWORKS[("lpips", net, "cpu")].state_dict()
    assert ours.keys() == ref.state_dict().keys()
    assert all(torch.equal(ours[k], t) for k, t in ref.state_dict().items())
    assert lpips_loss(x, x, net=net, reduction="none").abs().max() < 1e-6
    with torch.no_grad():  # the table of minimum sizes is tight
        s = min_image_size("lpips", net=net)
        ref(*_pair((1, 3, s, s)))
        with pytest.raises(RuntimeError):
            ref(*_pair((1, 3, s - 1, s - 1)))


def test_lpips_builds_once_per_net_and_device_and_takes_grey(hub, monkeypatch):
    x, y = _pair((2, 1, 24, 24))
    first = lpips_loss(x, y, net="squeeze", reduction="none")
    assert list(image_losses._NETWORKS) == [("lpips", "squeeze", "cpu")]
    monkeypatch.setattr(image_losses, "_backbone_features", _no_download)
    _close(lpips_loss(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1), net="squeeze",
                      reduction="none"), first)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        lpips_loss(torch.rand(1, 2, 24, 24), torch.rand(1, 2, 24, 24), net="squeeze")
    with pytest.raises(ValueError, match="at least 17x17"):
        lpips_loss(x[..., :16, :16], y[..., :16, :16], net="squeeze")
    with pytest.raises(ValueError, match="net must be one of"):
        lpips_loss(x, y, net="resnet")


def test_image_losses_registered_with_declarations():
    for name in ("ssim", "ms_ssim", "psnr", "lpips", "dists"):
        info = get_loss_info(name)
        assert info.family == "image" and info.pred == "images" and info.target == "images"
        assert info.needs_weights == (name in ("lpips", "dists"))


# --------------------------------------------------------------------------- DISTS


def test_dists_matches_package(hub, dists_reference):
    ref = dists_reference
    x, y = _pair((2, 3, 24, 28), noise=0.2)
    v, g = _grad(lambda a, b: dists_loss(a, b), x, y)
    v_ref, g_ref = _grad(lambda a, b: ref(a, b, require_grad=True, batch_average=True), x, y)
    _close(v, v_ref)
    _close(g, g_ref, atol=1e-6)
    assert v > 0 and g.abs().sum() > 0
    _close(dists_loss(x, y, reduction="none"), ref(x, y))
    assert dists_loss(x, x, reduction="none").abs().max() < 1e-5


def test_dists_weights_path_param(hub, tmp_path, request):
    g = torch.Generator().manual_seed(3)
    alpha, beta = torch.rand(1, 1475, 1, 1, generator=g), torch.rand(1, 1475, 1, 1, generator=g)
    path = tmp_path / "my_weights.pt"
    torch.save({"alpha": alpha, "beta": beta}, path)
    x, y = _pair((2, 3, 16, 16), noise=0.3)
    ours = dists_loss(x, y, weights=str(path), reduction="none")
    assert (ours > 0).all() and dists_loss(x, x, weights=str(path)).abs() < 1e-5
    assert not torch.allclose(ours, dists_loss(x, y, reduction="none"))
    ref = request.getfixturevalue("dists_reference")  # skips without DISTS_pytorch
    saved = ref.alpha.data, ref.beta.data
    ref.alpha.data, ref.beta.data = alpha, beta
    try:
        _close(ours, ref(x, y))
    finally:
        ref.alpha.data, ref.beta.data = saved


def test_dists_missing_weights(offline, tmp_path, monkeypatch):
    offline.setenv("TORCH_HOME", str(tmp_path))
    x, y = _pair((1, 3, 16, 16))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        dists_loss(x, y)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        dists_loss(x, y, weights=str(tmp_path / "nope.pt"))
    monkeypatch.setattr(image_losses.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingWeightsError, match="pip install DISTS_pytorch"):
        dists_loss(x, y)


def test_caches_built_under_inference_mode_serve_training(hub):
    """An eval pass under inference_mode may build the cached window / network first."""
    x, y = _pair((1, 3, 24, 24))
    with torch.inference_mode():
        ssim_loss(x, y, win_size=9, win_sigma=1.3)
        lpips_loss(x, y, net="squeeze")
    for fn in (lambda a, b: ssim_loss(a, b, win_size=9, win_sigma=1.3),
               lambda a, b: lpips_loss(a, b, net="squeeze")):
        _, g = _grad(fn, x, y)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
