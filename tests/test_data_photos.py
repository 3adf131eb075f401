"""Natural photographs from scikit-image's wheel: fixed disjoint splits, crops, noise, offline."""

import socket
import sys

import pytest
import torch

from losscli.data import photos
from losscli.data.photos import COLOUR_PHOTOS, PHOTO_SPLITS, load_photo, load_photos
from losscli.errors import UsageError

FAST = {"train_crops": 8}


@pytest.fixture(scope="module")
def grey():
    return load_photos(channels=1, **FAST)


@pytest.fixture(scope="module")
def colour():
    return load_photos(channels=3, **FAST)


def test_splits_are_disjoint_fixed_and_every_split_has_colour_photos():
    names = [n for split in PHOTO_SPLITS.values() for n in split]
    assert len(names) == len(set(names)) == 12
    assert PHOTO_SPLITS["test"] == ("astronaut", "rocket", "camera")
    for split in PHOTO_SPLITS.values():
        assert COLOUR_PHOTOS & set(split)


def test_photos_load_offline(monkeypatch):
    """Only files inside the wheel are used: no pooch download, no socket."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading photographs")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    photos._pixels.cache_clear()  # decode from the files now, not from an earlier test
    for name in (n for split in PHOTO_SPLITS.values() for n in split):
        photo = load_photo(name, 1)
        assert photo.shape[0] == 1 and min(photo.shape[1:]) >= 300


def test_grey_data_shapes_ranges_and_counts(grey):
    assert grey.photos == PHOTO_SPLITS
    assert grey.train_y.shape == grey.train_x.shape == (8, 1, 192, 192)
    # tiles cover each photograph: chelsea 300x451 -> 2x3, moon 512x512 -> 3x3
    assert grey.val_y.shape == (6 + 9, 1, 192, 192)
    # astronaut 512x512 -> 9, rocket 427x640 -> 12, camera 512x512 -> 9
    assert grey.test_y.shape == (30, 1, 192, 192)
    for clean in (grey.train_y, grey.val_y, grey.test_y):
        assert clean.dtype == torch.float32 and clean.min() >= 0 and clean.max() <= 1
    assert "train coffee, motorcycle" in grey.source and "30 tiles" in grey.source


def test_colour_uses_the_colour_photographs_of_each_split(colour):
    assert colour.photos == {"train": ("coffee", "motorcycle", "immunohistochemistry"),
                             "val": ("chelsea",), "test": ("astronaut", "rocket")}
    assert colour.train_x.shape[1:] == (3, 192, 192)
    assert colour.val_y.shape[0] == 6 and colour.test_y.shape[0] == 21


def test_tiles_are_exact_pieces_of_the_photographs(grey, colour):
    astronaut = load_photo("astronaut", 3)
    assert torch.equal(colour.test_y[0], astronaut[:, :192, :192])
    assert torch.equal(colour.test_y[8], astronaut[:, -192:, -192:])
    # grey is skimage's rgb2gray of the colour photograph
    from skimage.color import rgb2gray
    from skimage.data import astronaut as astronaut_uint8

    expected = torch.from_numpy(rgb2gray(astronaut_uint8())).float()[:192, :192]
    torch.testing.assert_close(grey.test_y[0, 0], expected, atol=1e-5, rtol=0)


def test_noise_has_sigma_and_comes_from_the_seed(grey):
    again = load_photos(channels=1, **FAST)
    other = load_photos(channels=1, seed=1, **FAST)
    for name in ("train_x", "train_y", "val_x", "test_x"):
        assert torch.equal(getattr(grey, name), getattr(again, name))
    assert not torch.equal(grey.train_y, other.train_y)  # other crops
    assert torch.equal(grey.test_y, other.test_y)  # the same tiles
    assert not torch.equal(grey.test_x, other.test_x)  # with other noise
    noise = torch.cat([(grey.train_x - grey.train_y).flatten(),
                       (grey.test_x - grey.test_y).flatten()])
    assert abs(noise.std().item() - 0.1) < 2e-3 and abs(noise.mean().item()) < 2e-3


def test_crops_work_with_five_scale_ms_ssim(colour):
    from losscli.losses.image import ms_ssim_loss

    value = ms_ssim_loss(colour.val_x.clamp(0, 1), colour.val_y)  # the paper's five scales
    assert torch.isfinite(value) and 0 < value < 1


def test_small_crops_say_that_ms_ssim_needs_fewer_scales():
    data = load_photos(crop_size=64, train_crops=4)
    assert data.train_y.shape == (4, 1, 64, 64)
    assert "MS-SSIM needs fewer than 5 scales" in data.source
    assert "MS-SSIM" not in load_photos(crop_size=161, train_crops=1).source


@pytest.mark.parametrize("kwargs, message", [
    ({"crop_size": 301}, "crop_size must be an integer in [11, 300], got 301"),
    ({"crop_size": 10}, "crop_size must be an integer in [11, 300]"),
    ({"crop_size": 192.0}, "crop_size must be an integer"),
    ({"channels": 2}, "channels must be 1 (grey) or 3 (colour), got 2"),
    ({"sigma": 0}, "sigma must be a number > 0, got 0"),
    ({"train_crops": 0}, "train_crops must be an integer >= 1"),
])
def test_bad_arguments_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_photos(**kwargs)


def test_unknown_or_grey_photo_names():
    with pytest.raises(UsageError, match="unknown photograph 'astronot'; did you mean "
                                         "'astronaut'"):
        load_photo("astronot")
    with pytest.raises(UsageError, match="photograph 'camera' is grey"):
        load_photo("camera", 3)


def test_missing_scikit_image_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setattr(photos, "_pixels", photos._pixels.__wrapped__)  # no cached photos
    with pytest.raises(UsageError, match=r'pip install "losscli\[data\]"'):
        load_photos(train_crops=1)
