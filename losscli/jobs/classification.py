"""Image classification jobs: ``mnist`` (embedded 5k subset) and ``fashion`` (60k/10k).

Both take two stressors (``losscli.data.stressors``), applied in this order to the data
after the validation split is held out, with fixed data seeds (never the run seed), so
every loss and seed trains on the same labels:

1. ``imbalance`` rho: the training split becomes exponentially long-tailed (class ``c``
   keeps ``n_max * rho^(-c/9)`` images, Cui et al. 2019 / Cao et al. 2019); validation and
   test stay balanced.
2. ``label_noise``: ``sym:ETA`` or ``asym:ETA`` on the training *and validation* labels
   (validation is as noisy as training, the papers' protocol: a user tuning on it has no
   clean labels either); test labels stay clean, so test numbers measure the clean task.

The source line states the realised noise rate and the per-class counts, and the job
supplies ``class_counts`` (its training labels, after both) to losses that need them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losscli.calibration import (
    BIN_FIELDS,
    balanced_accuracy,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    worst_class_accuracy,
)
from losscli.data.mnist import RawSplit, load_fashion, load_mnist
from losscli.data.stressors import (
    FASHION_PAIRS,
    MNIST_PAIRS,
    NOISE_RULE,
    LabelNoise,
    long_tail,
)
from losscli.errors import UsageError
from losscli.jobs.base import (
    Evaluation,
    Job,
    JobData,
    Objective,
    Option,
    Split,
    eval_chunks,
    hold_out,
)
from losscli.losses import Family, Pred, Target

__all__ = ["DATA_OPTIONS", "ClassificationJob", "FashionJob", "MnistJob", "SmallCNN",
           "stressor_options"]

# where the MNIST-style jobs (mnist, fashion, imbalanced, denoise) read their images
DATA_OPTIONS = (
    Option("data_dir", str, None, "torchvision-layout data root (DIR/MNIST/raw, "
           "DIR/FashionMNIST/raw); default: the embedded MNIST 5k subset / Debian's "
           "Fashion-MNIST files"),
    Option("download", bool, False, "let torchvision download into data_dir (online only)"),
)

# the fixed data seeds of the stressors (the validation split is held out with seed 0)
_IMBALANCE_SEED, _TRAIN_NOISE_SEED, _VAL_NOISE_SEED = 1, 2, 3


def stressor_options(pairs: str) -> tuple[Option, Option]:
    """``label_noise`` and ``imbalance``; ``pairs``: the asymmetric flips, in words."""
    return (
        Option("label_noise", str, "none", "sym:ETA: each train/val label becomes a "
               "uniformly drawn other class with probability ETA; asym:ETA: class-pair "
               f"flips with probability ETA ({pairs}); test labels stay clean; fixed data "
               "seed, applied after imbalance", check=LabelNoise.parse, allowed=NOISE_RULE),
        Option("imbalance", float, 1.0, "long-tailed training split: class c keeps "
               "n_max*rho^(-c/9) images, largest/smallest = rho (Cui et al. 2019); val and "
               "test stay balanced; fixed data seed", low=1),
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


def _pairs_text(pairs: Mapping[int, int]) -> str:
    """``{5: 6, 6: 5, 7: 1}`` as ``5<->6, 7->1``."""
    done, parts = set(), []
    for a, b in pairs.items():
        if a in done:
            continue
        swap = pairs.get(b) == a
        parts.append(f"{a}<->{b}" if swap else f"{a}->{b}")
        done |= {a, b} if swap else {a}
    return ", ".join(parts)


def _logits(model: nn.Module, split: Split) -> Tensor:
    """``model``'s float32 logits ``[N, K]`` on ``split``, in eval-sized chunks."""
    return torch.cat([model(x).float() for x in eval_chunks(split.x)])


