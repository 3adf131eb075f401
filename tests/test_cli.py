import json
import os
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from losscli.cli import app
from losscli.results import HISTORY_COLUMNS, RUN_COLUMNS

runner = CliRunner()
TINY = ["--steps", "20", "--batch-size", "64", "--eval-every", "10", "--quiet"]


def invoke(*args):
    return runner.invoke(app, list(args))


def test_help_lists_commands():
    res = invoke("--help")
    assert res.exit_code == 0 and "train" in res.output and "list" in res.output


def test_list_tasks_and_losses():
    res = invoke("list", "tasks")
    assert res.exit_code == 0 and "mnist" in res.output and "fashion" in res.output
    res = invoke("list", "losses", "--task", "mnist")
    assert res.exit_code == 0 and "focal" in res.output and "mse" not in res.output


def test_train_mnist_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = invoke("train", "--task", "mnist", "--loss", "ce", "--loss", "focal:gamma=2",
                 "--seeds", "2", "--device", "cpu", "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert tuple(runs.columns) == RUN_COLUMNS
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    assert set(runs["loss"]) == {"ce", "focal:gamma=2"} and set(runs["seed"]) == {0, 1}
    assert runs["run_key"].is_unique
    assert (runs["test_final"] > 0.3).all()  # 20 steps already beat chance (0.1)
    assert (runs["samples_per_s"] > 0).all() and (runs["loss_ms_per_step"] > 0).all()
    assert runs["versions"].str.contains("torch=").all()
    history = pd.read_csv(out / "history.csv")
    assert tuple(history.columns) == HISTORY_COLUMNS
    assert set(history["split"]) == {"train", "val", "test", "test_bins"}
    assert {"accuracy", "f1_macro", "ece", "nll", "loss"} <= set(history["metric"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["jobs"] == ["mnist"] and "torch=" in meta["versions"]
    assert "embedded" in meta["data_sources"]["mnist"]
    assert "focal:gamma=2" in res.output  # the table


def test_csv_and_json_formats(tmp_path):
    res = invoke("train", "--loss", "ce", "--out", str(tmp_path / "a"), "--format", "csv", *TINY)
    assert res.exit_code == 0, res.output
    first = res.stdout.splitlines()[0].split(",")
    assert first[:4] == ["rank", "job", "variant", "loss"] and "final_mean" in first
    res = invoke("train", "--loss", "ce", "--out", str(tmp_path / "b"), "--format", "json",
                 *TINY)
    assert json.loads(res.stdout)[0]["loss"] == "ce"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--loss", "nope"], "unknown loss 'nope'"),
        (["--loss", "foca"], "did you mean 'focal'"),
        (["--task", "mnsit"], "did you mean 'mnist'"),
        (["--loss", "focal:gama=2"], "gamma"),
        (["--loss", "focal:gamma=-1"], "gamma must be >= 0"),
        (["--loss", "mse"], "losses that apply to mnist"),
        (["--optimizer", "lbfgs"], "optimizer must be one of"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args, expected, tmp_path):
    res = invoke("train", *args, "--out", str(tmp_path / "never"), *TINY)
    assert res.exit_code == 2, res.output
    assert expected in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_unwritable_out_exits_1(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = invoke("train", "--loss", "ce", "--out", str(blocker / "run"), *TINY)
    assert res.exit_code == 1
    assert "cannot write results" in res.output and "Traceback" not in res.output


def test_errored_run_exits_1_and_is_recorded(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(
        "from losscli.losses import register_loss\n"
        "@register_loss('broken_cli', family='classification', pred='logits', target='index',\n"
        "               description='fails after the plan check', reference='test')\n"
        "def broken(pred, target, *, reduction='mean'):\n"
        "    if pred.shape[0] > 8:\n"
        "        raise RuntimeError('broken on real batches')\n"
        "    return pred.sum() * 0\n"
    )
    out = tmp_path / "run"
    res = invoke("train", "--plugin", str(plugin), "--loss", "broken_cli", "--loss", "ce",
                 "--out", str(out), *TINY)
    assert res.exit_code == 1, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert dict(zip(runs["loss"], runs["status"], strict=True)) == {"broken_cli": "error",
                                                                    "ce": "ok"}


def _write_idx(path, array: torch.Tensor) -> None:
    dims = array.shape
    magic = 0x0800 | (3 if len(dims) == 3 else 1)  # unsigned byte, 3-d images / 1-d labels
    path.write_bytes(struct.pack(f">I{len(dims)}I", magic, *dims)
                     + array.to(torch.uint8).numpy().tobytes())


def _fake_fashion(root, n_train=256, n_test=64):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        images = (labels.view(-1, 1, 1) * 25 + torch.randint(0, 20, (n, 28, 28), generator=g))
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)


def test_fashion_from_a_torchvision_data_dir(tmp_path):
    _fake_fashion(tmp_path / "data")
    out = tmp_path / "run"
    res = invoke("train", "--task", "fashion", "--loss", "ce", "--data-dir",
                 str(tmp_path / "data"), "--val-size", "56", "--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "meta.json").read_text())
    assert "torchvision FashionMNIST" in meta["data_sources"]["fashion"]


def test_fashion_without_data_says_how_to_get_it(tmp_path, monkeypatch):
    import losscli.data.mnist as m

    monkeypatch.setattr(m, "DEBIAN_FASHION_DIR", tmp_path / "nothing")
    res = invoke("train", "--task", "fashion", "--loss", "ce", "--out", str(tmp_path / "r"),
                 *TINY)
    assert res.exit_code == 2
    assert "apt-get install dataset-fashion-mnist" in " ".join(res.output.split())


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_from_debian_files():
    from losscli.data.mnist import load_fashion

    split = load_fashion()
    assert split.train_images.shape == (60000, 28, 28)
    assert split.test_images.shape == (10000, 28, 28)
    assert torch.bincount(split.test_labels).tolist() == [1000] * 10


def test_readme_job_options_tables_are_generated_from_the_declarations():
    from losscli.cli.listing import options_markdown
    from losscli.jobs import list_jobs

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- job-options:begin -->\n")[1].split("<!-- job-options:end -->")[0]
    assert block == options_markdown(list_jobs()), \
        "README job options out of date: paste `losscli list tasks --markdown`"


def test_every_job_option_is_a_train_flag_with_its_rule(tmp_path):
    res = runner.invoke(app, ["train", "--task", "seg", "--fg-fraction", "1.5", "--loss", "ce",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "--fg-fraction (option fg_fraction of seg) must be a number in (0, 1)" in res.output
    res = runner.invoke(app, ["train", "--task", "seg", "--fg-fracton", "0.1"])
    assert res.exit_code == 2 and "did you mean '--fg-fraction'" in res.output
    res = runner.invoke(app, ["list", "tasks", "seg"])
    assert res.exit_code == 0 and "--pixel-noise" in res.output and "a multiple of 4" in res.output
