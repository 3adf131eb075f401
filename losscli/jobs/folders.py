"""Jobs on users' own data: ``images`` (an ImageFolder directory), ``masks`` (``images/`` +
``masks/`` folders) and ``table`` (a CSV of labelled rows).

The readers are ``losscli.data.folders``: a bad layout is a ``UsageError`` naming the file
or folder, raised when the plan is made (exit 2 before anything trains). The data is read
once per process; splits are seeded by ``--data-seed`` (stratified by class for images and
tables, so every class is in every split) with sizes from ``--val-fraction`` and
``--test-fraction``. The number of classes comes with the data: the model is built for it
and the metrics read it from the model's output.

- ``images``: classification, the adapter and metrics of ``mnist`` (accuracy, macro-F1,
  ECE, NLL), images resized to ``--image-size`` square, grey or RGB (``--channels``),
  standardised per channel with the training images' mean and deviation; a SmallCNN sized
  to them, or ``--model resnet18`` (torchvision's, from scratch: no weights; BatchNorm, so
  its seeds train one after another).
- ``masks``: segmentation with PNG class-index masks, the adapter and metrics of ``seg``
  (mIoU with background, foreground Dice, pixel accuracy) and its SmallUNet; sides must be
  multiples of 4 (``--image-size`` resizes).
- ``table``: classification of a CSV's rows (``--csv FILE --target COLUMN``, as ``reg``
  takes a CSV for regression), features standardised with the training rows' statistics,
  the MLP of ``reg`` with one output per class.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from losscli.data.folders import load_csv_classification, load_image_folder, load_mask_folder
from losscli.data.splits import SplitTensors, check_fractions
from losscli.errors import UsageError
from losscli.jobs.base import JobData, Option, Split
from losscli.jobs.classification import ClassificationJob, SmallCNN
from losscli.jobs.regression import MLP
from losscli.jobs.segmentation import SegmentationJob, SmallUNet
from losscli.losses import Family

__all__ = ["ImagesJob", "MasksJob", "TableJob"]

_SPLIT_OPTIONS = (
    Option("val_fraction", float, 0.15, "share held out for validation (per class for images "
           "and tables)", low=0, high=1, open_low=True, open_high=True),
    Option("test_fraction", float, 0.15, "share held out for the test split", low=0, high=1,
           open_low=True, open_high=True),
    Option("data_seed", int, 0, "seed of the split", low=0),
)
_CHANNELS = Option("channels", int, 3, "1 (grey) or 3 (RGB); images are converted", low=1,
                   high=3)


class _FolderJob:
    """What the three folder jobs share (a mixin before their ``Job`` base): the split
    options' rules and the required path."""

    def check_options(self) -> None:
        names = {o.name for o in self.option_specs}
        if "channels" in names and self.option("channels") not in (1, 3):
            raise UsageError(f"--channels must be 1 (grey) or 3 (RGB), got "
                             f"{self.option('channels')}")
        check_fractions(self.option("val_fraction"), self.option("test_fraction"))

    def _required(self, option: str, what: str) -> str:
        value = self.option(option)
        if value is None:
            flag = next(o.cli for o in self.option_specs if o.name == option)
            raise UsageError(f"{self.name} needs {flag}: {what}")
        return value

    def _split_args(self) -> dict:
        return {"val_fraction": self.option("val_fraction"),
                "test_fraction": self.option("test_fraction"), "seed": self.option("data_seed")}


def _job_data(d: SplitTensors, source: str, **extra) -> JobData:
    return JobData(Split(d.train_x, d.train_y, dict(extra)), Split(d.val_x, d.val_y, dict(extra)),
                   Split(d.test_x, d.test_y, dict(extra)), source)


def _standardise_channels(d: SplitTensors) -> str:
    """Images standardised in place per channel with the training images' statistics; the
    statistics in words, for the source line."""
    mean = d.train_x.mean((0, 2, 3), keepdim=True)
    std = d.train_x.std((0, 2, 3), keepdim=True).nan_to_num(1.0).clamp_min(1e-3)
    for name in ("train_x", "val_x", "test_x"):
        setattr(d, name, ((getattr(d, name) - mean) / std).contiguous())
    return ("standardised with the training images' channel mean "
            f"{', '.join(f'{m:.3f}' for m in mean.flatten().tolist())}")


