"""Users' folders and CSVs: small fixtures written here, every bad layout a named UsageError."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from losscli.data.folders import (
    load_csv_classification,
    load_image_folder,
    load_mask_folder,
)
from losscli.errors import UsageError


def _image(path, size=(20, 16), colour=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    pixels = np.clip(np.array(colour) + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(path)


def _raises(message, fn, *args, **kwargs):
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- images


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "pets"
    for i in range(6):
        _image(root / "cat" / f"{i}.png", colour=(220, 40, 40))
        _image(root / "dog" / f"{i}.jpg", size=(30, 18), colour=(30, 40, 220))
    _image(root / "dog" / "more" / "6.bmp", colour=(30, 40, 220))  # nested: read too
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "cat" / ".hidden.txt").write_text("ignored")
    _image(root / ".ipynb_checkpoints" / "x.png")  # hidden folder: not a class
    return root


def test_image_folder_classes_shapes_and_stratified_split(image_root):
    d = load_image_folder(image_root, image_size=12, channels=3, val_fraction=0.2,
                          test_fraction=0.2)
    assert d.classes == ("cat", "dog")
    assert d.train_x.shape[1:] == (3, 12, 12) and d.train_x.dtype == torch.float32
    assert len(d.train_y) + len(d.val_y) + len(d.test_y) == 13
    for labels in (d.train_y, d.val_y, d.test_y):
        assert set(labels.tolist()) == {0, 1}
    # cats are red, dogs blue: the labels travel with their images
    red_minus_blue = d.train_x[:, 0].mean((1, 2)) - d.train_x[:, 2].mean((1, 2))
    assert ((red_minus_blue > 0) == (d.train_y == 0)).all()
    assert 0 <= d.train_x.min() and d.train_x.max() <= 1
    assert "2 classes" in d.source


def test_image_folder_grey_and_seeded(image_root):
    a = load_image_folder(image_root, image_size=8, channels=1)
    b = load_image_folder(image_root, image_size=8, channels=1)
    c = load_image_folder(image_root, image_size=8, channels=1, seed=1)
    assert a.train_x.shape[1] == 1
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_image_folder_bad_layouts(tmp_path, image_root):
    _raises(f"{tmp_path / 'nope'}: no such folder", load_image_folder, tmp_path / "nope")
    flat = tmp_path / "flat"
    _image(flat / "a.png")
    _raises(f"{flat}: no class folders; put each class's images in a subfolder",
            load_image_folder, flat)
    (image_root / "bird").mkdir()
    _raises(f"{image_root / 'bird'}: class folder without images", load_image_folder,
            image_root)


def test_image_folder_non_image_and_unreadable_files_are_named(image_root):
    (image_root / "dog" / "notes.txt").write_text("a dog")
    _raises(f"{image_root / 'dog' / 'notes.txt'}: not an image file; class folders may hold "
            "only images", load_image_folder, image_root)
    (image_root / "dog" / "notes.txt").unlink()
    (image_root / "cat" / "broken.png").write_bytes(b"not a png at all")
    _raises(f"{image_root / 'cat' / 'broken.png'}: cannot read it as an image",
            load_image_folder, image_root)
    good = (image_root / "dog" / "0.jpg").read_bytes()
    (image_root / "cat" / "broken.png").unlink()
    (image_root / "dog" / "cut.jpg").write_bytes(good[: len(good) // 2])
    _raises(f"{image_root / 'dog' / 'cut.jpg'}: cannot read it as an image",
            load_image_folder, image_root)


def test_image_folder_class_too_small_for_the_split(tmp_path):
    root = tmp_path / "few"
    for i in range(5):
        _image(root / "a" / f"{i}.png")
    for i in range(2):
        _image(root / "b" / f"{i}.png")
    _raises(f"{root}: class 'b' has 2 images; a split into train, validation and test needs "
            "at least 3", load_image_folder, root)
    d = load_image_folder(root, image_size=4, val_fraction=0)  # train and test only
    assert len(d.val_y) == 0 and set(d.test_y.tolist()) == {0, 1}


def test_image_folder_bad_arguments(image_root):
    _raises("channels must be 1 (grey) or 3 (RGB), got 4", load_image_folder, image_root,
            channels=4)
    _raises("image_size must be an integer >= 1, got 0", load_image_folder, image_root,
            image_size=0)


# --------------------------------------------------------------------------- masks


def _mask(path, array, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).convert(mode).save(path)


def _class_mask(i, size=(20, 16)):
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[2:8, 3:9] = 1 + i % 2
    return mask


@pytest.fixture
def mask_root(tmp_path):
    root = tmp_path / "seg"
    for i in range(8):
        _image(root / "images" / f"s{i}.png")
        _mask(root / "masks" / f"s{i}.png", _class_mask(i))
    return root


def test_masks_pairs_shapes_and_split(mask_root):
    d = load_mask_folder(mask_root, val_fraction=0.25, test_fraction=0.25)
    assert d.train_x.shape == (4, 3, 16, 20) and d.train_y.shape == (4, 16, 20)
    assert d.train_y.dtype == torch.int64 and d.num_classes == 3
    stems = d.stems["train"] + d.stems["val"] + d.stems["test"]
    assert sorted(stems) == [f"s{i}" for i in range(8)]
    for stem, mask in zip(d.stems["test"], d.test_y, strict=True):  # masks follow images
        assert torch.equal(mask, torch.from_numpy(_class_mask(int(stem[1:]))).long())
    resized = load_mask_folder(mask_root, image_size=10, channels=1)
    assert resized.train_x.shape[1:] == (1, 10, 10) and resized.train_y.shape[1:] == (10, 10)
    assert set(torch.unique(resized.train_y).tolist()) <= {0, 1, 2}  # nearest, no blends


def test_masks_palette_and_binary_modes(tmp_path):
    palette = tmp_path / "palette"
    for i in range(3):
        _image(palette / "images" / f"{i}.jpg")
        _mask(palette / "masks" / f"{i}.png", _class_mask(i), mode="P")
    assert load_mask_folder(palette, val_fraction=0).num_classes == 3
    binary = tmp_path / "binary"
    for i in range(3):
        _image(binary / "images" / f"{i}.png")
        _mask(binary / "masks" / f"{i}.png", _class_mask(0) * 255, mode="1")
    assert load_mask_folder(binary, val_fraction=0).num_classes == 2


def test_masks_missing_folders_and_unmatched_files(tmp_path, mask_root):
    _raises(f"{tmp_path / 'none'}: no such folder", load_mask_folder, tmp_path / "none")
    (tmp_path / "half" / "images").mkdir(parents=True)
    _raises(f"{tmp_path / 'half' / 'masks'}: no such folder; a mask dataset is ROOT/images/",
            load_mask_folder, tmp_path / "half")
    _image(mask_root / "images" / "lonely.jpg")
    _raises(f"{mask_root / 'images' / 'lonely.jpg'}: image without a mask; expected "
            f"{mask_root / 'masks' / 'lonely.png'}", load_mask_folder, mask_root)
    _mask(mask_root / "masks" / "lonely.jpg", _class_mask(0))
    _raises(f"{mask_root / 'masks' / 'lonely.jpg'}: masks must be PNG files",
            load_mask_folder, mask_root)
    (mask_root / "masks" / "lonely.jpg").unlink()
    (mask_root / "images" / "lonely.jpg").unlink()
    _mask(mask_root / "masks" / "orphan.png", _class_mask(0))
    _raises(f"{mask_root / 'masks' / 'orphan.png'}: mask without an image", load_mask_folder,
            mask_root)


def test_masks_size_mismatch_and_mixed_sizes_are_named(mask_root):
    _mask(mask_root / "masks" / "s3.png", np.zeros((16, 21)))
    _raises(f"{mask_root / 'masks' / 's3.png'}: mask is 21x16 but its image s3.png is "
            "20x16", load_mask_folder, mask_root)
    _mask(mask_root / "masks" / "s3.png", np.zeros((10, 10)))
    _image(mask_root / "images" / "s3.png", size=(10, 10))
    _raises(f"{mask_root / 'images' / 's3.png'}: 10x10, but s0.png is 20x16; images must "
            "share one size, or pass image_size", load_mask_folder, mask_root)
    assert load_mask_folder(mask_root, image_size=8).train_x.shape[-2:] == (8, 8)


@pytest.mark.parametrize("mode, kind", [("RGB", "3 channels"), ("LA", "2 channels")])
def test_masks_must_be_single_channel_integers(mask_root, mode, kind):
    _mask(mask_root / "masks" / "s5.png", _class_mask(5), mode=mode)
    _raises(f"{mask_root / 'masks' / 's5.png'}: mask has mode {mode} ({kind}); masks must be "
            "single-channel integer class indices", load_mask_folder, mask_root)


def test_masks_class_indices(tmp_path, mask_root):
    _raises("a mask holds class index 2, but num_classes is 2", load_mask_folder, mask_root,
            num_classes=2)
    assert load_mask_folder(mask_root, num_classes=5).num_classes == 5
    white = tmp_path / "white"
    for i in range(3):
        _image(white / "images" / f"{i}.png")
        _mask(white / "masks" / f"{i}.png", (_class_mask(0) > 0) * 255)
    _raises("the masks hold the values 0, 255; without num_classes they must use every class "
            "index 0..K-1", load_mask_folder, white)


def test_masks_stray_files(mask_root):
    (mask_root / "images" / "readme.txt").write_text("x")
    _raises(f"{mask_root / 'images' / 'readme.txt'}: not an image file; images/ may hold "
            "only images", load_mask_folder, mask_root)
    (mask_root / "images" / "readme.txt").unlink()
    _image(mask_root / "images" / "s1.jpg")
    _raises("two images with one stem", load_mask_folder, mask_root)


# --------------------------------------------------------------------------- table


def _csv(path, rows=30, classes=("setosa", "versicolor", "virginica")):
    rng = np.random.default_rng(0)
    lines = ["width,height,depth,species"]
    for i in range(rows):
        k = i % len(classes)
        w, h, d = rng.normal(k, 0.3, 3)
        lines.append(f"{w:.3f},{h:.3f},{d:.3f},{classes[k]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _edit_cell(path, row, column, value):
    lines = path.read_text().splitlines()
    cells = lines[row].split(",")
    cells[column] = value
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_csv_classification_split_and_standardisation(tmp_path):
    d = load_csv_classification(_csv(tmp_path / "iris.csv"), "species")
    assert d.classes == ("setosa", "versicolor", "virginica")
    assert d.feature_names == ("width", "height", "depth")
    assert len(d.train_y) + len(d.val_y) + len(d.test_y) == 30
    for labels in (d.train_y, d.val_y, d.test_y):
        assert set(labels.tolist()) == {0, 1, 2}
    assert abs(d.train_x.mean(0)).max() < 1e-5 and abs(d.train_x.std(0) - 1).max() < 1e-5
    # the features still predict the class (labels stayed with their rows)
    assert torch.corrcoef(torch.stack([d.train_x[:, 0], d.train_y.float()]))[0, 1] > 0.8
    sub = load_csv_classification(tmp_path / "iris.csv", "species", features=["depth"])
    assert sub.train_x.shape[1] == 1


def test_csv_numeric_labels_sort_as_numbers(tmp_path):
    path = _csv(tmp_path / "n.csv", rows=33, classes=(10, 2, 1))
    assert load_csv_classification(path, "species").classes == ("1", "2", "10")


def test_csv_bad_columns_name_close_matches(tmp_path):
    path = _csv(tmp_path / "iris.csv")
    _raises(f"unknown column 'specie' in {path}; did you mean 'species'?",
            load_csv_classification, path, "specie")
    _raises(f"unknown column 'hieght' in {path}; did you mean 'height'?",
            load_csv_classification, path, "species", features=["width", "hieght"])
    _raises(f"{tmp_path / 'missing.csv'}: no such file", load_csv_classification,
            tmp_path / "missing.csv", "species")


@pytest.mark.parametrize("value, problem", [
    ("abc", "column 'height', row 4 (file line 5) ('abc') is not a number"),
    ("", "column 'height', row 4 (file line 5) is empty or NaN"),
    ("NaN", "column 'height', row 4 (file line 5) is empty or NaN"),
    ("inf", "column 'height', row 4 (file line 5) is infinite"),
])
def test_csv_bad_feature_cells_are_named(tmp_path, value, problem):
    path = _csv(tmp_path / "iris.csv")
    _edit_cell(path, 5 - 1, 1, value)
    _raises(f"{path}: {problem}; feature cells must be finite numbers", load_csv_classification,
            path, "species")


def test_csv_bad_labels(tmp_path):
    one = _csv(tmp_path / "one.csv", classes=("only",))
    _raises("target column 'species' holds 1 class (only); classification needs at least 2",
            load_csv_classification, one, "species")
    few = _csv(tmp_path / "few.csv", rows=20)
    _edit_cell(few, 20, 3, "rare")  # the last row's class becomes a class of one
    _edit_cell(few, 19, 3, "rare")
    _raises(f"{few}: class 'rare' has 2 rows; a split into train, validation and test needs "
            "at least 3", load_csv_classification, few, "species")
    _edit_cell(few, 19, 3, "")
    _raises("target column 'species', row 19 (file line 20) is empty", load_csv_classification,
            few, "species")
