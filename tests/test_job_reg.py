"""The reg job: generator knobs, CSV loading, real tables, adapter, metrics, vmap-ability,
CLI end to end."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from losscli.cli import app
from losscli.data.synthetic_regression import load_csv_regression, make_regression
from losscli.errors import UsageError
from losscli.jobs import create_job
from losscli.losses import Pred, Target, create_loss
from losscli.settings import Settings

runner = CliRunner()
TINY = ["--steps", "20", "--batch-size", "64", "--eval-every", "10", "--quiet",
        "--device", "cpu"]


def small(**kw):
    return make_regression(**{"n_train": 400, "n_test": 200, **kw})


# --------------------------------------------------------------------------- generator


def test_generator_is_deterministic_from_the_seed():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    for name in ("train_x", "train_y", "test_x", "test_y", "outlier"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.train_x, c.train_x)


def test_outliers_are_one_sided_gross_shifts_of_that_fraction():
    clean, dirty = small(outliers=0.0), small(outliers=0.25)
    assert int(clean.outlier.sum()) == 0 and int(dirty.outlier.sum()) == 100
    shift = dirty.train_y - clean.train_y
    assert torch.equal(shift[~dirty.outlier], torch.zeros(300))
    assert shift[dirty.outlier].min() >= 5.0 and shift[dirty.outlier].max() <= 10.0
    # test targets never change with the training corruption
    assert torch.equal(clean.test_y, dirty.test_y) and torch.equal(clean.test_x, dirty.test_x)


def test_test_targets_are_clean_and_standardised():
    d = make_regression(n_train=3000, n_test=3000, noise="student_t", noise_scale=0.5,
                        outliers=0.3)
    clean = make_regression(n_train=3000, n_test=3000, noise_scale=0.0, outliers=0.0)
    assert torch.equal(d.test_y, clean.test_y)
    f = torch.cat([clean.train_y, clean.test_y])
    assert abs(f.mean().item()) < 1e-4 and abs(f.std().item() - 1) < 1e-4


@pytest.mark.parametrize("noise, kurtosis", [("gaussian", (2.8, 3.2)), ("laplace", (5, 7)),
                                              ("student_t", (8, math.inf))])
def test_noise_kinds_have_unit_variance_and_their_tails(noise, kurtosis):
    kw = {"n_train": 40000, "n_test": 2, "outliers": 0.0, "noise": noise}
    eps = make_regression(noise_scale=1.0, **kw).train_y - make_regression(noise_scale=0.0,
                                                                           **kw).train_y
    assert abs(eps.var().item() - 1) < (0.1 if noise != "student_t" else 0.35)
    k = ((eps - eps.mean()) ** 4).mean() / eps.var() ** 2
    assert kurtosis[0] < k.item() < kurtosis[1]


def test_nonlinearity_zero_is_exactly_linear_and_one_is_not():
    def linear_fit_residual(nonlinearity):
        d = make_regression(n_train=500, n_test=500, features=5, nonlinearity=nonlinearity)
        x = torch.cat([d.test_x, torch.ones(500, 1)], 1).double()
        sol = torch.linalg.lstsq(x, d.test_y.double().unsqueeze(1)).solution
        return (x @ sol).squeeze(1).sub(d.test_y.double()).pow(2).mean().item()

    assert linear_fit_residual(0.0) < 1e-10
    assert linear_fit_residual(1.0) > 0.5  # most of the variance is nonlinear


def test_feature_count_and_sizes():
    d = make_regression(n_train=30, n_test=20, features=3)
    assert d.train_x.shape == (30, 3) and d.test_x.shape == (20, 3)
    assert d.train_y.shape == (30,) and d.test_y.shape == (20,)
    assert d.train_x.dtype == d.train_y.dtype == torch.float32


@pytest.mark.parametrize("kw, message", [
    ({"noise": "cauchy"}, "noise must be one of"),
    ({"outliers": 1.5}, "outliers must be"),
    ({"features": 0}, "features must be"),
    ({"n_train": 2.5}, "n_train must be"),
    ({"nonlinearity": -0.1}, "nonlinearity must be"),
])
def test_bad_knobs_are_usage_errors(kw, message):
    with pytest.raises(UsageError, match=message):
        make_regression(**kw)


# --------------------------------------------------------------------------- csv


@pytest.fixture
def table(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, generator=gen)
    df = pd.DataFrame({"a": x[:, 0].numpy(), "b": x[:, 1].numpy() * 10 + 3,
                       "name": [f"row{i}" for i in range(50)],
                       "y": (3 * x[:, 0] - x[:, 1] + 100).numpy()})
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    return path


def test_csv_split_and_standardisation(table):
    d = load_csv_regression(table, "y")
    assert d.train_x.shape == (40, 2) and d.test_x.shape == (10, 2)
    assert torch.allclose(d.train_x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(d.train_x.std(0), torch.ones(2), atol=1e-5)
    assert abs(d.train_y.mean().item()) < 1e-5 and abs(d.train_y.std().item() - 1) < 1e-5
    assert "skipped: name" in d.source
    again, other = load_csv_regression(table, "y"), load_csv_regression(table, "y", seed=1)
    assert torch.equal(d.test_y, again.test_y) and not torch.equal(d.test_y, other.test_y)
    # the relationship survives: a least-squares fit on train predicts test exactly
    x = torch.cat([d.train_x, torch.ones(40, 1)], 1).double()
    sol = torch.linalg.lstsq(x, d.train_y.double().unsqueeze(1)).solution
    pred = torch.cat([d.test_x, torch.ones(10, 1)], 1).double() @ sol
    assert torch.allclose(pred.squeeze(1), d.test_y.double(), atol=1e-4)


def test_csv_outliers_shift_training_targets_only(table):
    clean, dirty = load_csv_regression(table, "y"), load_csv_regression(table, "y", outliers=0.5)
    assert int(dirty.outlier.sum()) == 20 and torch.equal(clean.test_y, dirty.test_y)
    assert (dirty.train_y - clean.train_y)[dirty.outlier].min() >= 5


def test_csv_rows_with_missing_values_are_dropped(tmp_path):
    rows = [f"{i},{2 * i}" for i in range(20)] + ["3,", ",4"]
    (tmp_path / "gaps.csv").write_text("x,y\n" + "\n".join(rows) + "\n")
    d = load_csv_regression(tmp_path / "gaps.csv", "y")
    assert d.train_x.shape[0] + d.test_x.shape[0] == 20
    assert "2 rows with missing values dropped" in d.source


def test_csv_errors(table, tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_csv_regression(tmp_path / "missing.csv", "y")
    with pytest.raises(UsageError, match="not a column"):
        load_csv_regression(table, "z")
    with pytest.raises(UsageError, match="not numeric"):
        load_csv_regression(table, "name")
    (tmp_path / "one.csv").write_text("y\n1\n2\n")
    with pytest.raises(UsageError, match="no numeric feature"):
        load_csv_regression(tmp_path / "one.csv", "y")


def test_job_refuses_synthetic_knobs_with_csv(table):
    with pytest.raises(UsageError, match="only apply to generated data"):
        create_job("reg", csv=str(table), target_column="y", noise="laplace").load_data()
    with pytest.raises(UsageError, match="go together"):
        create_job("reg", csv=str(table)).load_data()


# --------------------------------------------------------------------------- adapter, model


def test_adapter_gives_mean_and_positive_variance():
    job = create_job("reg")
    out = torch.tensor([[1.0, -50.0], [2.0, 0.0], [-3.0, 3.0]])
    assert torch.equal(job.adapt_pred(out, Pred.VALUES), torch.tensor([1.0, 2.0, -3.0]))
    mv = job.adapt_pred(out, Pred.VALUES_VAR)
    assert mv.shape == (3, 2) and torch.equal(mv[:, 0], out[:, 0])
    assert torch.allclose(mv[:, 1], F.softplus(out[:, 1]) + 1e-6) and (mv[:, 1] > 0).all()
    y = torch.randn(3)
    assert job.adapt_target(y, Target.VALUES, out) is y


def test_every_regression_loss_binds_to_the_probe():
    job = create_job("reg")
    for spec in ("mse", "l1", "huber", "smooth_l1", "log_cosh", "gaussian_nll"):
        value = job.bind(create_loss(spec))(*job.probe())
        assert value.shape == () and torch.isfinite(value)


def test_mse_objective_is_mse_of_the_mean_column():
    job = create_job("reg")
    out, y = torch.tensor([[1.0, 9.0], [3.0, -9.0]]), torch.tensor([0.0, 1.0])
    assert job.bind(create_loss("mse"))(out, y).item() == pytest.approx((1 + 4) / 2)


class _Fixed(nn.Module):
    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x):
        return torch.stack([self.pred, torch.zeros_like(self.pred)], 1)


def test_metrics_on_known_inputs():
    job = create_job("reg")
    data = job.load_data()
    y = data.test.y
    exact = job.evaluate(_Fixed(y.clone()), data.test, None)
    assert exact["rmse"] == pytest.approx(0, abs=1e-6) and exact["r2"] == pytest.approx(1)
    off = job.evaluate(_Fixed(y + 0.5), data.test, None)
    assert off["rmse"] == pytest.approx(0.5, rel=1e-5) and off["mae"] == pytest.approx(0.5)
    mean = job.evaluate(_Fixed(torch.full_like(y, y.mean().item())), data.test, None)
    assert mean["r2"] == pytest.approx(0, abs=1e-5)
    assert mean["rmse"] == pytest.approx(y.std(unbiased=False).item(), rel=1e-4)


def test_model_is_vmappable_over_stacked_seeds():
    job = create_job("reg", features=3, n_train=20, n_test=10)
    data = job.load_data()
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(job.build_model(data))
    params, buffers = torch.func.stack_module_state(models)
    x = torch.randn(5, 3)

    def one(p, b):
        return torch.func.functional_call(models[0], (p, b), (x,))

    batched = torch.vmap(one)(params, buffers)
    assert batched.shape == (3, 5, 2)
    for i, m in enumerate(models):
        assert torch.allclose(batched[i], m(x), atol=1e-6)


# --------------------------------------------------------------------------- CLI


def test_cli_trains_reg_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--task", "regression", "--loss", "mse",
                              "--loss", "gaussian_nll", "--seeds", "2", "--opt", "n_train=512",
                              "--opt", "n_test=256", "--outliers", "0.3", "--noise", "laplace",
                              "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["status"]) == {"ok"} and set(runs["job"]) == {"reg"}
    assert (runs["primary_metric"] == "rmse").all() and runs["test_final"].between(0, 10).all()
    assert "train outliers (30%" in runs["data_source"].iloc[0]
    history = pd.read_csv(out / "history.csv")
    assert {"rmse", "mae", "r2"} <= set(history["metric"])


def test_cli_reg_from_csv(tmp_path, table):
    res = runner.invoke(app, ["train", "--task", "reg", "--loss", "l1", "--csv", str(table),
                              "--target", "y", "--steps", "10", "--batch-size", "16", "--quiet",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "t.csv" in pd.read_csv(tmp_path / "run" / "runs.csv")["data_source"].iloc[0]


@pytest.mark.parametrize("args, message", [
    (["--noise", "cauchy"], "--noise (option noise of reg) must be one of"),
    (["--sigma", "0.1"], "unknown option '--sigma' for task 'reg'"),
    (["--loss", "ce"], "losses that apply to reg"),
    (["--csv", "/nonexistent.csv", "--target", "y"], "no such file"),
])
def test_cli_usage_errors(args, message, tmp_path):
    res = runner.invoke(app, ["train", "--task", "reg", *args, "--out", str(tmp_path / "x"),
                              *TINY])
    assert res.exit_code == 2, res.output
    assert message in res.output


# --------------------------------------------------------------------------- real tables


@pytest.fixture
def tables():
    pytest.importorskip("sklearn")
    pytest.importorskip("statsmodels")


@pytest.mark.parametrize("name, rows, features", [("diabetes", (266, 88, 88), 10),
                                                  ("stackloss", (13, 4, 4), 3),
                                                  ("engel", (141, 47, 47), 1)])
def test_real_tables_split_and_standardised(tables, name, rows, features):
    job = create_job("reg", dataset=name)
    data = job.load_data()
    assert tuple(len(s) for s in (data.train, data.val, data.test)) == rows
    assert data.train.x.shape[1] == features and data.train.y.dim() == 1
    assert abs(float(data.train.y.mean())) < 1e-5  # standardised on the training rows
    assert not data.train.extra["outlier"].any() and name in data.source
    assert job.task.budget.steps == 400  # tasks/reg_table.toml


def test_real_table_outliers_on_training_targets_only(tables):
    clean = create_job("reg", dataset="diabetes").load_data()
    dirty = create_job("reg", dataset="diabetes", outliers=0.2).load_data()
    shifted = dirty.train.extra["outlier"]
    assert int(shifted.sum()) == round(0.2 * 266)
    assert (dirty.train.y[shifted] - clean.train.y[shifted] >= 5).all()
    assert torch.equal(dirty.train.y[~shifted], clean.train.y[~shifted])
    assert torch.equal(dirty.val.y, clean.val.y) and torch.equal(dirty.test.y, clean.test.y)
    assert "outliers" in dirty.source


def test_small_table_trains_full_batch_unless_asked_otherwise(tables):
    job = create_job("reg", dataset="stackloss")
    data = job.load_data()
    assert job.settings(data).batch_size == 13  # tasks/reg_table.toml says 32
    with pytest.raises(UsageError, match="batch size 32 exceeds the 13 training samples"):
        job.settings(data, Settings(batch_size=32))


@pytest.mark.parametrize("options, message", [
    ({"dataset": "diabetes", "n_train": 100}, "--n-train only apply to generated data, not "
                                              "with --dataset diabetes"),
    ({"dataset": "engel", "csv": "t.csv", "target_column": "y"}, "two tables"),
    ({"dataset": "boston"}, "one of generated, diabetes, stackloss, engel"),
    ({"dataset": "stackloss", "clean_val": True}, "--clean-val: --dataset stackloss's "
                                                  "validation targets are clean already"),
])
def test_real_table_option_rules(options, message):
    with pytest.raises(UsageError, match=message):
        create_job("reg", **options)


def test_cli_trains_on_a_real_table(tables, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--task", "reg", "--dataset", "stackloss", "--loss", "l1",
                              "--loss", "mse", "--outliers", "0.2", "--steps", "30", "--quiet",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["status"]) == {"ok"} and (runs["batch_size"] == 13).all()
    assert "statsmodels stackloss" in runs["data_source"].iloc[0]


def test_clean_val_unshifts_the_validation_targets_and_nothing_else():
    """--clean-val: the same validation rows, their targets before the outlier shift (the
    noise kept); training and test unchanged. Default: contaminated like training."""
    dirty = create_job("reg", n_train=400, n_val=200, n_test=100).load_data()
    clean = create_job("reg", n_train=400, n_val=200, n_test=100, clean_val=True).load_data()
    for split in ("train", "test"):
        assert torch.equal(getattr(dirty, split).x, getattr(clean, split).x)
        assert torch.equal(getattr(dirty, split).y, getattr(clean, split).y)
    assert torch.equal(dirty.val.x, clean.val.x)
    shifted = dirty.val.extra["outlier"]
    assert 0.1 < shifted.float().mean() < 0.3 and not clean.val.extra["outlier"].any()
    assert torch.equal(dirty.val.y[~shifted], clean.val.y[~shifted])  # noise kept
    sd = dirty.train.y[~dirty.train.extra["outlier"]].std()
    gap = (dirty.val.y - clean.val.y)[shifted] / sd
    assert gap.min() > 4 and gap.max() < 11  # the 5-10 sd shift, measured in target sd
    assert "clean validation targets" in clean.source


def test_clean_val_lets_validation_rank_robust_losses_as_test_does():
    """With outliers, contaminated validation favours mse (it fits the outliers); clean
    validation ranks l1 first, as the clean test split does."""
    from losscli.engine import run_one

    def val_and_test(**options):
        job = create_job("reg", **options)
        data = job.load_data()
        cfg = job.settings(data, Settings(steps=300))
        outs = {name: run_one(job, data, create_loss(name), cfg, seed=0)
                for name in ("mse", "l1")}
        return ({n: o.evals[-1][1]["rmse"] for n, o in outs.items()},
                {n: o.test["rmse"] for n, o in outs.items()})

    (val, test), (clean, clean_test) = val_and_test(), val_and_test(clean_val=True)
    assert test == clean_test  # the same training: only validation differs
    assert test["l1"] < test["mse"] and clean["l1"] < clean["mse"]
    assert val["mse"] < val["l1"]  # contaminated validation prefers the outlier fit
