"""Users' own data from folders and tables: image classification, segmentation, a CSV.

Each reader checks the layout before it decodes anything it need not, and refuses a bad
one with a ``UsageError`` that names the file or folder and the rule it breaks. Hidden
files and folders (names starting with ``.``, such as ``.DS_Store`` or
``.ipynb_checkpoints``) are ignored everywhere. Every split is seeded (``seed``) and
fixed by it; sizes are ``round(fraction * n)`` with at least one item per split (see
``losscli.data.splits``).

- ``load_image_folder``: an ImageFolder layout (``ROOT/<class>/<image>``, read through
  ``torchvision.datasets.ImageFolder``), every image resized to ``image_size`` square
  (aspect ratio not kept, as the VOC reader does), grey or RGB; the split is stratified.
- ``load_mask_folder``: ``ROOT/images/<stem>.<ext>`` with ``ROOT/masks/<stem>.png``, the
  masks single-channel class indices ``0..K-1``.
- ``load_csv_classification``: a CSV with a column of class labels and numeric feature
  columns; features standardised with the training rows' statistics; stratified split.

Images come back as float32 in [0, 1] (4 bytes per pixel and channel), labels and masks
as int64.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from losscli.data.splits import (
    SplitTensors,
    check_channels,
    check_int,
    split_indices,
    split_sizes,
    standardise,
    stratified_split_indices,
    take,
)
from losscli.errors import UnknownNameError, UsageError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderData", "MaskFolderData", "TableClassData",
           "load_csv_classification", "load_image_folder", "load_mask_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")  # single-channel integer


@dataclass
class ImageFolderData(SplitTensors):
    """Images float32 ``[N, C, S, S]`` in [0, 1], labels int64 ``[N]`` (index into
    ``classes``, the sorted class folder names)."""

    classes: tuple[str, ...]
    source: str


@dataclass
class MaskFolderData(SplitTensors):
    """Images float32 ``[N, C, H, W]`` in [0, 1], masks int64 ``[N, H, W]`` in
    ``0..num_classes-1``; ``stems`` the file stems of each split, in tensor order."""

    num_classes: int
    stems: dict[str, tuple[str, ...]]
    source: str


@dataclass
class TableClassData(SplitTensors):
    """Standardised float32 features ``[N, D]``, labels int64 ``[N]`` (index into
    ``classes``)."""

    classes: tuple[str, ...]
    feature_names: tuple[str, ...]
    source: str


# --------------------------------------------------------------------------- shared


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _not_an_image(path: Path, where: str) -> UsageError:
    return UsageError(f"{path}: not an image file; {where} may hold only images "
                      f"({', '.join(IMAGE_EXTENSIONS)}) and hidden files")


def _open(path: Path, mode: str | None, size: tuple[int, int] | None,
          resample: int = Image.BILINEAR) -> Image.Image:
    """Decode ``path`` fully (converted to ``mode``, resized to ``size`` (W, H) if given)."""
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here, not later
            out = img.convert(mode) if mode and img.mode != mode else img.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{path}: cannot read it as an image ({exc})") from None
    return out.resize(size, resample) if size and out.size != size else out


def _to_tensor(img: Image.Image) -> Tensor:
    """PIL ``L`` / ``RGB`` image to float32 ``[C, H, W]`` in [0, 1]."""
    array = np.asarray(img, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def _channels_mode(channels: int) -> str:
    check_channels(channels, "RGB")
    return "L" if channels == 1 else "RGB"


def _folder(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UsageError(f"{path}: no such folder ({what})")
    return path


# --------------------------------------------------------------------------- images


def _image_folder(root: Path, mode: str, image_size: int):
    """``torchvision.datasets.ImageFolder`` over ``root``, hidden entries skipped; refuses
    no class folders, a non-image file and a class without images."""
    from torchvision.datasets import ImageFolder

    class _Folder(ImageFolder):
        def find_classes(self, directory):
            classes = sorted(e.name for e in os.scandir(directory)
                             if e.is_dir() and not e.name.startswith("."))
            if not classes:
                raise UsageError(f"{root}: no class folders; put each class's images in a "
                                 "subfolder named after the class (ROOT/cat/1.jpg, "
                                 "ROOT/dog/2.jpg)")
            return classes, {c: i for i, c in enumerate(classes)}

    others: list[Path] = []

    def is_image(name: str) -> bool:
        path = Path(name)
        if _hidden(path, root):
            return False
        if not _is_image_name(path):
            others.append(path)
        return _is_image_name(path)

    def loader(name: str) -> Image.Image:
        return _open(Path(name), mode, (image_size, image_size))

    ds = _Folder(str(root), loader=loader, is_valid_file=is_image, allow_empty=True)
    if others:
        raise _not_an_image(others[0], "class folders")
    counts = torch.bincount(torch.tensor(ds.targets, dtype=torch.long),
                            minlength=len(ds.classes))
    empty = [c for c, n in zip(ds.classes, counts.tolist(), strict=True) if n == 0]
    if empty:
        raise UsageError(f"{root / empty[0]}: class folder without images; every class "
                         f"folder needs at least one image ({', '.join(IMAGE_EXTENSIONS)})")
    return ds


def load_image_folder(
    root: str | Path,
    *,
    image_size: int = 64,
    channels: int = 3,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> ImageFolderData:
    """Image classification data from an ImageFolder-layout directory.

    Args:
        root: a folder with one subfolder per class holding that class's images
            (subfolders inside a class folder are read too).
        image_size: side ``S`` every image is resized to (bilinear, antialiased).
        channels: 1 (grey) or 3 (RGB); images are converted.
        val_fraction, test_fraction: per-class shares; every class needs an image in
            every split (3 images with a validation split, 2 without).
        seed: seed of the stratified split.

    Raises:
        UsageError: a missing folder, no class folders, a non-image or unreadable file, a
            class without images or with too few for the split, or a bad argument.
    """
    mode = _channels_mode(channels)
    check_int("image_size", image_size, 1)
    root = _folder(root, "an ImageFolder layout: ROOT/<class>/<images>")
    ds = _image_folder(root, mode, image_size)
    labels = torch.tensor(ds.targets, dtype=torch.long)
    split = stratified_split_indices(
        labels, val_fraction=val_fraction, test_fraction=test_fraction,
        gen=torch.Generator().manual_seed(seed), class_names=ds.classes, what=str(root),
        unit="images")
    images = torch.stack([_to_tensor(ds[i][0]) for i in range(len(ds))])
    source = (f"image folder {root}: {len(ds.classes)} classes, "
              f"{split_sizes(split, 'images')} ({mode}, {image_size} px), "
              f"stratified split seed {seed}")
    return ImageFolderData(*take(split, images, labels), classes=tuple(ds.classes),
                           source=source)


# --------------------------------------------------------------------------- masks


def _listing(folder: Path, root: Path) -> list[Path]:
    """Visible files directly in ``folder``; a visible subfolder is refused."""
    out = []
    for path in sorted(folder.iterdir()):
        if _hidden(path, root):
            continue
        if path.is_dir():
            raise UsageError(f"{path}: a folder inside {folder.name}/; images/ and masks/ "
                             "hold files only (one image and one mask per stem)")
        out.append(path)
    return out


def _pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by file stem; refuses anything unmatched."""
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such folder; a mask dataset is ROOT/images/"
                             "<stem>.<ext> with ROOT/masks/<stem>.png")
    images, masks = _listing(images_dir, root), _listing(masks_dir, root)
    by_stem: dict[str, Path] = {}
    for path in images:
        if not _is_image_name(path):
            raise _not_an_image(path, "images/")
        if path.stem in by_stem:
            raise UsageError(f"{by_stem[path.stem]} and {path}: two images with one stem; "
                             "each stem needs exactly one image and one mask")
        by_stem[path.stem] = path
    if not by_stem:
        raise UsageError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    mask_of = {p.stem: p for p in masks if p.suffix.lower() == ".png"}
    for path in masks:
        if path.suffix.lower() != ".png":
            raise UsageError(f"{path}: masks must be PNG files named <image stem>.png (PNG "
                             "is lossless; JPEG would change the class indices)")
        if path.stem not in by_stem:
            raise UsageError(f"{path}: mask without an image; expected images/{path.stem}"
                             f".<ext> ({', '.join(IMAGE_EXTENSIONS)})")
    for stem, path in by_stem.items():
        if stem not in mask_of:
            raise UsageError(f"{path}: image without a mask; expected {masks_dir / stem}.png")
    return [(path, mask_of[stem]) for stem, path in by_stem.items()]


