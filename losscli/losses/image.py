"""Image-similarity losses on images ``[N, C, H, W]`` in [0, 1]: SSIM, MS-SSIM, PSNR, LPIPS,
DISTS.

Every loss is computed per image (``reduction="none"`` gives ``[N]``) and then reduced, so a
per-image ``weight`` of shape ``[N]`` applies. Computation is float32 (the registry upcasts
half precision; the pretrained networks always run in float32). Values outside [0, 1] are
not checked (that would be a host sync every step).

Image sizes: each loss has a smallest side it accepts; ``min_image_size(name, **params)``
returns it, so a job can pick valid settings. For the 28x28 denoising images:

- ``ssim``: any odd ``win_size`` in [3, 27] (default 11 is fine).
- ``ms_ssim``: the standard five scales need >= 161 px (``win_size=11``) and even with
  ``win_size=3`` need 33 px, so use fewer scales: 2 scales with ``win_size <= 13``, 3 scales
  with ``win_size <= 7``, 4 scales with ``win_size=3``; e.g.
  ``ms_ssim:weights=[0.1356,0.8644],win_size=7`` (the first two standard weights,
  renormalised).
- ``psnr`` and ``dists``: any size. ``lpips``: ``net=vgg`` (>= 16 px) or ``net=squeeze``
  (>= 17 px); ``net=alex`` needs >= 31 px.

LPIPS and DISTS need ImageNet backbones from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``). Nothing is
ever downloaded: a missing file raises ``MissingWeightsError`` naming it and where to put it.
Built networks are cached per process (``clear_network_cache()`` frees them).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import operator
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from losscli.losses._checks import check_same_shape
from losscli.losses.kinds import Family, Pred, Target
from losscli.losses.reduction import reduce_loss
from losscli.losses.registry import get_loss_info, register_loss

__all__ = [
    "BACKBONE_FILES",
    "MS_SSIM_WEIGHTS",
    "MissingWeightsError",
    "backbone_checkpoint",
    "clear_network_cache",
    "dists_loss",
    "lpips_loss",
    "min_image_size",
    "ms_ssim_loss",
    "ms_ssim_options",
    "psnr_loss",
    "ssim_loss",
]

# Wang, Simoncelli & Bovik 2003, the weights of the five scales (finest first).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# Backbone -> (torchvision constructor, hub-cache file name, download URL). The file names
# are those of torchvision's IMAGENET1K_V1 weight enums (a test checks they still agree).
BACKBONE_FILES: dict[str, tuple[str, str, str]] = {
    "alex": ("alexnet", "alexnet-owt-7be5be79.pth",
             "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16", "vgg16-397923af.pth",
            "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "squeeze": ("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth",
                "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
}
# Smallest side each LPIPS trunk accepts (measured: one pixel less fails in a pooling layer).
_LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}
_NETWORKS: dict[tuple[str, str, str], nn.Module] = {}


class MissingWeightsError(RuntimeError):
    """Pretrained weights a loss needs are not on this machine (nothing is downloaded)."""


# --------------------------------------------------------------------------- checks


def _check_images(pred: Tensor, target: Tensor, loss: str, min_size: int = 1) -> None:
    check_same_shape(pred, target, loss)
    if pred.dim() != 4:
        raise ValueError(f"{loss}: pred and target must be images [N, C, H, W], got shape "
                         f"{tuple(pred.shape)}")
    h, w = pred.shape[-2:]
    if min(h, w) < min_size:
        raise ValueError(f"{loss}: images must be at least {min_size}x{min_size}, got {h}x{w}")


def _check_ssim_args(loss: str, win_size: int, win_sigma: float, k1: float, k2: float,
                     data_range: float) -> None:
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 \
            or win_size % 2 == 0:
        raise ValueError(f"{loss}: win_size must be an odd integer >= 3, got {win_size!r}")
    for name, value in (("win_sigma", win_sigma), ("k1", k1), ("k2", k2),
                        ("data_range", data_range)):
        if not value > 0:
            raise ValueError(f"{loss}: {name} must be > 0, got {value}")


def _check_ms_weights(weights: Sequence[float]) -> tuple[float, ...]:
    if isinstance(weights, (int, float)) or not weights:
        raise ValueError(f"ms_ssim: weights must be a non-empty list (one per scale), "
                         f"got {weights!r}")
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights):
        raise ValueError(f"ms_ssim: weights must be numbers >= 0, got {weights!r}")
    return tuple(float(w) for w in weights)


def _ms_ssim_min_size(win_size: int, scales: int) -> int:
    # The coarsest scale, ceil(size / 2**(scales-1)), must hold one whole window.
    return (win_size - 1) * 2 ** (scales - 1) + 1


def ms_ssim_options(size: int, max_scales: int = 5) -> dict[int, int]:
    """Valid MS-SSIM settings for images of side ``size``: ``{scales: largest win_size}``.

    Only scale counts that allow a window of at least 3 are listed; e.g. for 28 px:
    ``{1: 27, 2: 13, 3: 7, 4: 3}``.
    """
    out = {}
    for scales in range(1, max_scales + 1):
        win = (size - 1) // 2 ** (scales - 1) + 1
        win -= 1 - win % 2  # largest odd value
        if win >= 3:
            out[scales] = win
    return out


def min_image_size(loss: str, **params: object) -> int:
    """Smallest image side (H and W) that the registered loss ``loss`` accepts.

    ``params`` are the loss's spec parameters (its defaults fill the rest), e.g.
    ``min_image_size("ms_ssim")`` is 161 and
    ``min_image_size("ms_ssim", weights=[0.5, 0.5], win_size=7)`` is 13. Losses without
    a minimum (any non-image loss too) give 1.
    """
    info = get_loss_info(loss)
    args = {**info.params, **params}
    if info.fn is ssim_loss:
        return int(args["win_size"])
    if info.fn is ms_ssim_loss:
        return _ms_ssim_min_size(int(args["win_size"]), len(_check_ms_weights(args["weights"])))
    if info.fn is lpips_loss:
        return _LPIPS_MIN_SIZE[_check_net(args["net"])]
    return 1


# --------------------------------------------------------------------------- SSIM


@functools.lru_cache(maxsize=32)
def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The normalised 1-D Gaussian ``[size]`` (built in float32 as pytorch_msssim does).

    Cached, so built outside inference mode: a cached inference tensor could not be used
    by a later training step.
    """
    with torch.inference_mode(False):
        coords = torch.arange(size, dtype=torch.float32) - size // 2
        g = torch.exp(-(coords**2) / (2 * sigma**2))
        return (g / g.sum()).to(device=device, dtype=dtype)


