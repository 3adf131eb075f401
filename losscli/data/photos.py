"""Natural photographs for denoising, from the files inside scikit-image's wheel (offline).

``skimage.data`` ships some images in the wheel and fetches others with pooch; only the
shipped ones are used here, so nothing is downloaded (a test loads them with the network
blocked). Of the shipped images, these are real photographs with detail across the frame;
each photograph belongs to exactly one split, fixed:

    split  colour (3 channels)                          grey only (1 channel)
    train  coffee, motorcycle, immunohistochemistry     brick, grass, gravel, coins
    val    chelsea                                      moon
    test   astronaut, rocket                            camera

``motorcycle`` is the left view of ``stereo_motorcycle`` (the right view is a near copy of
it, so it is left out). The grey variant uses every photograph of a split, the colour ones
converted to luma with scikit-image's ``rgb2gray`` weights (0.2125 R + 0.7154 G + 0.0721 B);
the colour variant uses the colour column only. Left out as not photographs or mostly
empty: ``retina`` and ``hubble_deep_field`` (black borders / black sky), ``cell`` and
``clock`` (nearly flat), ``page`` and ``text`` (documents; ``text`` is 172 px high), and
the synthetic ones (``checkerboard``, ``logo``, ...). The smallest photograph is
``chelsea`` (300 x 451), which bounds the crop side at 300.

Crops, ``[C, S, S]`` floats in [0, 1]. Training: ``train_crops`` crops drawn once from the
seed, uniformly over all crop positions of all training photographs (a photograph is picked
in proportion to its number of positions), so a training loop indexes device tensors.
Validation and test: fixed tiles covering each photograph, ``ceil(H / S) x ceil(W / S)``
evenly spaced crops that overlap by less than a crop (the same for every seed). The default
side, 192, is above the 161 px that the standard five-scale MS-SSIM with its 11-px window
needs (``(11 - 1) * 2**4 + 1``); its scales are 192, 96, 48, 24 and 12 px.

Noise, as in the ``denoise`` job: inputs are ``clean + sigma * N(0, 1)``, not clipped, drawn
once at load time; training noise from ``torch.Generator().manual_seed(seed)`` after the
crops, validation and test noise from the streams ``seed + 2_000_003`` and
``seed + 1_000_003``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from losscli.data.splits import SplitTensors, check_channels, check_int
from losscli.errors import UnknownNameError, UsageError

__all__ = ["COLOUR_PHOTOS", "PHOTO_SPLITS", "PhotoData", "load_photo", "load_photos"]

PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("coffee", "motorcycle", "immunohistochemistry", "brick", "grass", "gravel",
              "coins"),
    "val": ("chelsea", "moon"),
    "test": ("astronaut", "rocket", "camera"),
}
COLOUR_PHOTOS = frozenset({"coffee", "motorcycle", "immunohistochemistry", "chelsea",
                           "astronaut", "rocket"})
MIN_CROP, MAX_CROP = 11, 300  # one SSIM window; the smallest photograph's short side
MS_SSIM_MIN_SIDE = 161  # five scales, 11-px window
_RGB_TO_GREY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray (ITU-R BT.709 luma)
_VAL_STREAM, _TEST_STREAM = 2_000_003, 1_000_003  # noise seeds are seed + these


@dataclass
class PhotoData(SplitTensors):
    """Noisy inputs ``*_x`` and clean targets ``*_y``, float32 ``[N, C, S, S]``.

    ``photos`` maps ``train`` / ``val`` / ``test`` to the photographs each split was cut
    from; ``source`` says the same in one line, with the crop side, counts and noise.
    """

    photos: dict[str, tuple[str, ...]]
    crop_size: int
    sigma: float
    source: str


def _skimage_data():
    try:
        import skimage
        import skimage.data
    except ImportError:
        raise UsageError('the natural photographs come from scikit-image, which is not '
                         'installed: pip install "losscli[data]"') from None
    return skimage, skimage.data


@functools.cache
def _pixels(name: str) -> np.ndarray:
    """The photograph's uint8 pixels, decoded once per process (6 MB for all twelve)."""
    _, data = _skimage_data()
    pixels = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    pixels = np.ascontiguousarray(pixels)
    pixels.setflags(write=False)
    return pixels


def load_photo(name: str, channels: int = 3) -> Tensor:
    """One photograph as float32 ``[channels, H, W]`` in [0, 1].

    Raises:
        UsageError: an unknown name, ``channels`` not 1 or 3, or a grey photograph asked
            for in colour.
    """
    known = [n for split in PHOTO_SPLITS.values() for n in split]
    if name not in known:
        raise UnknownNameError("photograph", name, known)
    check_channels(channels)
    pixels = torch.tensor(_pixels(name), dtype=torch.float32) / 255.0
    if pixels.ndim == 2:
        if channels == 3:
            raise UsageError(f"photograph {name!r} is grey; the colour ones are "
                             + ", ".join(sorted(COLOUR_PHOTOS)))
        return pixels.unsqueeze(0)
    pixels = pixels.permute(2, 0, 1)
    if channels == 1:
        return torch.einsum("chw,c->hw", pixels, torch.tensor(_RGB_TO_GREY)).unsqueeze(0)
    return pixels.contiguous()


