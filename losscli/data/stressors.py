"""Stressors for classification labels: label noise and a long-tailed training split.

Both are pure functions of the labels and a fixed seed, so every loss and every run seed
sees the same noisy labels and the same subsample (the job passes its data seeds, never
the run seed).

- Symmetric noise (``sym:ETA``): each label is replaced, with probability ``ETA``, by a
  class drawn uniformly from the *other* classes (Zhang & Sabuncu 2018; Ma et al. 2020).
  One uniform draw and one "other class" draw per sample are made whatever ``ETA`` is, so
  the samples flipped at a lower rate are flipped, to the same class, at every higher one.
- Asymmetric noise (``asym:ETA``): each label of a source class is flipped, with
  probability ``ETA``, to its paired class; the other classes stay clean (Patrini et al.,
  "Making Deep Neural Networks Robust to Label Noise: a Loss Correction Approach", CVPR
  2017). ``MNIST_PAIRS`` are the released ones (github.com/HanxunH/Active-Passive-Losses,
  ``dataset.py`` ``MNISTNoisy``: 7->1, 2->7, 5<->6, 3->8, each one transition of the clean
  label). ``FASHION_PAIRS`` are our choice, not a paper's: the pairs of look-alike garments
  that Fashion-MNIST classifiers confuse most (T-shirt/top <-> Shirt, Pullover -> Coat,
  Sandal -> Sneaker), built like MNIST's (one swap, one-way flips elsewhere).
- Long tail (``long_tail``): class ``c`` keeps ``n_max * rho^(-c / (C - 1))`` images
  (rounded down), as the released LDAM ``IMBALANCECIFAR10.get_img_num_per_cls``
  (Cao et al. 2019; the exponential profile of Cui et al. 2019), so class 0 is the largest
  and class ``C - 1`` the smallest, ``rho`` times fewer. ``n_max`` is the smallest class's
  count before subsampling, so every class can give its share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FASHION_PAIRS", "MNIST_PAIRS", "NOISE_RULE", "LabelNoise", "long_tail",
           "long_tail_counts"]

# class -> the class its labels are flipped to under asymmetric noise
MNIST_PAIRS: Mapping[int, int] = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
# T-shirt/top <-> Shirt, Pullover -> Coat, Sandal -> Sneaker
FASHION_PAIRS: Mapping[int, int] = {0: 6, 6: 0, 2: 4, 5: 7}

NOISE_RULE = "none, sym:ETA or asym:ETA with ETA in [0, 1) (e.g. sym:0.4)"


@dataclass(frozen=True)
class LabelNoise:
    """A label-noise setting: ``kind`` none, sym or asym, and the flip probability."""

    kind: str = "none"
    rate: float = 0.0

    @classmethod
    def parse(cls, text: str) -> LabelNoise:
        """``none``, ``sym:ETA`` or ``asym:ETA``.

        Raises:
            ValueError: stating ``NOISE_RULE`` and the bad text.
        """
        kind, sep, value = str(text).strip().lower().partition(":")
        if kind == "none" and not sep:
            return cls()
        try:
            rate = float(value) if kind in ("sym", "asym") and sep else math.nan
        except ValueError:
            rate = math.nan
        if not 0 <= rate < 1:  # NaN fails too
            raise ValueError(f"must be {NOISE_RULE}, got {text!r}")
        return cls(kind, rate)

    def __bool__(self) -> bool:
        return self.kind != "none"

    def __str__(self) -> str:
        return "none" if not self else f"{self.kind} {self.rate:.2f}"

    def apply(self, labels: Tensor, num_classes: int, pairs: Mapping[int, int], seed: int
              ) -> Tensor:
        """``labels`` (int64 ``[N]`` in ``0..num_classes-1``) with noise drawn from ``seed``;
        ``pairs``: the asymmetric flips. A new tensor; ``labels`` is not changed."""
        if not self:
            return labels.clone()
        gen = torch.Generator().manual_seed(seed)
        flip = torch.rand(labels.shape, generator=gen) < self.rate
        if self.kind == "sym":
            shift = torch.randint(1, num_classes, labels.shape, generator=gen)
            flipped = (labels + shift) % num_classes  # uniform over the other classes
        else:
            to = torch.arange(num_classes)
            for source, target in pairs.items():
                to[source] = target
            flipped = to[labels]
        return torch.where(flip, flipped, labels)


def long_tail_counts(smallest: int, num_classes: int, rho: float) -> list[int]:
    """Images class ``c`` keeps: ``int(smallest * rho^(-c / (C - 1)))`` (a 1e-9 guard so
    that e.g. 350 * 10^-1 is 35, not 34)."""
    return [int(smallest * rho ** (-c / (num_classes - 1)) + 1e-9) for c in range(num_classes)]


def long_tail(labels: Tensor, num_classes: int, rho: float, seed: int) -> Tensor:
    """Sorted indices of a long-tailed subsample of ``labels`` (see the module docstring);
    which images each class keeps is drawn from ``seed``.

    Raises:
        ValueError: ``rho`` < 1, a class without images, or one left with none.
    """
    if not rho >= 1:
        raise ValueError(f"the imbalance ratio must be >= 1, got {rho}")
    present = torch.bincount(labels, minlength=num_classes)
    smallest = int(present.min())
    keep = long_tail_counts(smallest, num_classes, rho)
    if keep[-1] < 1:
        raise ValueError(f"an imbalance of {rho:g} leaves class {num_classes - 1} without "
                         f"images: the smallest class has {smallest}, so at most {smallest} "
                         "here")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in enumerate(keep):
        members = (labels == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(chosen).sort().values
