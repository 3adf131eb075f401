"""Semantic segmentation job ``seg``: generated shapes on textured backgrounds, a small U-Net.

Data: ``losscli.data.synthetic_segmentation`` (classes circle, square, triangle, ...; class
0 is background), generated from a fixed data seed (train and test from different streams,
so ``n_train`` never changes the test set). Knobs: ``image_size``, ``num_classes`` (shape
classes), ``fg_fraction`` (expected foreground share: the class-imbalance knob), ``pixel_noise``,
``binary`` (foreground vs background), ``n_train``, ``n_test``, ``data_seed``.

Adapter. Multi-class: the model gives logits ``[N, C, H, W]`` (``C = num_classes + 1``);
``probs`` is their softmax, ``log_probs`` their log-softmax; targets are class indices
``[N, H, W]`` or one-hot floats ``[N, C, H, W]`` (``binary`` targets). Binary variant: logits
``[N, 1, H, W]``, ``probs`` their sigmoid; targets are the 0/1 mask ``[N, H, W]`` (index kind,
which the segmentation losses take as a mask) or ``[N, 1, H, W]`` floats (binary kind).

Which losses apply: segmentation losses (dice, lovasz, ...), classification losses on the
dense logits (ce, focal, ...: per-pixel, averaged), and binary losses. On the multi-class
job a binary loss (e.g. ``bce_logits``) trains one sigmoid per class against the one-hot
target (a multi-label objective; the prediction is still the argmax), as on ``mnist``. The
binary variant refuses classification losses: a softmax over one channel is constant.

Metrics, from the argmax (or ``logit > 0``) prediction over the whole test set, through
torchmetrics: ``miou`` (primary) is the mean IoU over all classes *including background*
(dataset-level confusion matrix, classes absent from prediction and truth skipped), as in
PASCAL VOC / Cityscapes; ``dice`` is the mean Dice over the foreground classes only, also
dataset-level; ``pixel_acc`` is the share of correctly labelled pixels. The binary variant
scores two classes (background, foreground) the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losscli.data.synthetic_segmentation import SHAPE_CLASSES, make_segmentation
from losscli.jobs.base import Job, JobData, Objective, Option, Split
from losscli.losses import Family, LossInfo, Pred, Target

__all__ = ["SegmentationJob", "SmallUNet"]

_EVAL_BATCH = 256
_TEST_STREAM = 1_000_003  # the test set's generator seed is data_seed + this
_VAL_STREAM = 2_000_003  # the validation set's: its own stream, like the test set


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with GroupNorm (4 groups) and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """U-Net with two down and two up stages (widths w, 2w, 4w), GroupNorm, no BatchNorm
    (so per-sample functional transforms such as ``torch.func.vmap`` stay possible).
    Input sides must be multiples of 4."""

    def __init__(self, in_channels: int = 1, out_channels: int = 4, width: int = 8):
        super().__init__()
        w = width
        self.enc1 = _conv_block(in_channels, w)
        self.enc2 = _conv_block(w, 2 * w)
        self.mid = _conv_block(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _conv_block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _conv_block(2 * w, w)
        self.head = nn.Conv2d(w, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(F.max_pool2d(s1, 2))
        h = self.mid(F.max_pool2d(s2, 2))
        h = self.dec2(torch.cat([self.up2(h), s2], dim=1))
        h = self.dec1(torch.cat([self.up1(h), s1], dim=1))
        return self.head(h)


class SegmentationJob(Job):
    name = "seg"
    aliases = ("segmentation",)
    description = ("Synthetic shapes segmentation (circles, squares, triangles, ... on noisy "
                   "textured backgrounds), generated from a fixed data seed")
    model_name = "SmallUNet (2 down / 2 up, 8-16-32 ch, GroupNorm)"
    metrics = ("miou", "dice", "pixel_acc")
    primary_metric = "miou"
    preds = frozenset({Pred.LOGITS, Pred.PROBS, Pred.LOG_PROBS})
    targets = frozenset({Target.INDEX, Target.BINARY})
    option_specs = (
        Option("image_size", int, 32, "image side in px (two 2x poolings in the U-Net)",
               low=16, multiple_of=4),
        Option("num_classes", int, 3, "shape classes; background is class 0 (default: "
               "circle, square, triangle)", low=1, high=len(SHAPE_CLASSES)),
        Option("fg_fraction", float, 0.2, "expected foreground share of the pixels (the "
               "class-imbalance knob)", low=0, high=1, open_low=True, open_high=True),
        Option("pixel_noise", float, 0.1, "std of the Gaussian pixel noise; shapes stand "
               "0.5-1 above the background", low=0),
        Option("binary", bool, False, "foreground vs background: one logit channel"),
        Option("n_train", int, 2000, "training images", low=1),
        Option("n_val", int, 250, "validation images (their own generator stream)", low=1),
        Option("n_test", int, 500, "test images", low=1),
        Option("data_seed", int, 0, "seed of the generated data", low=0),
    )

    @property
    def families(self) -> frozenset[Family]:
        """The binary variant has one channel: a softmax over it would be constant."""
        if self.option("binary"):
            return frozenset({Family.SEGMENTATION, Family.BINARY})
        return frozenset({Family.SEGMENTATION, Family.CLASSIFICATION, Family.BINARY})

    @property
    def binary(self) -> bool:
        return self.option("binary")

    @property
    def num_classes(self) -> int:
        return self.option("num_classes")

    @property
    def image_size(self) -> int:
        return self.option("image_size")

    @property
    def out_channels(self) -> int:
        """Logit channels: 1 for the binary variant, else background + shape classes."""
        return 1 if self.binary else self.num_classes + 1

    def _generate(self, n: int, seed: int):
        return make_segmentation(n, image_size=self.image_size, num_classes=self.num_classes,
                                 fg_fraction=self.option("fg_fraction"),
                                 noise=self.option("pixel_noise"), seed=seed)

    def _split(self, n: int, seed: int) -> Split:
        part = self._generate(n, seed)
        masks = (part.masks > 0).long() if self.binary else part.masks
        return Split(part.images, masks, {"fg_fraction": part.fg_fraction})

    def load_data(self) -> JobData:
        seed = self.option("data_seed")
        data = JobData(self._split(self.option("n_train"), seed),
                       self._split(self.option("n_val"), seed + _VAL_STREAM),
                       self._split(self.option("n_test"), seed + _TEST_STREAM), "")
        classes = ", ".join(SHAPE_CLASSES[:self.num_classes])
        data.source = (
            f"generated shapes ({classes}{'; binary fg/bg' if self.binary else ''}), "
            f"{self.image_size}px, {data.sizes()}, fg fraction "
            f"{data.train.extra['fg_fraction']:.3f} (asked {self.option('fg_fraction'):g}), "
            f"noise {self.option('pixel_noise'):g}, data seed {seed}")
        return data

    def build_model(self, data: JobData) -> nn.Module:
        return SmallUNet(in_channels=1, out_channels=self.out_channels)

    def incompatibility(self, info: LossInfo) -> str | None:
        if self.binary and info.family is Family.CLASSIFICATION:
            return (f"{info.family} losses do not apply to the binary seg variant (a softmax "
                    "over one channel is constant); use bce_logits, sigmoid_focal or a "
                    "segmentation loss")
        return super().incompatibility(info)

    # -- adapter -------------------------------------------------------------------
    def adapt_pred(self, output: Tensor, kind: Pred) -> Tensor:
        if kind is Pred.PROBS:
            return torch.sigmoid(output) if self.binary else F.softmax(output, dim=1)
        if kind is Pred.LOG_PROBS:
            return F.logsigmoid(output) if self.binary else F.log_softmax(output, dim=1)
        return output

    def adapt_target(self, target: Tensor, kind: Target, output: Tensor) -> Tensor:
        if kind is Target.BINARY:
            if self.binary:
                return target.unsqueeze(1).to(output.dtype)
            classes = torch.arange(output.shape[1], device=target.device).view(1, -1, 1, 1)
            return (target.unsqueeze(1) == classes).to(output.dtype)  # one_hot() checks: a sync
        return target

    # -- metrics -------------------------------------------------------------------
    def predict(self, output: Tensor) -> Tensor:
        """Class index per pixel ``[N, H, W]`` from logits (``logit > 0`` when binary)."""
        return (output[:, 0] > 0).long() if self.binary else output.argmax(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, objective: Objective
                 ) -> dict[str, float]:
        preds, classes = [], 2  # one logit channel (binary) scores two classes
        for x in split.x.split(_EVAL_BATCH):
            output = model(x).float()
            preds.append(self.predict(output))
            classes = max(classes, output.shape[1])  # masks: the classes come with the data
        values = segmentation_metrics(torch.cat(preds), split.y, classes)
        return dict(zip(self.metrics, values.tolist(), strict=True))  # the one host sync

    def probe(self) -> tuple[Tensor, Tensor]:
        s = self.image_size
        target = (torch.arange(2 * s * s).view(2, s, s) // 7) % (self.num_classes + 1)
        if self.binary:
            target = (target > 0).long()
        return torch.randn(2, self.out_channels, s, s), target


def segmentation_metrics(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``[miou, dice, pixel_acc]`` of index predictions ``[N, H, W]`` against index targets,
    dataset-level (see the module docstring), as one tensor (no host sync)."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_jaccard_index
    from torchmetrics.functional.segmentation import dice_score

    return torch.stack([
        multiclass_jaccard_index(pred, target, num_classes, average="macro",
                                 validate_args=False),
        dice_score(pred, target, num_classes, include_background=False, average="macro",
                   input_format="index", aggregation_level="global").squeeze(0),
        multiclass_accuracy(pred, target, num_classes, average="micro", validate_args=False),
    ])