def _blur(x: Tensor, win: Tensor, transpose: bool = False) -> Tensor:
    """Separable Gaussian filter of every channel, along H then along W: 'valid' (each side
    ``size - 1`` shorter), or with ``transpose`` its adjoint, the 'full' filter (each side
    ``size - 1`` longer), which maps the gradient of the valid filter's output to that of
    its input. The window is symmetric, so the adjoint needs no flip."""
    k, size = x.shape[1], win.numel()
    pad = size - 1 if transpose else 0
    x = F.conv2d(x, win.view(1, 1, size, 1).expand(k, 1, size, 1), padding=(pad, 0), groups=k)
    return F.conv2d(x, win.view(1, 1, 1, size).expand(k, 1, 1, size), padding=(0, pad), groups=k)


def _channels_last_cat(maps: Sequence[Tensor]) -> Tensor:
    """``[N, C, H, W]`` maps concatenated along channels into one channels-last tensor.

    Why channels-last: oneDNN's depthwise convolution runs on it as it is, while an NCHW
    input is reordered to a blocked layout and back around every call, which costs more
    than the filtering (3x at 16x15x128x128 on one CPU thread). The permuted ``cat`` is
    the one transposition.
    """
    return torch.cat([m.permute(0, 2, 3, 1) for m in maps], 3).permute(0, 3, 1, 2)


