"""Small users' datasets written by the tests: an ImageFolder, an images/ + masks/ pair, a
classification CSV. Classes differ in colour or in their features, so a model can learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"cat": (220, 40, 40), "dog": (30, 40, 220), "owl": (40, 200, 40)}


def write_image_folder(root: Path, per_class: int = 8, classes=("cat", "dog")) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.array(COLOURS[name]) + rng.normal(0, 30, (12, 14, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def write_mask_folder(root: Path, n: int = 10, size: int = 16) -> Path:
    """Bright squares of class 1 or 2 on a dark background (class 0), ``n`` pairs."""
    rng = np.random.default_rng(1)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        mask[y:y + size // 2, x:x + size // 2] = 1 + i % 2
        pixels = mask[..., None] * 90 + rng.normal(30, 10, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def write_class_csv(path: Path, n: int = 90) -> Path:
    import pandas as pd

    rng = np.random.default_rng(2)
    label = rng.integers(0, 3, n)
    table = pd.DataFrame(rng.normal(0, 1, (n, 3)) + label[:, None], columns=["a", "b", "c"])
    table["kind"] = np.array(["x", "y", "z"])[label]
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path
