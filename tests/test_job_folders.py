"""The folder jobs (images, masks, table) end to end on small generated fixtures, and their
bad layouts: exit 2, no traceback, a message naming the file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from folder_fixtures import write_class_csv, write_image_folder, write_mask_folder
from PIL import Image
from typer.testing import CliRunner

from losscli.cli import app
from losscli.jobs import create_job
from losscli.jobs.contract import check_learns

runner = CliRunner()
FAST = ["--steps", "12", "--eval-every", "6", "--quiet", "--device", "cpu"]


def _train(tmp_path, task: str, *args: str):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--task", task, *args, *FAST, "--out", str(out)])
    return res, out


def _ok(tmp_path, task: str, *args: str) -> pd.DataFrame:
    res, out = _train(tmp_path, task, *args)
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["status"]) == {"ok"} and set(runs["job"]) == {task}
    return runs


def _usage(tmp_path, task: str, *args: str, names: tuple[str, ...]) -> str:
    res, _ = _train(tmp_path, task, "--loss", "ce", *args)
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for part in names:
        assert part in text, text
    return text


# --------------------------------------------------------------------------- images


def test_images_trains_end_to_end(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=("cat", "dog", "owl"))
    runs = _ok(tmp_path, "images", "--data-dir", str(root), "--image-size", "8", "--loss",
               "ce", "--loss", "focal:gamma=2")
    assert len(runs) == 2 and (runs["primary_metric"] == "accuracy").all()
    assert "3 classes" in runs["data_source"].iloc[0]
    assert json.loads(runs["job_options"].iloc[0])["image_size"] == "8"
    assert runs["test_final"].between(0, 1).all()


def test_images_grey_resnet18_from_scratch(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    job = create_job("images", data_dir=str(root), model="resnet18", channels=1,
                     image_size=16)
    assert not job.vectorisable  # BatchNorm's running statistics
    data = job.load_data()
    model = job.build_model(data)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 2
    check_learns(job, data, steps=3, batch_size=8)


def test_images_bad_layouts(tmp_path):
    _usage(tmp_path, "images", names=("images needs --data-dir",))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "a.png")
    _usage(tmp_path, "images", "--data-dir", str(flat), names=(str(flat), "no class folders"))
    root = write_image_folder(tmp_path / "pets")
    (root / "dog" / "notes.txt").write_text("not an image")
    _usage(tmp_path, "images", "--data-dir", str(root),
           names=(str(root / "dog" / "notes.txt"), "not an image file"))
    (root / "dog" / "notes.txt").unlink()
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG truncated")
    _usage(tmp_path, "images", "--data-dir", str(root),
           names=(str(root / "cat" / "broken.png"), "cannot read it as an image"))
    _usage(tmp_path, "images", "--data-dir", str(tmp_path / "nope"),
           names=(str(tmp_path / "nope"), "no such folder"))
    _usage(tmp_path, "images", "--data-dir", str(root), "--channels", "2",
           names=("--channels must be 1 (grey) or 3 (RGB), got 2",))


# --------------------------------------------------------------------------- masks


def test_masks_trains_end_to_end(tmp_path):
    root = write_mask_folder(tmp_path / "seg")
    runs = _ok(tmp_path, "masks", "--data-dir", str(root), "--loss", "ce", "--loss", "dice",
               "--batch-size", "4")
    assert (runs["primary_metric"] == "miou").all() and runs["test_final"].between(0, 1).all()
    assert "3 classes" in runs["data_source"].iloc[0]
    metrics = json.loads(runs["test_metrics"].iloc[0])
    assert set(metrics) == {"miou", "dice", "pixel_acc"}


def test_masks_resized_and_grey(tmp_path):
    root = write_mask_folder(tmp_path / "seg", size=18)  # 18: not a multiple of 4
    _usage(tmp_path, "masks", "--data-dir", str(root),
           names=(str(root / "images"), "18x18", "--image-size"))
    data = create_job("masks", data_dir=str(root), image_size=12, channels=1).load_data()
    assert data.train.x.shape[1:] == (1, 12, 12) and data.train.y.shape[1:] == (12, 12)


def test_masks_bad_layouts(tmp_path):
    root = write_mask_folder(tmp_path / "seg")
    _usage(tmp_path, "masks", "--data-dir", str(tmp_path), names=(str(tmp_path / "images"),
                                                                  "no such folder"))
    (root / "masks" / "3.png").rename(root / "masks" / "33.png")
    _usage(tmp_path, "masks", "--data-dir", str(root),
           names=(str(root / "masks" / "33.png"), "mask without an image"))
    (root / "masks" / "33.png").rename(root / "masks" / "3.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "4.png")
    _usage(tmp_path, "masks", "--data-dir", str(root),
           names=(str(root / "masks" / "4.png"), "mask is 8x8 but its image 4.png is 16x16"))
    Image.new("RGB", (16, 16)).save(root / "masks" / "4.png")
    _usage(tmp_path, "masks", "--data-dir", str(root),
           names=(str(root / "masks" / "4.png"), "single-channel integer class indices"))
    (root / "masks" / "4.png").unlink()
    Image.new("L", (16, 16)).save(root / "masks" / "4.jpg")
    _usage(tmp_path, "masks", "--data-dir", str(root),
           names=(str(root / "masks" / "4.jpg"), "masks must be PNG"))


# --------------------------------------------------------------------------- table


def test_table_trains_end_to_end(tmp_path):
    csv = write_class_csv(tmp_path / "t.csv")
    runs = _ok(tmp_path, "table", "--csv", str(csv), "--target", "kind", "--loss", "ce",
               "--loss", "label_smoothing:epsilon=0.1", "--features", "a, b")
    assert "3 classes in 'kind'" in runs["data_source"].iloc[0]
    assert "2 features" in runs["data_source"].iloc[0]


def test_table_bad_inputs(tmp_path):
    csv = write_class_csv(tmp_path / "t.csv")
    _usage(tmp_path, "table", "--target", "kind", names=("table needs --csv",))
    _usage(tmp_path, "table", "--csv", str(csv), names=("table needs --target",))
    _usage(tmp_path, "table", "--csv", str(tmp_path / "no.csv"), "--target", "kind",
           names=(str(tmp_path / "no.csv"), "no such file"))
    _usage(tmp_path, "table", "--csv", str(csv), "--target", "knd",
           names=("unknown column 'knd'", str(csv), "did you mean 'kind'"))
    table = pd.read_csv(csv).astype({"b": object})
    table.loc[5, "b"] = "oops"
    table.to_csv(csv, index=False)
    _usage(tmp_path, "table", "--csv", str(csv), "--target", "kind",
           names=(str(csv), "column 'b', row 6 (file line 7) ('oops') is not a number"))
    _usage(tmp_path, "table", "--csv", str(csv), "--target", "kind", "--val-fraction", "0.5",
           "--test-fraction", "0.5", names=("val_fraction + test_fraction must be < 1",))


@pytest.mark.parametrize("task", ["images", "masks", "table"])
def test_folder_jobs_list_their_options(task):
    res = runner.invoke(app, ["list", "tasks", task])
    assert res.exit_code == 0, res.output
    assert "--val-fraction" in res.output and "--data-seed" in res.output
