"""Image denoising job ``denoise``: additive Gaussian noise on MNIST / Fashion-MNIST digits,
or on natural photographs (``--dataset natural`` colour, ``natural_grey`` grey).

Data. Clean images in [0, 1] are the targets; inputs are ``clean + sigma * N(0, 1)``, not
clipped (additive white Gaussian noise, as in DnCNN; clipping would bias the noise on the
black MNIST background). Noise is drawn once, at load time, from the data seed: the test
set gets one fixed noisy copy, the training set ``noisy_copies`` independent noisy copies
of every image (``train_x`` ``[K * N, 1, 28, 28]``, ``train_y`` the clean images repeated).
That keeps batches a plain index into device tensors (no per-step host work, no host sync)
and makes every loss and seed see exactly the same noise; with the default budget each
noisy copy is seen about once, so it behaves like fresh noise per batch. The noisy input's
own PSNR/SSIM on the test set are in the data ``source`` line, and ``psnr_gain`` is the
model's PSNR minus that (dB).

Photographs (``losscli.data.photos``): scikit-image's shipped photographs, each in one
split (train: coffee, motorcycle, immunohistochemistry and, grey only, brick, grass,
gravel, coins; validation: chelsea and, grey, moon; test: astronaut, rocket and, grey,
camera), ``--crop-size`` crops (default 192 px, above the 161 px that standard 5-scale
MS-SSIM with its 11-px window needs): ``--train-crops`` random training crops from the
data seed, tiles covering each validation and test photograph. The noise is drawn the
same way (once, unclipped), sigma 0.1 by default (about 25 / 255, a common benchmark
level). The default losses and budget are ``tasks/denoise_natural.toml``: standard
MS-SSIM (5 scales, 11-px window) and its 0.84 / 0.16 mix with L1 (Zhao et al. 2017).

Model: a residual denoiser (DnCNN-style, no BatchNorm): conv-ReLU layers predict the noise,
the output is ``input - noise``, clamped to [0, 1] by a one-sided straight-through clamp
(the forward value is clamped, so image losses such as SSIM and LPIPS get [0, 1] images and
the metrics score what the loss saw; the gradient passes as if unclamped where a descent
step moves a pixel back towards [0, 1], so a pixel pushed out of range is not stuck there,
and is blocked where it would push it further out: with a plain straight-through clamp,
SSIM training on photographs ran away, 99 % of the pre-clamp pixels outside [0, 1] and
values up to 274 after 50 steps, test PSNR 4 dB; L1, MSE and smooth L1 never push
outwards, so their numbers are the same either way).

Adapter: ``images`` and ``values`` predictions are both that output; targets are the clean
images (``images`` / ``values``). So image losses (ssim, ms_ssim, psnr, lpips, dists) and
regression losses (mse, l1, smooth_l1, huber, ...) apply. On 28 px images MS-SSIM needs
fewer scales than the standard five: see ``losscli.losses.image``. The default set uses two
scales with a 7-px window (the first two standard weights renormalised); three scales with
a 7-px window are valid too, but their coarsest scale is a single 7x7 window and trained
much worse here (PSNR ~15 dB against ~20.5 dB after 200 steps).

Metrics (torchmetrics, ``data_range=1``, means over test images): ``psnr`` (primary);
``ssim`` (11-px Gaussian window, sigma 1.5) averaged over the positions whose window lies
inside the image, as in Wang et al. 2004, pytorch_msssim and our ``ssim`` loss —
torchmetrics 1.9 also averages the reflect-padded border positions, which on MNIST's black
borders mostly measures how exactly 0 the background is; ``psnr_gain`` (``psnr`` minus the
noisy input's); and, with the ``lpips`` option, ``lpips`` (LPIPS with the SqueezeNet trunk:
AlexNet needs >= 31 px), whose ImageNet weights must be in the torch hub cache (the option
is refused at plan time when they are not: the metric set never depends on a cache).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from losscli.data.mnist import RawSplit, load_fashion, load_mnist
from losscli.data.photos import MAX_CROP, MIN_CROP, load_photos
from losscli.errors import UsageError
from losscli.jobs.base import Job, JobData, Objective, Option, Split, TaskFile, load_task_file
from losscli.jobs.classification import DATA_OPTIONS
from losscli.losses import Family, Loss, Pred, Target

__all__ = ["DenoiseJob", "ResidualDenoiser", "denoise_metrics"]

_EVAL_BATCH = 1000
_PHOTOS = {"natural": 3, "natural_grey": 1}  # dataset → channels
_DATASETS = ("mnist", "fashion", *_PHOTOS)
_SIGMA = {"digits": 0.3, "photos": 0.1}  # default noise std; photos: about 25 / 255
_PHOTO_ONLY = ("crop_size", "train_crops")
_DIGITS_ONLY = ("noisy_copies", "n_train", "n_val", "n_test", "data_dir", "download")
_SSIM_WIN = 11  # torchmetrics derives it from sigma 1.5 (int(3.5 * 1.5 + 0.5) * 2 + 1)
_LPIPS_NET = "squeeze"  # the LPIPS trunk for the metric; alex needs >= 31 px
_TEST_STREAM = 1_000_003  # the test noise's generator seed is data_seed + this
_VAL_STREAM = 2_000_003  # the validation noise's


class ResidualDenoiser(nn.Module):
    """``depth`` 3x3 conv layers (ReLU between) predicting the noise; output
    ``clamp(x - noise, 0, 1)`` with a one-sided straight-through gradient (``_IntoRange``).
    ~28k parameters at the defaults."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 5):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = x - self.body(x)
        return _IntoRange.apply(out)


