"""The ``imbalanced`` job: one MNIST digit against the rest, positives subsampled to a prior.

Data. Positives (the chosen ``digit``) are subsampled in train *and* test to
``pos_ratio`` positives per negative, so the test set has the training prior and average
precision means what it would in deployment. The embedded MNIST 5k subset's own split has
only 900 test negatives (18 positives at 1:50, too few for a stable AUPRC), so for it the
5,000 images are re-split 50/50 per class by a fixed permutation: 2,250 negatives and 45
positives on each side at 1:50. A torchvision MNIST from ``--data-dir`` keeps its 60k/10k
split (about 180 test positives at 1:50).

Recipe. SmallCNN with one output logit. Its final bias is initialised to the log-odds of
the training prior, for every loss (RetinaNet's recipe, findings.md item 4): the model
starts as the best constant predictor, so no loss spends its first steps learning the prior
and an unweighted loss over ~98% negatives does not start with a large, uninformative
gradient. With a zero bias, focal-type losses (which down-weight the easy negatives once the
prior is learned) and plain BCE would start from a point that favours neither and reach it at
different speeds, which confounds steps-to-target. The same init for all losses keeps the
comparison fair; AUPRC itself is rank-based and does not depend on the bias.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from losscli.data.mnist import RawSplit, load_mnist
from losscli.jobs.base import Job, JobData, Objective, Option, Split, eval_chunks, hold_out
from losscli.jobs.classification import DATA_OPTIONS, SmallCNN
from losscli.losses import Family, Pred, Target

__all__ = ["ImbalancedJob", "subsample_positives"]

_MEAN_STD = (0.1307, 0.3081)
_VAL_FRACTION = 0.3  # of the training split (per class), held out for validation


def subsample_positives(labels: Tensor, digit: int, pos_ratio: float,
                        gen: torch.Generator) -> Tensor:
    """Indices keeping every negative and ``round(pos_ratio * negatives)`` random positives
    (all positives when there are fewer), in their original order."""
    pos = (labels == digit).nonzero().squeeze(1)
    neg = (labels != digit).nonzero().squeeze(1)
    k = min(len(pos), max(1, round(pos_ratio * len(neg))))
    keep = pos[torch.randperm(len(pos), generator=gen)[:k]]
    return torch.cat([neg, keep]).sort().values


def _resplit_half(raw: RawSplit, gen: torch.Generator) -> RawSplit:
    """Pool train and test and split each class 50/50 by a seeded permutation."""
    images = torch.cat([raw.train_images, raw.test_images])
    labels = torch.cat([raw.train_labels, raw.test_labels])
    train, test = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        train.append(idx[: len(idx) // 2])
        test.append(idx[len(idx) // 2:])
    tr, te = torch.cat(train).sort().values, torch.cat(test).sort().values
    return RawSplit(images[tr], labels[tr], images[te], labels[te],
                    "embedded MNIST 5k subset, re-split 50/50 per class")


class ImbalancedJob(Job):
    name = "imbalanced"
    aliases = ("imbalance", "mnist_imbalanced")
    description = ("One MNIST digit (8) against the rest at 1:50 positives per negative, "
                   "train and test; AUPRC")
    model_name = "SmallCNN (2 conv + 2 fc, 1 logit, prior-initialised bias)"
    metrics = ("auprc", "f1_best", "balanced_accuracy", "auroc")
    primary_metric = "auprc"
    families = frozenset({Family.BINARY})
    preds = frozenset({Pred.LOGITS, Pred.PROBS})
    targets = frozenset({Target.BINARY})
    option_specs = (
        Option("pos_ratio", float, 0.02, "positives per negative, train and test (0.02 = "
               "1:50)", low=0, high=1, open_low=True),
        Option("digit", int, 8, "the positive digit", low=0, high=9),
        Option("data_seed", int, 0, "seed of the subsampling and of the embedded re-split",
               low=0),
        *DATA_OPTIONS,
    )

    @property
    def prior(self) -> float:
        """The fraction of positives, train and test."""
        ratio = self.option("pos_ratio")
        return ratio / (1 + ratio)

    def load_data(self) -> JobData:
        data_dir, digit, ratio = (self.option(k) for k in ("data_dir", "digit", "pos_ratio"))
        gen = torch.Generator().manual_seed(self.option("data_seed"))
        if data_dir or self.option("download"):
            raw = load_mnist(Path(data_dir) if data_dir else None, self.option("download"))
        else:
            raw = _resplit_half(load_mnist(), gen)
        mean, std = _MEAN_STD
        tr, va = hold_out(len(raw.train_labels), round(_VAL_FRACTION * len(raw.train_labels)),
                          self.option("data_seed"), raw.train_labels)
        splits = []
        for images, labels in ((raw.train_images[tr], raw.train_labels[tr]),
                               (raw.train_images[va], raw.train_labels[va]),
                               (raw.test_images, raw.test_labels)):
            keep = subsample_positives(labels, digit, ratio, gen)
            x = ((images[keep].float() / 255.0 - mean) / std).unsqueeze(1).contiguous()
            splits.append(Split(x, (labels[keep] == digit).float()))
        counts = ", ".join(f"{name} {len(s)} ({int(s.y.sum())} positive)"
                           for name, s in zip(("train", "val", "test"), splits, strict=True))
        return JobData(*splits, source=f"{raw.source}; digit {digit} vs rest, "
                                       f"1:{1 / ratio:g}: {counts}")

    def build_model(self, data: JobData) -> nn.Module:
        model = SmallCNN(num_classes=1)
        with torch.no_grad():
            model.head[-1].bias.fill_(math.log(self.prior / (1 - self.prior)))
        return model

    def adapt_pred(self, output: Tensor, kind: Pred) -> Tensor:
        logits = output[:, 0]
        return torch.sigmoid(logits) if kind is Pred.PROBS else logits

    def adapt_target(self, target: Tensor, kind: Target, output: Tensor) -> Tensor:
        return target

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, objective: Objective
                 ) -> dict[str, float]:
        logits = torch.cat([model(x).float()[:, 0] for x in eval_chunks(split.x)])
        return binary_metrics(torch.sigmoid(logits), split.y)

    def probe(self) -> tuple[Tensor, Tensor]:
        return torch.randn(4, 1), torch.tensor([0.0, 1.0, 0.0, 0.0])


def binary_metrics(probs: Tensor, target: Tensor) -> dict[str, float]:
    """AUPRC, F1 at the best threshold, balanced accuracy at 0.5 and AUROC (one host sync).

    Args:
        probs: ``[N]`` positive-class probabilities.
        target: ``[N]`` 0/1 labels (any dtype).
    """
    from torchmetrics.functional.classification import (
        binary_auroc,
        binary_average_precision,
        binary_precision_recall_curve,
        binary_recall,
        binary_specificity,
    )

    y = target.long()
    precision, recall, _ = binary_precision_recall_curve(probs, y)
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0.0)
    balanced = (binary_recall(probs, y, threshold=0.5)
                + binary_specificity(probs, y, threshold=0.5)) / 2
    values = torch.stack([binary_average_precision(probs, y), f1.max(), balanced,
                          binary_auroc(probs, y)])
    return dict(zip(ImbalancedJob.metrics, values.tolist(), strict=True))  # the one host sync