class ImagesJob(_FolderJob, ClassificationJob):
    name = "images"
    description = ("Classification of your images: an ImageFolder directory (--data-dir "
                   "DIR with DIR/<class>/<image>)")
    model_name = "SmallCNN (2 conv + 2 fc) sized to the images, or ResNet-18 from scratch"
    option_specs = (
        Option("data_dir", str, None, "the ImageFolder directory: one subfolder of images "
               "per class (required)"),
        Option("image_size", int, 32, "side every image is resized to (square)", low=4,
               multiple_of=4),
        _CHANNELS,
        Option("model", str, "small_cnn", "small_cnn, or torchvision's resnet18 from scratch "
               "(no weights)", choices=("small_cnn", "resnet18")),
        *_SPLIT_OPTIONS,
    )

    @property
    def vectorisable(self) -> bool:
        """ResNet-18's BatchNorm keeps running statistics: no vmap over seeds."""
        return self.option("model") == "small_cnn"

    def load_data(self) -> JobData:
        root = self._required("data_dir", "an ImageFolder directory (DIR/<class>/<image>)")
        d = load_image_folder(root, image_size=self.option("image_size"),
                              channels=self.option("channels"), **self._split_args())
        note = _standardise_channels(d)
        return _job_data(d, f"{d.source}; {note}", classes=d.classes)

    def build_model(self, data: JobData) -> nn.Module:
        classes = len(data.train.extra["classes"])
        channels, size = data.train.x.shape[1], data.train.x.shape[-1]
        if self.option("model") == "resnet18":
            from torchvision.models import resnet18

            model = resnet18(weights=None, num_classes=classes)
            if channels != 3:  # its stem, for grey images, initialised as torchvision does
                model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
                nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out",
                                        nonlinearity="relu")
            return model
        return SmallCNN(in_channels=channels, num_classes=classes, image_size=size)


class MasksJob(_FolderJob, SegmentationJob):
    name = "masks"
    aliases = ()
    description = ("Segmentation of your images: DIR/images/<stem>.<ext> with class-index "
                   "masks DIR/masks/<stem>.png (--data-dir DIR)")
    families = frozenset({Family.SEGMENTATION, Family.CLASSIFICATION, Family.BINARY})
    binary = False  # K classes from the masks, background included: K logit channels
    option_specs = (
        Option("data_dir", str, None, "the folder holding images/ and masks/ (required)"),
        Option("image_size", int, None, "resize every pair to this square side (image "
               "bilinear, mask nearest); default: keep it (all images one size, sides "
               "multiples of 4)", low=4, multiple_of=4),
        _CHANNELS,
        Option("num_classes", int, None, "classes K, background included; default: the "
               "largest mask value + 1, every index 0..K-1 present", low=2),
        *_SPLIT_OPTIONS,
    )

    def load_data(self) -> JobData:
        root = self._required("data_dir", "a folder with images/ and masks/ (PNG class "
                                          "indices)")
        d = load_mask_folder(root, image_size=self.option("image_size"),
                             channels=self.option("channels"),
                             num_classes=self.option("num_classes"), **self._split_args())
        h, w = d.train_x.shape[-2:]
        if h % 4 or w % 4:
            raise UsageError(f"{Path(root) / 'images'}: the images are {w}x{h}, but the U-Net "
                             "halves them twice, so both sides must be multiples of 4: pass "
                             "--image-size N (a multiple of 4) to resize them")
        return _job_data(d, d.source, num_classes=d.num_classes)

    def build_model(self, data: JobData) -> nn.Module:
        return SmallUNet(in_channels=data.train.x.shape[1],
                         out_channels=data.train.extra["num_classes"])

    def probe(self) -> tuple[Tensor, Tensor]:
        s, k = self.option("image_size") or 16, self.option("num_classes") or 3
        target = (torch.arange(2 * s * s).view(2, s, s) // 7) % k
        return torch.randn(2, k, s, s), target


class TableJob(_FolderJob, ClassificationJob):
    name = "table"
    description = "Classification of your CSV's rows (--csv FILE --target COLUMN)"
    model_name = "MLP (2x64 ReLU, one logit per class)"
    option_specs = (
        Option("csv", str, None, "the table: a header row, one row per sample (required)"),
        Option("target_column", str, None, "the column of class labels (required)",
               flag="target"),
        Option("features", str, None, "comma-separated feature columns; default: every "
               "column but the target"),
        *_SPLIT_OPTIONS,
    )

    def load_data(self) -> JobData:
        csv = self._required("csv", "the CSV file to classify (with --target COLUMN)")
        target = self._required("target_column", "the --csv column of class labels")
        features = self.option("features")
        d = load_csv_classification(
            csv, target, features=[f.strip() for f in features.split(",")] if features else None,
            **self._split_args())
        return _job_data(d, d.source, classes=d.classes)

    def build_model(self, data: JobData) -> nn.Module:
        return MLP(data.train.x.shape[1], out_features=len(data.train.extra["classes"]))