def _read_mask(path: Path) -> np.ndarray:
    """A mask's class indices, int64 ``[H, W]``; refuses colour, float and negative masks."""
    try:
        with Image.open(path) as img:
            img.load()
            mode, bands, array = img.mode, len(img.getbands()), np.asarray(img)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read it as a PNG mask ({exc})") from None
    if mode not in _MASK_MODES:
        kind = f"{bands} channels" if bands > 1 else "floating point"
        raise UsageError(f"{path}: mask has mode {mode} ({kind}); masks must be single-channel"
                         " integer class indices (PNG mode L, P, I or 1: 0 = background, "
                         "1..K-1 = classes)")
    array = array.astype(np.int64)
    if array.min() < 0:
        raise UsageError(f"{path}: mask holds negative values ({array.min()}); class indices "
                         "are 0..K-1")
    return array


def _decode_pairs(pairs: list[tuple[Path, Path]], mode: str,
                  image_size: int | None) -> tuple[Tensor, Tensor]:
    images, masks, first = [], [], None
    for image_path, mask_path in pairs:
        image = _open(image_path, mode, None)
        mask = _read_mask(mask_path)
        if mask.shape != (image.height, image.width):
            raise UsageError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its "
                             f"image {image_path.name} is {image.width}x{image.height}; a "
                             "mask must have its image's size")
        if image_size is not None:
            size = (image_size, image_size)
            image = image.resize(size, Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(size,
                                                                             Image.NEAREST))
        elif first is None:
            first = (image_path, image.size)
        elif image.size != first[1]:
            raise UsageError(f"{image_path}: {image.width}x{image.height}, but "
                             f"{first[0].name} is {first[1][0]}x{first[1][1]}; images must "
                             "share one size, or pass image_size to resize them")
        images.append(_to_tensor(image))
        masks.append(torch.from_numpy(np.asarray(mask, dtype=np.int64)))
    return torch.stack(images), torch.stack(masks)


