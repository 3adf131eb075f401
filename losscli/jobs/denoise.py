"""Image denoising job ``denoise``: additive Gaussian noise on MNIST / Fashion-MNIST digits.

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

Model: a residual denoiser (DnCNN-style, no BatchNorm): conv-ReLU layers predict the noise,
the output is ``input - noise``, clamped to [0, 1] by a straight-through clamp (the forward
value is clamped, so image losses such as SSIM and LPIPS get [0, 1] images and the metrics
score what the loss saw; the gradient passes as if unclamped, so a pixel pushed out of range
is not stuck there).

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
noisy input's); and ``lpips`` (LPIPS with the SqueezeNet trunk: AlexNet needs >= 31 px) only
when its ImageNet weights are in the torch hub cache — offline they are not, and the metric
is left out without a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from losscli.data.mnist import RawSplit, load_fashion, load_mnist
from losscli.errors import UsageError
from losscli.jobs.base import Job, JobData
from losscli.losses import Family, Loss, Pred, Target

__all__ = ["DenoiseJob", "ResidualDenoiser", "denoise_metrics"]

_EVAL_BATCH = 1000
_DATASETS = ("mnist", "fashion")
_SSIM_WIN = 11  # torchmetrics derives it from sigma 1.5 (int(3.5 * 1.5 + 0.5) * 2 + 1)
_LPIPS_NET = "squeeze"  # the LPIPS trunk for the metric; alex needs >= 31 px
_TEST_STREAM = 1_000_003  # the test noise's generator seed is data_seed + this


class ResidualDenoiser(nn.Module):
    """``depth`` 3x3 conv layers (ReLU between) predicting the noise; output
    ``clamp(x - noise, 0, 1)`` with a straight-through gradient. ~28k parameters at the
    defaults."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 5):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = x - self.body(x)
        return out + (out.clamp(0, 1) - out).detach()  # forward: clamped; backward: identity


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


def _lpips_available() -> bool:
    from losscli.losses.image import backbone_checkpoint

    return backbone_checkpoint(_LPIPS_NET).is_file()