class ClassificationJob(Job):
    """Classification from logits ``[N, K]``: the adapter and metrics of the MNIST-style
    jobs (28x28 grey images, 10 classes, a small CNN) and of the folder jobs (``images``,
    ``table``), whose ``K`` comes with their data."""

    num_classes = 10
    model_name = "SmallCNN (2 conv + 2 fc)"
    metrics = ("accuracy", "f1_macro", "ece", "nll", "balanced_accuracy",
               "worst_class_accuracy", "ece_classwise")
    primary_metric = "accuracy"
    lower_is_better = frozenset({"ece", "nll", "ece_classwise", "ece_ts"})
    test_only_metrics = ("ece_ts", "temperature")  # temperature scaling: see evaluate_test
    families = frozenset({Family.CLASSIFICATION, Family.BINARY})
    preds = frozenset({Pred.LOGITS, Pred.LOG_PROBS, Pred.PROBS})
    targets = frozenset({Target.INDEX, Target.BINARY})
    mean_std: tuple[float, float]
    noise_pairs: Mapping[int, int] = {}  # asymmetric label noise: class -> its flip

    def _raw(self) -> RawSplit:
        raise NotImplementedError

    @property
    def label_noise(self) -> LabelNoise:
        """The ``label_noise`` option, parsed (none for a job that does not declare it;
        the option's ``check`` refused a bad value when the job was made)."""
        if not any(o.name == "label_noise" for o in self.option_specs):
            return LabelNoise()
        return LabelNoise.parse(self.option("label_noise"))

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
        notes = self._stress(data)
        data.source += f"; {data.sizes()}" + "".join(f"; {n}" for n in notes)
        return data

    def _stress(self, data: JobData) -> list[str]:
        """Apply ``imbalance`` then ``label_noise`` to ``data`` in place; their notes for
        the source line."""
        notes, rho, noise = [], self.option("imbalance"), self.label_noise
        if rho > 1:
            try:
                keep = long_tail(data.train.y, self.num_classes, rho, _IMBALANCE_SEED)
            except ValueError as exc:
                raise UsageError(f"--imbalance (option imbalance of {self.name}): {exc} "
                                 "(in the training split)") from None
            data.train = data.train.subset(keep)
            counts = torch.bincount(data.train.y, minlength=self.num_classes).tolist()
            notes.append(f"imbalance {rho:g}: train class counts {max(counts)} (class 0) to "
                         f"{min(counts)} (class {self.num_classes - 1}), val and test balanced")
        if noise:
            clean = {"train": data.train.y, "val": data.val.y}
            data.train.y = noise.apply(clean["train"], self.num_classes, self.noise_pairs,
                                       _TRAIN_NOISE_SEED)
            data.val.y = noise.apply(clean["val"], self.num_classes, self.noise_pairs,
                                     _VAL_NOISE_SEED)
            rates = {k: (getattr(data, k).y != y).float().mean().item() * 100
                     for k, y in clean.items()}
            pairs = f" ({_pairs_text(self.noise_pairs)})" if noise.kind == "asym" else ""
            notes.append(f"label noise {noise}{pairs}: {rates['train']:.1f} % of train labels "
                         f"flipped, {rates['val']:.1f} % of val, test clean"
                         + (" (after imbalance)" if rho > 1 else ""))
        return notes

    def supplies(self, data: JobData | None) -> dict[str, Any]:
        """``class_counts``: the training split's examples per class (after noise and
        imbalance), or all ones for the probe."""
        if data is None:
            return {"class_counts": (1.0,) * self.num_classes}
        k = len(data.train.extra.get("classes", ())) or self.num_classes  # folder jobs: theirs
        return {"class_counts": tuple(torch.bincount(data.train.y, minlength=k).tolist())}

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
            multiclass_f1_score,
        )

        logits = _logits(model, split)
        y, k = split.y, logits.shape[1]  # a folder job's classes come with its data
        probs = logits.softmax(1)
        values = torch.stack([
            multiclass_accuracy(logits, y, num_classes=k, average="micro"),
            multiclass_f1_score(logits, y, num_classes=k, average="macro"),
            expected_calibration_error(probs, y),  # 15 bins, top label
            F.cross_entropy(logits, y),
            balanced_accuracy(logits, y, num_classes=k),
            worst_class_accuracy(logits, y, num_classes=k),
            classwise_calibration_error(probs, y),
        ])
        return dict(zip(self.metrics, values.tolist(), strict=True))  # the one host sync

    @torch.no_grad()
    def evaluate_test(self, model: nn.Module, data: JobData, objective: Objective
                      ) -> Evaluation:
        """``evaluate`` on the test split, then temperature scaling (Guo et al. 2017): the
        ``temperature`` T is fitted on the validation logits alone (``fit_temperature``)
        and ``ece_ts`` is the test split's ECE of ``softmax(logits / T)``. The series
        ``test_bins``: the test split's 15 reliability-diagram bins, before scaling.

        Costs a forward pass over validation and a second one over test (``evaluate``
        makes its own): on mnist (500 + 1,000 images) 0.63 s against evaluate's 0.24 s,
        median of 5 at 1 thread on a shared machine at load 6."""
        metrics = self.evaluate(model, data.test, objective)
        t = fit_temperature(_logits(model, data.val), data.val.y)
        logits, y = _logits(model, data.test), data.test.y
        scaled = expected_calibration_error((logits / t).softmax(1), y) if math.isfinite(t) \
            else logits.new_tensor(math.nan)  # a model whose validation logits overflowed
        bins = reliability_bins(logits.softmax(1), y)
        values = torch.cat([scaled.reshape(1), bins.flatten()]).tolist()  # one host sync
        metrics |= {"ece_ts": values[0], "temperature": t}
        n = bins.shape[1]
        rows = {f: values[1 + i * n: 1 + (i + 1) * n] for i, f in enumerate(BIN_FIELDS)}
        return Evaluation(metrics, {"test_bins": rows})

    def probe(self) -> tuple[Tensor, Tensor]:
        return torch.randn(4, self.num_classes), torch.arange(4) % self.num_classes


class MnistJob(ClassificationJob):
    name = "mnist"
    description = ("MNIST digits; offline default: the embedded real 5k subset (3,500 train / "
                   "500 val / 1,000 test)")
    mean_std = (0.1307, 0.3081)
    noise_pairs = MNIST_PAIRS
    option_specs = (*DATA_OPTIONS, Option("val_size", int, 500, "validation images held out "
                                          "of the training split, stratified", low=1),
                    *stressor_options(f"{_pairs_text(MNIST_PAIRS)}, Patrini et al. 2017 as "
                                      "released with Ma et al. 2020"))

    def _raw(self) -> RawSplit:
        data_dir = self.option("data_dir")
        return load_mnist(Path(data_dir) if data_dir else None, self.option("download"))


class FashionJob(ClassificationJob):
    name = "fashion"
    aliases = ("fashion_mnist", "fashion-mnist")
    description = ("Fashion-MNIST 55k train / 5k val / 10k test; offline: Debian's "
                   "dataset-fashion-mnist")
    mean_std = (0.2860, 0.3530)
    noise_pairs = FASHION_PAIRS
    option_specs = (*DATA_OPTIONS, Option("val_size", int, 5000, "validation images held "
                                          "out of the training split, stratified", low=1),
                    *stressor_options("T-shirt/top 0<->6 Shirt, Pullover 2->4 Coat, Sandal "
                                      "5->7 Sneaker: our choice of look-alike garments"))

    def _raw(self) -> RawSplit:
        data_dir = self.option("data_dir")
        return load_fashion(Path(data_dir) if data_dir else None, self.option("download"))