def _classes_in(masks: Tensor, root: Path, num_classes: int | None) -> int:
    """``num_classes`` checked against the masks, or inferred from them."""
    values = torch.unique(masks).tolist()
    if num_classes is not None:
        check_int("num_classes", num_classes, 2)
        if values[-1] >= num_classes:
            raise UsageError(f"{root / 'masks'}: a mask holds class index {values[-1]}, but "
                             f"num_classes is {num_classes} (indices 0..{num_classes - 1})")
        return num_classes
    if values != list(range(len(values))) or len(values) < 2:
        shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
        raise UsageError(f"{root / 'masks'}: the masks hold the values {shown}; without "
                         "num_classes they must use every class index 0..K-1 with K >= 2 "
                         "(binary masks saved as 0/255 must be saved as 0/1); pass "
                         "num_classes=K if some class is absent")
    return len(values)


def load_mask_folder(
    root: str | Path,
    *,
    image_size: int | None = None,
    channels: int = 3,
    num_classes: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> MaskFolderData:
    """Segmentation data from ``ROOT/images/`` and ``ROOT/masks/`` (PNG class indices).

    Args:
        root: the folder holding ``images/`` (any of ``IMAGE_EXTENSIONS``) and ``masks/``
            (``<image stem>.png``, mode L, P, I or 1, each the size of its image).
        image_size: resize every pair to this square side (image bilinear, mask nearest);
            ``None`` keeps the size, which all images must then share.
        channels: 1 (grey) or 3 (RGB).
        num_classes: ``K``; ``None`` infers it as the largest index + 1 and then requires
            every index ``0..K-1`` to occur.
        val_fraction, test_fraction, seed: the seeded random split of the pairs.

    Raises:
        UsageError: a missing folder, an image without a mask (or the reverse), a non-PNG
            or non-integer or multi-channel mask, a size mismatch, or a bad argument.
    """
    mode = _channels_mode(channels)
    if image_size is not None:
        check_int("image_size", image_size, 1)
    root = _folder(root, "a mask dataset: ROOT/images/ and ROOT/masks/")
    pairs = _pairs(root)
    split = split_indices(len(pairs), val_fraction=val_fraction, test_fraction=test_fraction,
                          gen=torch.Generator().manual_seed(seed), least=1, what=str(root),
                          unit="image/mask pairs")
    images, masks = _decode_pairs(pairs, mode, image_size)
    k = _classes_in(masks, root, num_classes)
    stems = {name: tuple(pairs[i][0].stem for i in idx.tolist())
             for name, idx in zip(("train", "val", "test"), split, strict=True)}
    h, w = images.shape[-2:]
    source = (f"mask folder {root}: {split_sizes(split, 'pairs')} ({mode}, {w}x{h}), "
              f"{k} classes, split seed {seed}")
    return MaskFolderData(*take(split, images, masks), num_classes=k, stems=stems,
                          source=source)


# --------------------------------------------------------------------------- table


def _read_csv(path: Path):
    import pandas as pd

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return pd.read_csv(path)
    except (ValueError, OSError) as exc:  # pandas' ParserError/EmptyDataError are ValueErrors
        raise UsageError(f"{path}: cannot read it as CSV ({exc})") from None


def _row(i: int) -> str:
    return f"row {i + 1} (file line {i + 2})"


def _numeric(table, column: str, path: Path) -> np.ndarray:
    """A feature column as float64; refuses text, empty/NaN and infinite cells."""
    import pandas as pd

    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    for bad, what in ((np.isnan(values) & raw.notna().to_numpy(), "is not a number"),
                      (raw.isna().to_numpy(), "is empty or NaN"),
                      (np.isinf(values), "is infinite")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            shown = f" ({raw.iloc[i]!r})" if what == "is not a number" else ""
            raise UsageError(f"{path}: column {column!r}, {_row(i)}{shown} {what}; feature "
                             "cells must be finite numbers (drop the column with features=[...]"
                             " or fix the row)")
    return values


def _labels(table, column: str, path: Path) -> tuple[Tensor, tuple[str, ...]]:
    """Class indices ``[N]`` and class names (numbers sorted as numbers, else as text)."""
    import pandas as pd

    raw = table[column]
    if raw.isna().any():
        i = int(np.flatnonzero(raw.isna().to_numpy())[0])
        raise UsageError(f"{path}: target column {column!r}, {_row(i)} is empty; every row "
                         "needs a class label")
    numeric = pd.api.types.is_numeric_dtype(raw)
    values = sorted(raw.unique()) if numeric else sorted(raw.astype(str).unique())
    names = tuple(str(int(v)) if numeric and float(v).is_integer() else str(v) for v in values)
    if len(names) < 2:
        raise UsageError(f"{path}: target column {column!r} holds {len(names)} class "
                         f"({', '.join(names)}); classification needs at least 2")
    index = {v: k for k, v in enumerate(values)}
    keys = raw if numeric else raw.astype(str)
    return torch.tensor([index[v] for v in keys], dtype=torch.long), names


def load_csv_classification(
    path: str | Path,
    target_column: str,
    *,
    features: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> TableClassData:
    """Tabular classification from a CSV (header row; one row per sample).

    Unlike ``load_csv_regression``, which drops incomplete rows and skips text columns,
    bad cells are refused here: a classifier's classes must not silently lose rows.

    Args:
        path: the CSV file.
        target_column: the column of class labels (text or integers).
        features: the feature columns; default every column but the target.
        val_fraction, test_fraction: per-class shares (stratified; every class needs a
            row in every split).
        seed: seed of the split.

    Raises:
        UsageError: a missing file or column (with close matches), a non-numeric, empty or
            infinite feature cell (column and row named), an empty label, fewer than 2
            classes, or a class with too few rows for the split.
    """
    path = Path(path)
    table = _read_csv(path)
    columns = [str(c) for c in table.columns]
    table.columns = columns
    names = list(features) if features is not None else [c for c in columns
                                                          if c != target_column]
    for column in (target_column, *names):
        if column not in columns:
            raise UnknownNameError("column", column, columns, where=f" in {path}")
    if target_column in names:
        raise UsageError(f"{target_column!r} is the target column; it cannot be a feature too")
    if not names:
        raise UsageError(f"{path}: no feature column besides the target {target_column!r}")
    x = torch.tensor(np.stack([_numeric(table, c, path) for c in names], axis=1),
                     dtype=torch.float32)
    y, classes = _labels(table, target_column, path)
    split = stratified_split_indices(
        y, val_fraction=val_fraction, test_fraction=test_fraction,
        gen=torch.Generator().manual_seed(seed), class_names=classes, what=str(path))
    source = (f"{path.name}: {split_sizes(split, 'rows')}, {len(names)} features, "
              f"{len(classes)} classes in {target_column!r}, stratified split seed {seed}")
    return TableClassData(*take(split, standardise(x, split[0])[0], y), classes=classes,
                          feature_names=tuple(names), source=source)