class DenoiseJob(Job):
    name = "denoise"
    aliases = ("denoising",)
    description = ("Gaussian denoising of MNIST digits (embedded 5k subset; or Fashion-MNIST), "
                   "noise fixed by the data seed")
    model_name = "ResidualDenoiser (5 conv, 32 ch, residual, [0, 1] output)"
    metrics: tuple[str, ...] = ("psnr", "ssim", "psnr_gain")
    primary_metric = "psnr"
    maximize = True
    families = frozenset({Family.IMAGE, Family.REGRESSION})
    preds = frozenset({Pred.IMAGES, Pred.VALUES})
    targets = frozenset({Target.IMAGES, Target.VALUES})
    option_help = {
        "sigma": "std of the Gaussian noise on [0, 1] images (default 0.3)",
        "dataset": "mnist (embedded real 5k subset) | fashion (default mnist)",
        "noisy_copies": "independent noisy copies of each training image (default 4)",
        "n_train": "clean training images, a fixed random subset (default 4000)",
        "n_test": "test images, a fixed random subset (default 1000)",
        "data_seed": "seed of the noise and the subsets (default 0)",
        "data_dir": "torchvision-layout data directory",
        "download": "let torchvision download into data_dir (online only)",
    }

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        self.sigma = o.get("sigma", 0.3)
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) \
                or not self.sigma > 0:
            raise UsageError(f"--sigma must be a number > 0, got {self.sigma!r}")
        self.sigma = float(self.sigma)
        self.dataset = o.get("dataset", "mnist")
        if self.dataset not in _DATASETS:
            raise UsageError(f"--opt dataset= must be one of {', '.join(_DATASETS)}, "
                             f"got {self.dataset!r}")
        self.copies = self._int("noisy_copies", 4, 1)
        self.n_train = self._int("n_train", 4000, 1)
        self.n_test = self._int("n_test", 1000, 1)
        self.data_seed = self._int("data_seed", 0, 0)
        if _lpips_available():
            self.metrics = (*type(self).metrics, "lpips")

    def _int(self, key: str, default: int, low: int) -> int:
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"--opt {key}= must be an integer >= {low}, got {value!r}")
        return value

    # -- data ----------------------------------------------------------------------
    def _raw(self) -> RawSplit:
        data_dir = self.options.get("data_dir")
        load = load_mnist if self.dataset == "mnist" else load_fashion
        return load(Path(data_dir) if data_dir else None, self.options.get("download", False))

    def _subset(self, images: Tensor, n: int, gen: torch.Generator) -> Tensor:
        """A fixed random subset of ``n`` images as floats in [0, 1], ``[n, 1, 28, 28]``."""
        if n > len(images):
            raise UsageError(f"{self.dataset} has {len(images)} images in this split; asked "
                             f"for {n}")
        idx = torch.randperm(len(images), generator=gen)[:n]
        return (images[idx].float() / 255.0).unsqueeze(1).contiguous()

    def load_data(self) -> JobData:
        raw = self._raw()
        gen = torch.Generator().manual_seed(self.data_seed)
        clean_train = self._subset(raw.train_images, self.n_train, gen)
        train_y = clean_train.repeat(self.copies, 1, 1, 1)
        train_x = train_y + self.sigma * torch.randn(train_y.shape, generator=gen)
        test_gen = torch.Generator().manual_seed(self.data_seed + _TEST_STREAM)
        test_y = self._subset(raw.test_images, self.n_test, test_gen)
        test_x = test_y + self.sigma * torch.randn(test_y.shape, generator=test_gen)
        psnr_in, ssim_in = denoise_metrics(test_x, test_y).tolist()
        source = (f"{raw.source}; {self.n_train} train x {self.copies} noisy copies, "
                  f"{self.n_test} test; Gaussian sigma {self.sigma:g}, data seed "
                  f"{self.data_seed}; noisy test input: PSNR {psnr_in:.2f} dB, "
                  f"SSIM {ssim_in:.4f}")
        return JobData(train_x, train_y, test_x, test_y, source,
                       extra={"psnr_input": psnr_in, "ssim_input": ssim_in})

    def build_model(self) -> nn.Module:
        return ResidualDenoiser()

    # -- adapter -------------------------------------------------------------------
    def adapt_pred(self, output: Tensor, kind: Pred) -> Tensor:
        return output  # already images in [0, 1]; the same tensor serves as values

    def adapt_target(self, target: Tensor, kind: Target, output: Tensor) -> Tensor:
        return target

    def bind(self, loss: Loss) -> Callable[[Tensor, Tensor], Tensor]:
        """As ``Job.bind``; missing LPIPS/DISTS weights become a usage error (exit 2 at
        plan time) instead of a traceback."""
        from losscli.losses.image import MissingWeightsError

        objective = super().bind(loss)

        def checked(output: Tensor, target: Tensor) -> Tensor:
            try:
                return objective(output, target)
            except MissingWeightsError as exc:
                raise UsageError(str(exc)) from None

        return checked

    # -- metrics -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: JobData) -> dict[str, float]:
        pred = torch.cat([model(x).float() for x in data.test_x.split(_EVAL_BATCH)])
        values = denoise_metrics(pred, data.test_y)
        gain = values[0] - data.extra["psnr_input"]
        parts = [values, gain.view(1)]
        if "lpips" in self.metrics:
            from losscli.losses.image import lpips_loss

            lp = torch.cat([lpips_loss(p, t, net=_LPIPS_NET, reduction="none")
                            for p, t in zip(pred.split(_EVAL_BATCH),
                                            data.test_y.split(_EVAL_BATCH), strict=True)])
            parts.append(lp.mean().view(1))
        return dict(zip(self.metrics, torch.cat(parts).tolist(), strict=True))  # one sync

    def probe(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(0)
        return torch.rand(2, 1, 28, 28, generator=gen), torch.rand(2, 1, 28, 28, generator=gen)
