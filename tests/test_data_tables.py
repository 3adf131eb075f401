"""Real regression tables (scikit-learn diabetes, statsmodels stackloss and engel)."""

import sys

import pytest
import torch

from losscli.data.splits import split_indices, stratified_split_indices
from losscli.data.tables import TABLES, load_table
from losscli.errors import UsageError

SHAPES = {"diabetes": (442, 10, "progression"), "stackloss": (21, 3, "STACKLOSS"),
          "engel": (235, 1, "foodexp")}


def _raw_targets(name):
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        return torch.tensor(load_diabetes(scaled=False).target, dtype=torch.float32)
    import importlib

    frame = importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data
    return torch.tensor(frame[SHAPES[name][2]].to_numpy(), dtype=torch.float32)


@pytest.mark.parametrize("name", TABLES)
def test_tables_split_every_row_once_and_standardise_on_train(name):
    rows, features, target = SHAPES[name]
    d = load_table(name)
    sizes = [len(d.train_y), len(d.val_y), len(d.test_y)]
    assert sum(sizes) == rows and min(sizes) >= 2
    assert d.train_x.shape == (sizes[0], features) and d.test_x.shape == (sizes[2], features)
    assert d.target_name == target and len(d.feature_names) == features
    assert abs(d.train_x.mean(0)).max() < 1e-5 and abs(d.train_x.std(0) - 1).max() < 1e-5
    assert abs(d.train_y.mean()) < 1e-5 and abs(d.train_y.std() - 1) < 1e-5
    # undoing the standardisation gives back exactly the table's targets, each row once
    restored = torch.cat([d.train_y, d.val_y, d.test_y]) * d.target_std + d.target_mean
    torch.testing.assert_close(restored.sort().values, _raw_targets(name).sort().values,
                               rtol=1e-5, atol=1e-3)
    assert f"{sizes[0]} train / {sizes[1]} val / {sizes[2]} test rows" in d.source


def test_the_split_comes_from_the_seed():
    a, b, c = load_table("engel"), load_table("engel"), load_table("engel", seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_outliers_shift_training_targets_only():
    clean, dirty = load_table("diabetes"), load_table("diabetes", outliers=0.2)
    n = len(clean.train_y)
    assert int(dirty.outlier.sum()) == round(0.2 * n) and not clean.outlier.any()
    shift = dirty.train_y - clean.train_y
    assert torch.equal(shift[~dirty.outlier], torch.zeros(n - int(dirty.outlier.sum())))
    assert shift[dirty.outlier].min() >= 5.0 and shift[dirty.outlier].max() <= 10.0
    for name in ("train_x", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(clean, name), getattr(dirty, name))
    assert "train outliers (20%" in dirty.source


def test_unknown_table_names_close_matches():
    with pytest.raises(UsageError, match="unknown table 'diabetis'; did you mean 'diabetes'"):
        load_table("diabetis")


@pytest.mark.parametrize("kwargs, message", [
    ({"outliers": 0.95}, r"outliers must be a number in \[0, 0.9\]"),
    ({"test_fraction": 0}, r"test_fraction must be a number in \(0, 1\), got 0"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction must be < 1"),
    ({"val_fraction": 0.49, "test_fraction": 0.49},
     "table 'stackloss' has 21 rows; a split into train, validation and test needs"),
])
def test_bad_arguments_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        load_table("stackloss", **kwargs)


@pytest.mark.parametrize("name, module", [("diabetes", "sklearn.datasets"),
                                          ("stackloss", "statsmodels.datasets.stackloss")])
def test_missing_package_says_how_to_install(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UsageError, match=r'pip install "losscli\[data\]"'):
        load_table(name)


# --------------------------------------------------------------------------- splits


def test_split_sizes_and_disjointness():
    gen = torch.Generator().manual_seed(0)
    train, val, test = split_indices(100, val_fraction=0.1, test_fraction=0.2, gen=gen)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert torch.equal(torch.cat([train, val, test]).sort().values, torch.arange(100))
    train, val, test = split_indices(10, val_fraction=0.0, test_fraction=0.2, gen=gen)
    assert len(val) == 0 and len(test) == 2


def test_stratified_split_puts_every_class_in_every_split():
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 3)
    gen = torch.Generator().manual_seed(0)
    parts = stratified_split_indices(labels, val_fraction=0.2, test_fraction=0.2, gen=gen,
                                     class_names=["a", "b", "c"])
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(28))
    for part in parts:
        assert set(labels[part].tolist()) == {0, 1, 2}
    with pytest.raises(UsageError, match="class 'c' has 2 images; a split into train, "
                                         "validation and test needs at least 3"):
        stratified_split_indices(labels[:-1], val_fraction=0.2, test_fraction=0.2, gen=gen,
                                 class_names=["a", "b", "c"], what="x", unit="images")
