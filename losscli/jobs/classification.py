"""Image classification jobs: ``mnist`` (embedded 5k subset) and ``fashion`` (60k/10k)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losscli.data.mnist import RawSplit, load_fashion, load_mnist
from losscli.errors import UsageError
from losscli.jobs.base import Job, JobData, Objective, Option, Split, eval_chunks, hold_out
from losscli.losses import Family, Pred, Target

__all__ = ["DATA_OPTIONS", "ClassificationJob", "FashionJob", "MnistJob", "SmallCNN"]

# where the MNIST-style jobs (mnist, fashion, imbalanced, denoise) read their images
DATA_OPTIONS = (
    Option("data_dir", str, None, "torchvision-layout data root (DIR/MNIST/raw, "
           "DIR/FashionMNIST/raw); default: the embedded MNIST 5k subset / Debian's "
           "Fashion-MNIST files"),
    Option("download", bool, False, "let torchvision download into data_dir (online only)"),
)


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (conv-ReLU-maxpool) and a two-layer head: ~0.2M parameters on
    28 px inputs (``image_size``: the input side; the head sees ``image_size // 4``)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 image_size: int = 28):
        super().__init__()
        side = image_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ClassificationJob(Job):
    """Classification from logits ``[N, K]``: the adapter and metrics of the MNIST-style
    jobs (28x28 grey images, 10 classes, a small CNN) and of the folder jobs (``images``,
    ``table``), whose ``K`` comes with their data."""

    num_classes = 10
    model_name = "SmallCNN (2 conv + 2 fc)"
    metrics = ("accuracy", "f1_macro", "ece", "nll")
    primary_metric = "accuracy"
    lower_is_better = frozenset({"ece", "nll"})
    families = frozenset({Family.CLASSIFICATION, Family.BINARY})
    preds = frozenset({Pred.LOGITS, Pred.LOG_PROBS, Pred.PROBS})
    targets = frozenset({Target.INDEX, Target.BINARY})
    mean_std: tuple[float, float]

    def _raw(self) -> RawSplit:
        raise NotImplementedError

    def load_data(self) -> JobData:
        raw = self._raw()
        mean, std = self.mean_std

        def prep(images: Tensor) -> Tensor:
            return ((images.float() / 255.0 - mean) / std).unsqueeze(1).contiguous()

        # validation: a fixed stratified share of the training split (split seed 0); the
        # test split is the dataset's own, untouched
        train = Split(prep(raw.train_images), raw.train_labels)
        if self.option("val_size") >= len(train):
            raise UsageError(f"--val-size {self.option('val_size')} leaves no training images "
                             f"of the {len(train)} in {raw.source}; lower it")
        tr, va = hold_out(len(train), self.option("val_size"), 0, raw.train_labels)
        data = JobData(train.subset(tr), train.subset(va),
                       Split(prep(raw.test_images), raw.test_labels), raw.source)
        data.source += f"; {data.sizes()}"
        return data

    def build_model(self, data: JobData) -> nn.Module:
        return SmallCNN(num_classes=self.num_classes)

    def adapt_pred(self, output: Tensor, kind: Pred) -> Tensor:
        if kind is Pred.LOG_PROBS:
            return F.log_softmax(output, dim=1)
        if kind is Pred.PROBS:
            return F.softmax(output, dim=1)
        return output

    def adapt_target(self, target: Tensor, kind: Target, output: Tensor) -> Tensor:
        if kind is Target.BINARY:
            return F.one_hot(target, output.shape[1]).to(output.dtype)
        return target

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, objective: Objective
                 ) -> dict[str, float]:
        from torchmetrics.functional.classification import (
            multiclass_accuracy,
            multiclass_calibration_error,
            multiclass_f1_score,
        )

        logits = torch.cat([model(x).float() for x in eval_chunks(split.x)])
        y, k = split.y, logits.shape[1]  # a folder job's classes come with its data
        values = torch.stack([
            multiclass_accuracy(logits, y, num_classes=k, average="micro"),
            multiclass_f1_score(logits, y, num_classes=k, average="macro"),
            multiclass_calibration_error(logits.softmax(1), y, num_classes=k, n_bins=15,
                                         norm="l1"),
            F.cross_entropy(logits, y),
        ])
        return dict(zip(self.metrics, values.tolist(), strict=True))  # the one host sync

    def probe(self) -> tuple[Tensor, Tensor]:
        return torch.randn(4, self.num_classes), torch.arange(4) % self.num_classes


class MnistJob(ClassificationJob):
    name = "mnist"
    description = ("MNIST digits; offline default: the embedded real 5k subset (3,500 train / "
                   "500 val / 1,000 test)")
    mean_std = (0.1307, 0.3081)
    option_specs = (*DATA_OPTIONS, Option("val_size", int, 500, "validation images held out "
                                          "of the training split, stratified", low=1))

    def _raw(self) -> RawSplit:
        data_dir = self.option("data_dir")
        return load_mnist(Path(data_dir) if data_dir else None, self.option("download"))


class FashionJob(ClassificationJob):
    name = "fashion"
    aliases = ("fashion_mnist", "fashion-mnist")
    description = ("Fashion-MNIST 55k train / 5k val / 10k test; offline: Debian's "
                   "dataset-fashion-mnist")
    mean_std = (0.2860, 0.3530)
    option_specs = (*DATA_OPTIONS, Option("val_size", int, 5000, "validation images held "
                                          "out of the training split, stratified", low=1))

    def _raw(self) -> RawSplit:
        data_dir = self.option("data_dir")
        return load_fashion(Path(data_dir) if data_dir else None, self.option("download"))