class _MeanSSIM(torch.autograd.Function):
    """Mean SSIM per image and channel ``[N, C]`` or, with ``with_ssim=False``, the mean
    contrast-structure term (MS-SSIM's finer scales), with a hand-written backward.

    Inputs: images ``x, y`` ``[N, C, H, W]``, the 1-D window, ``c1, c2``, ``with_ssim``.
    Returns the mean and the maps the backward needs (not differentiable).

    With ``u = G*x, v = G*y, s = G*(x^2 + y^2), r = G*(2xy)`` (G the valid Gaussian
    filter): ``cs = (r - 2uv + c2) / (s - u^2 - v^2 + c2)`` and
    ``ssim = (2uv + c1) / (u^2 + v^2 + c1) * cs``, as pytorch_msssim computes them (it
    filters x^2 and y^2 apart, but only sigma_x^2 + sigma_y^2 enters: four filtered maps
    instead of five; r is exactly twice G*(xy)).

    Why: autograd through the elementwise formula costs ~25 extra passes over the maps in
    the backward and runs the transposed filter over all five filtered maps; here the
    backward is ~10 passes and one adjoint filter over three maps (four if ``y`` needs a
    gradient too): with the channels-last filtering, ~2x faster forward+backward than
    pytorch_msssim at 16x3x128x128 on one CPU thread. Not twice differentiable (a second
    derivative raises).
    """

    generate_vmap_rule = True  # vectorised seeds vmap the loss

    @staticmethod
    def forward(x: Tensor, y: Tensor, win: Tensor, c1: float, c2: float, with_ssim: bool):
        c = x.shape[1]
        stats = _channels_last_cat([x, y, torch.addcmul(x * x, y, y), 2 * x * y])
        u, v, s, r = _blur(stats, win).split(c, 1)
        uv2, sq = 2 * u * v, torch.addcmul(u * u, v, v)
        b2 = (s - sq).add_(c2)
        cs = (r - uv2).add_(c2).div_(b2)
        if not with_ssim:
            return cs.mean((2, 3)), u, v, cs, b2
        b1 = sq.add_(c1)
        lum = uv2.add_(c1).div_(b1)
        return (lum * cs).mean((2, 3)), u, v, cs, b2, lum, b1

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, y, win, _, _, with_ssim = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)
        ctx.with_ssim = with_ssim
        ctx.save_for_backward(x, y, win, *output[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor | None, *_: None):
        need_x, need_y = ctx.needs_input_grad[:2]
        if grad is None or not (need_x or need_y):
            return None, None, None, None, None, None
        x, y, win, u, v, cs, b2, *lum_b1 = ctx.saved_tensors
        # Per pixel: w = upstream / pixels of the map; k = d/dcs; t2 = 2k / b2 (so
        # d/dr = t2 / 2, d/ds = -t2 cs / 2); t1 = 2 w cs / b1 (the luminance term's part).
        w = (grad / (u.shape[2] * u.shape[3]))[..., None, None]
        if ctx.with_ssim:
            lum, b1 = lum_b1
            t1 = cs / b1 * (2 * w)
            t2 = (lum * w).mul_(2).div_(b2)
        else:
            t1 = None
            t2 = (2 * w) / b2
        q = t2 * cs
        # d/du = u m + v d and d/dv = v m + u d
        m = q if t1 is None else torch.addcmul(q, t1, lum, value=-1)
        d = -t2 if t1 is None else t1.sub_(t2)
        maps = [torch.addcmul(u * m, v, d)] if need_x else []
        maps += [torch.addcmul(v * m, u, d)] if need_y else []
        # Through the filter: d/dx = G'(d/du) + 2x G'(d/ds) + 2y G'(d/dr), G' the adjoint
        g = _blur(_channels_last_cat([*maps, q, t2]), win, transpose=True).split(x.shape[1], 1)
        *g_uv, g_q, g_t2 = g
        grad_x = grad_y = None
        if need_x:
            grad_x = torch.addcmul(g_uv[0], x, g_q, value=-1).addcmul(y, g_t2)
        if need_y:
            grad_y = torch.addcmul(g_uv[-1], y, g_q, value=-1).addcmul(x, g_t2)
        return grad_x, grad_y, None, None, None, None


def _mean_ssim(x: Tensor, y: Tensor, win: Tensor, c1: float, c2: float,
               cs_only: bool = False) -> Tensor:
    """Mean SSIM (or, with ``cs_only``, contrast-structure term) per image and channel,
    ``[N, C]``."""
    return _MeanSSIM.apply(x, y, win, c1, c2, not cs_only)[0]


@register_loss(
    "ssim",
    family=Family.IMAGE,
    pred=Pred.IMAGES,
    target=Target.IMAGES,
    description="1 - SSIM with an 11-px Gaussian window (sigma 1.5), valid convolution.",
    reference="Wang et al., Image Quality Assessment: From Error Visibility to Structural "
    "Similarity, TIP 2004; equals 1 - pytorch_msssim.ssim",
)
def ssim_loss(
    pred: Tensor,
    target: Tensor,
    *,
    win_size: int = 11,
    win_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``1 - SSIM(pred, target)``, SSIM averaged over positions and channels of each image.

    Equals ``1 - pytorch_msssim.ssim(pred, target, data_range, size_average=...)``, except
    that an image smaller than the window is refused (pytorch_msssim skips smoothing along
    that side with a warning).

    Args:
        pred: images ``[N, C, H, W]``, ``H, W >= win_size``.
        target: images, same shape.
        win_size: odd side of the Gaussian window (>= 3).
        win_sigma: its standard deviation in pixels.
        k1, k2: stabilisers; ``C1 = (k1 * data_range)**2``, ``C2 = (k2 * data_range)**2``.
        data_range: max - min of the pixel values.

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar. In [0, 2] (SSIM can be negative).
    """
    _check_ssim_args("ssim", win_size, win_sigma, k1, k2, data_range)
    _check_images(pred, target, "ssim", win_size)
    win = _gaussian_window(win_size, float(win_sigma), pred.dtype, pred.device)
    ssim = _mean_ssim(pred, target, win, (k1 * data_range) ** 2, (k2 * data_range) ** 2)
    return reduce_loss(1 - ssim.mean(1), reduction, weight, avg_factor)


def _relu_pow(x: Tensor, p: float) -> Tensor:
    """``relu(x) ** p`` with a zero (not NaN) gradient where ``x <= 0``.

    Autograd of ``relu(x) ** p`` at ``x <= 0`` is ``0 * inf = NaN`` for ``p < 1``; the
    ``where`` keeps the forward value and gives those positions no gradient.
    """
    positive = x > 0
    powered = torch.where(positive, x, torch.ones_like(x)) ** p
    return torch.where(positive, powered, 1.0 if p == 0 else 0.0)  # 0 ** 0 == 1


@register_loss(
    "ms_ssim",
    family=Family.IMAGE,
    pred=Pred.IMAGES,
    target=Target.IMAGES,
    description="1 - multi-scale SSIM (5 scales by default; images >= 161 px).",
    reference="Wang, Simoncelli & Bovik, Multiscale Structural Similarity for Image Quality "
    "Assessment, 2003; equals 1 - pytorch_msssim.ms_ssim",
    aliases=("msssim",),
)
def ms_ssim_loss(
    pred: Tensor,
    target: Tensor,
    *,
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
    win_size: int = 11,
    win_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``1 - MS-SSIM``: ``prod_j relu(cs_j) ** w_j`` over the finer scales times
    ``relu(ssim) ** w_last`` at the coarsest, per channel, averaged over channels.

    Equals ``1 - pytorch_msssim.ms_ssim`` with the same settings. As there, each scale is
    a 2x2 average pool (zero padding of one pixel on a side of odd length, counted in the
    average), the weights are used as given (not renormalised), and negative cs / ssim
    values are clipped to 0 by a ReLU; unlike there, a clipped value passes no gradient
    (pytorch_msssim's is NaN).

    Minimum size: the coarsest scale must hold a whole window, so ``H`` and ``W`` must be
    at least ``(win_size - 1) * 2 ** (scales - 1) + 1`` (161 for the default 5 scales and
    ``win_size=11``; see ``ms_ssim_options`` for valid settings at a given size — for 28 px:
    2 scales with ``win_size <= 13``, 3 with ``<= 7``, 4 with 3).

    Args:
        pred: images ``[N, C, H, W]``.
        target: images, same shape.
        weights: one exponent per scale, finest first; their number is the number of
            scales (default: the paper's five).
        win_size, win_sigma, k1, k2, data_range: as for ``ssim``.

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar, in [0, 1].
    """
    w = _check_ms_weights(weights)
    _check_ssim_args("ms_ssim", win_size, win_sigma, k1, k2, data_range)
    _check_ms_size(pred, target, win_size, len(w))
    win = _gaussian_window(win_size, float(win_sigma), pred.dtype, pred.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    x, y, terms = pred, target, []
    for _ in range(len(w) - 1):  # the finer scales need only cs
        terms.append(_mean_ssim(x, y, win, c1, c2, cs_only=True))
        padding = [s % 2 for s in x.shape[2:]]
        x, y = F.avg_pool2d(x, 2, padding=padding), F.avg_pool2d(y, 2, padding=padding)
    terms.append(_mean_ssim(x, y, win, c1, c2))  # and the coarsest only SSIM
    ms = functools.reduce(operator.mul, map(_relu_pow, terms, w))  # [N, C]
    return reduce_loss(1 - ms.mean(1), reduction, weight, avg_factor)


def _check_ms_size(pred: Tensor, target: Tensor, win_size: int, scales: int) -> None:
    _check_images(pred, target, "ms_ssim")
    need = _ms_ssim_min_size(win_size, scales)
    h, w = pred.shape[-2:]
    if min(h, w) >= need:
        return
    options = ms_ssim_options(min(h, w))
    hint = ", ".join(f"{s} scale{'s' * (s > 1)} with win_size <= {v}" for s, v in options.items())
    raise ValueError(
        f"ms_ssim: images must be at least {need}x{need} for {scales} scales and "
        f"win_size={win_size} ((win_size - 1) * 2**(scales - 1) + 1), got {h}x{w}; use "
        f"fewer scales (weights=[...], one per scale) or a smaller win_size"
        + (f" — valid for this size: {hint}" if hint else "")
    )


# --------------------------------------------------------------------------- PSNR


@register_loss(
    "psnr",
    family=Family.IMAGE,
    pred=Pred.IMAGES,
    target=Target.IMAGES,
    description="Negative PSNR in dB per image (capped at 100 dB for identical images).",
    reference="Peak signal-to-noise ratio, 10 log10(data_range^2 / MSE); "
    "torchmetrics.functional.peak_signal_noise_ratio",
    aliases=("neg_psnr",),
)
def psnr_loss(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float = 1.0,
    eps: float = 1e-10,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``-PSNR = 10 log10(MSE / data_range**2)`` per image (MSE over C, H, W).

    The relative MSE is clamped at ``eps`` so identical images give a finite value: the
    PSNR is capped at ``-10 log10(eps)`` (100 dB by default), and below that MSE the loss
    is flat (zero gradient).

    Args:
        pred: images ``[N, C, H, W]``.
        target: images, same shape.
        data_range: max - min of the pixel values.
        eps: the floor of ``MSE / data_range**2``, in (0, 1).

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar, in dB (lower is better).
    """
    _check_images(pred, target, "psnr")
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    if not 0 < eps < 1:
        raise ValueError(f"psnr: eps must be in (0, 1), got {eps}")
    # Squared error summed per image by one fused kernel each way (mse_loss's backward is
    # 2 (pred - target) grad), and divided on the [N] sums: ``pow(2).mean`` costs autograd
    # four full-size passes and allocations more.
    sse = F.mse_loss(pred, target, reduction="none").sum((1, 2, 3))
    loss = 10 * torch.log10((sse / (pred.shape[1:].numel() * data_range**2)).clamp_min(eps))
    return reduce_loss(loss, reduction, weight, avg_factor)


# --------------------------------------------------------------------------- weights


def backbone_checkpoint(net: str) -> Path:
    """Where the torch hub cache keeps the ImageNet weights of backbone ``net``
    (``alex`` | ``vgg`` | ``squeeze``): ``<torch.hub.get_dir()>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[_check_net(net)][1]


def _backbone_features(net: str, loss: str) -> dict[str, Tensor]:
    """The ``features.*`` tensors of the cached torchvision state dict, read from disk."""
    arch, file, url = BACKBONE_FILES[net]
    path = backbone_checkpoint(net)
    if not path.is_file():
        raise MissingWeightsError(
            f"{loss} needs the ImageNet {arch} weights {file}, but {path} does not exist "
            f"(nothing is downloaded). On a connected machine fetch {url} and copy it to "
            f"{path.parent}/ (the torch hub cache: $TORCH_HOME/hub/checkpoints, default "
            f"~/.cache/torch/hub/checkpoints), or point TORCH_HOME at a directory that has "
            f"hub/checkpoints/{file}."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingWeightsError(f"{loss}: could not read {path} ({exc}); replace it with "
                                  f"the file from {url}") from exc
    if not isinstance(state, dict) or not any(k.startswith("features.") for k in state):
        raise MissingWeightsError(f"{loss}: {path} is not a torchvision {arch} state dict")
    return {k.removeprefix("features."): v for k, v in state.items()
            if k.startswith("features.")}


def _load_features(module: nn.Module, features: dict[str, Tensor], path: str, loss: str) -> None:
    """Load ``features`` into a module whose keys are ``<stage>.<feature index>.<rest>``."""
    try:
        module.load_state_dict({k: features[k.split(".", 1)[1]] for k in module.state_dict()})
    except (KeyError, RuntimeError) as exc:
        raise MissingWeightsError(f"{loss}: {path} does not fit the backbone ({exc})") from exc


def _frozen(module: nn.Module, device: torch.device) -> nn.Module:
    module = module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def clear_network_cache() -> None:
    """Forget the LPIPS/DISTS networks built so far (they are rebuilt on next use)."""
    _NETWORKS.clear()


def _check_net(net: str) -> str:
    if net not in BACKBONE_FILES:
        raise ValueError(f"lpips: net must be one of {tuple(BACKBONE_FILES)}, got {net!r}")
    return net


def _as_rgb(x: Tensor, loss: str) -> Tensor:
    """float32 RGB: a grey image is repeated over three channels."""
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{loss}: images must have 1 or 3 channels, got {x.shape[1]}")
    x = x.float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# --------------------------------------------------------------------------- LPIPS


def _lpips_network(net: str, device: torch.device) -> nn.Module:
    key = ("lpips", net, str(device))
    if key not in _NETWORKS:
        _NETWORKS[key] = _build_lpips(net, device)
    return _NETWORKS[key]


@torch.inference_mode(False)  # cached: its tensors must serve later training steps
def _build_lpips(net: str, device: torch.device) -> nn.Module:
    features = _backbone_features(net, f"lpips:net={net}")
    import lpips  # slow to import (~2 s): only when the loss is used

    # Built on the meta device: no download (pnet_rand) and no random init of the
    # torchvision classifier that lpips builds and drops (124M weights for vgg16); every
    # tensor is then loaded below, strictly.
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision: pretrained=
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    model = model.to_empty(device="cpu")
    _load_features(model.net, features, str(backbone_checkpoint(net)), "lpips")
    model.scaling_layer.load_state_dict(lpips.ScalingLayer().state_dict())
    # The v0.1 linear layers shipped in the lpips package (lpips/weights/v0.1/<net>.pth).
    lin_path = Path(inspect.getfile(lpips.LPIPS)).parent / "weights" / "v0.1" / f"{net}.pth"
    lins = torch.load(lin_path, map_location="cpu", weights_only=True)
    model.lins.load_state_dict({k.removeprefix("lin"): v for k, v in lins.items()})
    return _frozen(model, device)


@register_loss(
    "lpips",
    family=Family.IMAGE,
    pred=Pred.IMAGES,
    target=Target.IMAGES,
    description="Learned perceptual distance (LPIPS v0.1) on an ImageNet backbone.",
    reference="Zhang et al., The Unreasonable Effectiveness of Deep Features as a Perceptual "
    "Metric, CVPR 2018; the lpips package",
    needs_weights=True,
)
def lpips_loss(
    pred: Tensor,
    target: Tensor,
    *,
    net: str = "alex",
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """LPIPS distance through the ``lpips`` package (its v0.1 linear layers).

    Inputs in [0, 1] are mapped to [-1, 1] as lpips expects; grey images are repeated to
    RGB. The trunk's ImageNet weights are read from the torch hub cache (see
    ``backbone_checkpoint``); the network is built once per ``(net, device)`` and frozen.

    Args:
        pred: images ``[N, C, H, W]``, ``C`` 1 or 3, sides >= 31 (alex), 16 (vgg) or
            17 (squeeze).
        target: images, same shape.
        net: trunk, ``alex`` | ``vgg`` | ``squeeze``.

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar (float32).

    Raises:
        MissingWeightsError: the trunk's weights file is not in the hub cache.
    """
    _check_net(net)
    _check_images(pred, target, "lpips", _LPIPS_MIN_SIZE[net])
    x, y = _as_rgb(pred, "lpips"), _as_rgb(target, "lpips")
    model = _lpips_network(net, pred.device)
    loss = model(x, y, normalize=True).view(-1)
    return reduce_loss(loss, reduction, weight, avg_factor)


# --------------------------------------------------------------------------- DISTS


class _L2Pool(nn.Module):
    """DISTS's L2 pooling: sqrt of a Hanning-weighted 3x3 mean of squares, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])  # numpy.hanning(5)[1:-1]
        g = a[:, None] * a[None, :]
        filt = (g / g.sum()).expand(channels, 1, 3, 3).clone()
        self.register_buffer("filter", filt, persistent=False)  # fixed, not loaded

    def forward(self, x: Tensor) -> Tensor:
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class _Dists(nn.Module):
    """VGG16 stages with L2 pooling, and the learned per-channel alpha / beta."""

    CHANNELS = (3, 64, 128, 256, 512, 512)
    # (first, last + 1) feature index of each stage; the max-pool before stages 2-5 is
    # replaced by an L2 pool.
    STAGES = ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))

    def __init__(self, features: nn.Sequential, alpha: Tensor, beta: Tensor):
        super().__init__()
        stages = []
        for i, (lo, hi) in enumerate(self.STAGES):
            stage = nn.Sequential()
            if i:
                stage.add_module(str(lo - 1), _L2Pool(self.CHANNELS[i]))
            for j in range(lo, hi):
                stage.add_module(str(j), features[j])
            stages.append(stage)
        self.stages = nn.ModuleList(stages)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
        total = alpha.sum() + beta.sum()
        self.register_buffer("alpha", (alpha / total).flatten())
        self.register_buffer("beta", (beta / total).flatten())

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        n = x.shape[0]
        xy = torch.cat([x, y])  # one pass for both batches
        h, feats = (xy - self.mean) / self.std, [xy]
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        alpha, beta = self.alpha.split(self.CHANNELS), self.beta.split(self.CHANNELS)
        score = 0
        for f, a, b in zip(feats, alpha, beta, strict=True):
            fx, fy = f[:n], f[n:]
            mx, my = fx.mean([2, 3]), fy.mean([2, 3])
            vx = (fx - mx[..., None, None]).pow(2).mean([2, 3])
            vy = (fy - my[..., None, None]).pow(2).mean([2, 3])
            cov = (fx * fy).mean([2, 3]) - mx * my
            s1 = (2 * mx * my + 1e-6) / (mx**2 + my**2 + 1e-6)
            s2 = (2 * cov + 1e-6) / (vx + vy + 1e-6)
            score = score + (s1 * a).sum(1) + (s2 * b).sum(1)
        return 1 - score


def _dists_weights_path(weights: str | None) -> Path:
    if weights is not None:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"dists: weights file {path} does not exist")
        return path
    spec = importlib.util.find_spec("DISTS_pytorch")  # finds without importing it
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "weights.pt"
        if path.is_file():
            return path
    raise MissingWeightsError(
        "dists needs its learned alpha/beta weights (weights.pt of Ding et al. 2020): "
        "`pip install DISTS_pytorch` (MIT; ships DISTS_pytorch/weights.pt) or pass "
        "dists:weights=/path/to/weights.pt (a dict with 'alpha' and 'beta' [1, 1475, 1, 1])"
    )


def _dists_alpha_beta(path: Path) -> tuple[Tensor, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        alpha, beta = state["alpha"].float(), state["beta"].float()
    except Exception as exc:
        raise MissingWeightsError(f"dists: could not read alpha/beta from {path} ({exc})") \
            from exc
    n = sum(_Dists.CHANNELS)
    if alpha.numel() != n or beta.numel() != n:
        raise MissingWeightsError(f"dists: alpha and beta in {path} must have {n} values "
                                  f"each, got {alpha.numel()} and {beta.numel()}")
    return alpha, beta


def _dists_network(weights: str | None, device: torch.device) -> nn.Module:
    path = _dists_weights_path(weights)
    key = ("dists", str(path), str(device))
    if key not in _NETWORKS:
        _NETWORKS[key] = _build_dists(path, device)
    return _NETWORKS[key]


@torch.inference_mode(False)  # cached: its tensors must serve later training steps
def _build_dists(path: Path, device: torch.device) -> nn.Module:
    alpha, beta = _dists_alpha_beta(path)
    features = _backbone_features("vgg", "dists")
    from torchvision.models import vgg16

    with torch.device("meta"):  # no memory and no init for the unused classifier
        trunk = vgg16(weights=None).features
    model = _Dists(trunk.to_empty(device="cpu"), alpha, beta)
    _load_features(model.stages, features, str(backbone_checkpoint("vgg")), "dists")
    return _frozen(model, device)


@register_loss(
    "dists",
    family=Family.IMAGE,
    pred=Pred.IMAGES,
    target=Target.IMAGES,
    description="DISTS structure and texture similarity distance on VGG16 features.",
    reference="Ding et al., Image Quality Assessment: Unifying Structure and Texture "
    "Similarity, TPAMI 2020; DISTS_pytorch",
    needs_weights=True,
)
def dists_loss(
    pred: Tensor,
    target: Tensor,
    *,
    weights: str | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """DISTS: ``1 - sum_k (alpha_k * S1_k + beta_k * S2_k)`` over the image and five VGG16
    stages, with per-channel mean (texture, S1) and covariance (structure, S2) similarity.

    Matches ``DISTS_pytorch.DISTS``: ImageNet-normalised input, L2 pooling instead of max
    pooling, alpha/beta normalised by their joint sum, constants 1e-6. Grey images are
    repeated to RGB.

    Args:
        pred: images ``[N, C, H, W]`` in [0, 1], ``C`` 1 or 3.
        target: images, same shape.
        weights: path of a ``weights.pt`` with ``alpha`` and ``beta``; by default the one
            the ``DISTS_pytorch`` package ships.

    Returns:
        ``[N]`` for ``reduction="none"``, else a scalar (float32), ~0 for identical images.

    Raises:
        MissingWeightsError: no alpha/beta file, or VGG16 weights not in the hub cache.
    """
    _check_images(pred, target, "dists")
    x, y = _as_rgb(pred, "dists"), _as_rgb(target, "dists")
    model = _dists_network(weights, pred.device)
    return reduce_loss(model(x, y), reduction, weight, avg_factor)