def _split_photos(channels: int) -> dict[str, tuple[str, ...]]:
    return {split: tuple(n for n in names if channels == 1 or n in COLOUR_PHOTOS)
            for split, names in PHOTO_SPLITS.items()}


def _tiles(photo: Tensor, size: int) -> Tensor:
    """Evenly spaced crops covering the whole photograph, ``[T, C, size, size]``."""
    h, w = photo.shape[-2:]
    ys = torch.linspace(0, h - size, math.ceil(h / size)).round().long().tolist()
    xs = torch.linspace(0, w - size, math.ceil(w / size)).round().long().tolist()
    return torch.stack([photo[:, y:y + size, x:x + size] for y in ys for x in xs])


def _random_crops(photos: list[Tensor], n: int, size: int, gen: torch.Generator) -> Tensor:
    """``n`` crops, uniform over every crop position of every photograph."""
    spans = torch.tensor([[p.shape[-2] - size + 1, p.shape[-1] - size + 1] for p in photos])
    which = torch.multinomial(spans.prod(1).double(), n, replacement=True, generator=gen)
    corner = (torch.rand(n, 2, generator=gen) * spans[which]).long()
    return torch.stack([photos[i][:, y:y + size, x:x + size]
                        for i, (y, x) in zip(which.tolist(), corner.tolist(), strict=True)])


def _noisy(clean: Tensor, sigma: float, gen: torch.Generator) -> Tensor:
    return clean + sigma * torch.randn(clean.shape, generator=gen)


def load_photos(
    *,
    channels: int = 1,
    crop_size: int = 192,
    train_crops: int = 256,
    sigma: float = 0.1,
    seed: int = 0,
) -> PhotoData:
    """Denoising data cut from disjoint photographs (see the module docstring).

    Args:
        channels: 1 (grey: all photographs) or 3 (colour photographs only).
        crop_size: side ``S`` of the square crops, in [11, 300]; below 161 the standard
            five-scale MS-SSIM does not apply (the source line says so).
        train_crops: number of training crops drawn from the seed (>= 1).
        sigma: standard deviation of the Gaussian noise on [0, 1] images (> 0); the
            default 0.1 is about the common 25 / 255.
        seed: seed of the training crops and of all noise.

    Returns:
        A ``PhotoData`` of CPU tensors: ``2 * 4 * C * S**2`` bytes per crop (input and
        target), so the default 256 training crops take 75 MB grey, 226 MB colour.

    Raises:
        UsageError: scikit-image missing (``pip install "losscli[data]"``) or an argument
            out of range.
    """
    check_channels(channels)
    check_int("crop_size", crop_size, MIN_CROP, MAX_CROP)
    check_int("train_crops", train_crops, 1)
    check_int("seed", seed, 0)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise UsageError(f"sigma must be a number > 0, got {sigma!r}")
    skimage, _ = _skimage_data()
    names = _split_photos(channels)
    photos = {split: [load_photo(n, channels) for n in split_names]
              for split, split_names in names.items()}
    gen = torch.Generator().manual_seed(seed)
    train_y = _random_crops(photos["train"], train_crops, crop_size, gen)
    train_x = _noisy(train_y, sigma, gen)
    val_y = torch.cat([_tiles(p, crop_size) for p in photos["val"]])
    val_x = _noisy(val_y, sigma, torch.Generator().manual_seed(seed + _VAL_STREAM))
    test_y = torch.cat([_tiles(p, crop_size) for p in photos["test"]])
    test_x = _noisy(test_y, sigma, torch.Generator().manual_seed(seed + _TEST_STREAM))
    counts = {"train": len(train_y), "val": len(val_y), "test": len(test_y)}
    source = _describe(skimage.__version__, channels, names, counts, crop_size, sigma, seed)
    return PhotoData(train_x, train_y, val_x, val_y, test_x, test_y, names, crop_size,
                     float(sigma), source)


def _describe(version: str, channels: int, names: dict[str, tuple[str, ...]],
              counts: dict[str, int], size: int, sigma: float, seed: int) -> str:
    kind = "colour" if channels == 3 else "grey (colour ones as BT.709 luma)"
    how = {"train": f"random crops, seed {seed}", "val": "tiles", "test": "tiles"}
    parts = [f"{split} {', '.join(names[split])} -> {counts[split]} {how[split]}"
             for split in ("train", "val", "test")]
    note = "" if size >= MS_SSIM_MIN_SIDE else (
        f"; below {MS_SSIM_MIN_SIDE} px, so MS-SSIM needs fewer than 5 scales")
    return (f"scikit-image {version} photographs, {kind}, {size}-px crops{note}: "
            + "; ".join(parts) + f"; Gaussian sigma {sigma:g}, noise seed {seed}")