class _IntoRange(torch.autograd.Function):
    """``clamp(x, 0, 1)``; backward: the incoming gradient, except where ``x`` is out of
    range and a descent step (``-grad``) would move it further out (there: 0)."""

    generate_vmap_rule = True  # vectorised seeds vmap the model

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.clamp(0, 1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        outward = ((x > 1) & (grad < 0)) | ((x < 0) & (grad > 0))
        return grad.masked_fill(outward, 0)


def denoise_metrics(pred: Tensor, target: Tensor) -> Tensor:
    """``[psnr, ssim]`` of images ``[N, C, H, W]`` in [0, 1]: means over images, one tensor.

    SSIM is averaged over the positions whose 11-px window lies inside the image (see the
    module docstring), from torchmetrics' full SSIM map.
    """
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    _, ssim_map = structural_similarity_index_measure(pred, target, data_range=1.0,
                                                      kernel_size=_SSIM_WIN,
                                                      return_full_image=True)
    pad = _SSIM_WIN // 2
    return torch.stack([
        peak_signal_noise_ratio(pred, target, data_range=1.0, dim=(1, 2, 3)),
        ssim_map[..., pad:-pad, pad:-pad].mean(),
    ])


class DenoiseJob(Job):
    name = "denoise"
    aliases = ("denoising",)
    description = ("Gaussian denoising of MNIST digits (embedded 5k subset; or Fashion-MNIST, "
                   "or scikit-image's natural photographs), noise fixed by the data seed")
    model_name = "ResidualDenoiser (5 conv, 32 ch, residual, [0, 1] output)"
    primary_metric = "psnr"
    lower_is_better = frozenset({"lpips"})
    families = frozenset({Family.IMAGE, Family.REGRESSION})
    preds = frozenset({Pred.IMAGES, Pred.VALUES})
    targets = frozenset({Target.IMAGES, Target.VALUES})
    option_specs = (
        Option("sigma", float, None, "std of the Gaussian noise on [0, 1] images (default "
               "0.3 on digits, 0.1 on photographs)", low=0, open_low=True),
        Option("dataset", str, "mnist", "mnist (embedded real 5k subset), fashion, or "
               "scikit-image's photographs: natural (colour), natural_grey",
               choices=_DATASETS),
        Option("crop_size", int, 192, "photographs: crop side in px (5-scale MS-SSIM needs "
               ">= 161)", low=MIN_CROP, high=MAX_CROP),
        Option("train_crops", int, 256, "photographs: random training crops, drawn once",
               low=1),
        Option("noisy_copies", int, 4, "independent noisy copies of each training image",
               low=1),
        Option("n_train", int, 3500, "clean training images, a fixed random subset", low=1),
        Option("n_val", int, 500, "validation images: other training-split images, one "
               "noisy copy each (their own noise stream)", low=1),
        Option("n_test", int, 1000, "test images, a fixed random subset", low=1),
        Option("data_seed", int, 0, "seed of the noise and the subsets", low=0),
        Option("lpips", bool, False, "also score LPIPS (SqueezeNet trunk); needs its "
               "ImageNet weights in the torch hub cache"),
        *DATA_OPTIONS,
    )

    @property
    def photos(self) -> bool:
        return self.option("dataset") in _PHOTOS

    @property
    def sigma(self) -> float:
        given = self.option("sigma")
        return given if given is not None else _SIGMA["photos" if self.photos else "digits"]

    def check_options(self) -> None:
        """Options of the other kind of data are refused; so is ``--lpips`` without the
        weights (now, not after training)."""
        from losscli.losses.image import backbone_checkpoint

        other = _DIGITS_ONLY if self.photos else _PHOTO_ONLY
        given = [o.cli for o in self.option_specs if o.name in other and o.name in self.options]
        if given:
            raise UsageError(f"{', '.join(given)} do not apply to --dataset "
                             f"{self.option('dataset')}")
        path = backbone_checkpoint(_LPIPS_NET)
        if self.option("lpips") and not path.is_file():
            raise UsageError(f"--lpips needs the SqueezeNet ImageNet weights at {path} "
                             "(nothing is downloaded; see `losscli list losses` for lpips)")

    @property
    def metrics(self) -> tuple[str, ...]:
        """Fixed by the options: LPIPS only when asked for."""
        return ("psnr", "ssim", "psnr_gain", *(("lpips",) if self.option("lpips") else ()))

    def load_task(self) -> TaskFile:
        """Photographs have their own defaults: standard 5-scale MS-SSIM, a smaller budget."""
        return load_task_file("denoise_natural" if self.photos else self.name)

    # -- data ----------------------------------------------------------------------
    def _raw(self) -> RawSplit:
        data_dir = self.option("data_dir")
        load = load_mnist if self.option("dataset") == "mnist" else load_fashion
        return load(Path(data_dir) if data_dir else None, self.option("download"))

    def _subsets(self, images: Tensor, sizes: list[int], gen: torch.Generator
                 ) -> list[Tensor]:
        """Disjoint fixed random subsets of the given sizes, as floats in [0, 1]."""
        if sum(sizes) > len(images):
            raise UsageError(f"{self.option('dataset')} has {len(images)} images in this split; "
                             f"asked for {' + '.join(map(str, sizes))}")
        idx = torch.randperm(len(images), generator=gen)[:sum(sizes)]
        return [(images[i].float() / 255.0).unsqueeze(1).contiguous() for i in idx.split(sizes)]

    def _noisy(self, clean: Tensor, seed: int, copies: int = 1) -> Split:
        """``copies`` noisy copies of ``clean`` images, noise from generator ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        y = clean.repeat(copies, 1, 1, 1)
        return _measured(y + self.sigma * torch.randn(y.shape, generator=gen), y)

    def load_data(self) -> JobData:
        data = self._photo_data() if self.photos else self._digit_data()
        test = data.test.extra
        data.source += (f"; noisy test input: PSNR {test['psnr_input']:.2f} dB, SSIM "
                        f"{test['ssim_input']:.4f}")
        return data

    def _photo_data(self) -> JobData:
        d = load_photos(channels=_PHOTOS[self.option("dataset")],
                        crop_size=self.option("crop_size"),
                        train_crops=self.option("train_crops"), sigma=self.sigma,
                        seed=self.option("data_seed"))
        # the training crops' own PSNR/SSIM are never read (27 s for 256 colour crops)
        return JobData(Split(d.train_x, d.train_y), _measured(d.val_x, d.val_y),
                       _measured(d.test_x, d.test_y), d.source)

    def _digit_data(self) -> JobData:
        raw, seed = self._raw(), self.option("data_seed")
        gen = torch.Generator().manual_seed(seed)
        clean_train, clean_val = self._subsets(
            raw.train_images, [self.option("n_train"), self.option("n_val")], gen)
        (clean_test,) = self._subsets(raw.test_images, [self.option("n_test")],
                                      torch.Generator().manual_seed(seed + _TEST_STREAM))
        copies = self.option("noisy_copies")
        data = JobData(self._noisy(clean_train, seed + 1, copies),
                       self._noisy(clean_val, seed + _VAL_STREAM),
                       self._noisy(clean_test, seed + _TEST_STREAM + 1), "")
        data.source = (f"{raw.source}; {data.sizes()} ({copies} noisy copies of each training "
                       f"image); Gaussian sigma {self.sigma:g}, data seed {seed}")
        return data

    def build_model(self, data: JobData) -> nn.Module:
        return ResidualDenoiser(channels=data.train.x.shape[1])

    # -- adapter -------------------------------------------------------------------
    def adapt_pred(self, output: Tensor, kind: Pred) -> Tensor:
        return output  # already images in [0, 1]; the same tensor serves as values

    def adapt_target(self, target: Tensor, kind: Target, output: Tensor) -> Tensor:
        return target

    def bind(self, loss: Loss, data: JobData | None = None) -> Objective:
        """As ``Job.bind``; missing LPIPS/DISTS weights become a usage error (exit 2 at
        plan time) instead of a traceback."""
        from losscli.losses.image import MissingWeightsError

        objective = super().bind(loss, data)

        def checked(output: Tensor, target: Tensor) -> Tensor:
            try:
                return objective(output, target)
            except MissingWeightsError as exc:
                raise UsageError(str(exc)) from None

        return Objective(checked)

    # -- metrics -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, objective: Objective
                 ) -> dict[str, float]:
        pred = torch.cat([model(x).float() for x in split.x.split(_EVAL_BATCH)])
        values = denoise_metrics(pred, split.y)
        gain = values[0] - split.extra["psnr_input"]
        parts = [values, gain.view(1)]
        if "lpips" in self.metrics:
            from losscli.losses.image import lpips_loss

            lp = torch.cat([lpips_loss(p, t, net=_LPIPS_NET, reduction="none")
                            for p, t in zip(pred.split(_EVAL_BATCH),
                                            split.y.split(_EVAL_BATCH), strict=True)])
            parts.append(lp.mean().view(1))
        return dict(zip(self.metrics, torch.cat(parts).tolist(), strict=True))  # one sync

    def probe(self) -> tuple[Tensor, Tensor]:
        """Images shaped like the data's: MS-SSIM's scales are checked against them."""
        if self.photos:
            side = self.option("crop_size")
            shape = (2, _PHOTOS[self.option("dataset")], side, side)
        else:
            shape = (2, 1, 28, 28)
        gen = torch.Generator().manual_seed(0)
        return torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)


def _measured(x: Tensor, y: Tensor) -> Split:
    """Noisy inputs ``x`` and clean targets ``y``, with the noisy input's own PSNR and
    SSIM in ``extra`` (``psnr_gain`` is measured from it)."""
    psnr_in, ssim_in = denoise_metrics(x, y).tolist()
    return Split(x, y, {"psnr_input": psnr_in, "ssim_input": ssim_in})
