"""Job plugins: ``register_job``, ``--plugin FILE|MODULE``, the ``losscli.jobs`` entry-point
group, ``list tasks``' source column, and the README's example job end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import losscli.jobs as jobs
import losscli.losses.registry as reg
from losscli.cli import app
from losscli.errors import UsageError
from losscli.jobs import create_job, job_source, register_job

runner = CliRunner()
EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "my_job.py"


def _example_class():
    reg.load_plugin(str(EXAMPLE))
    return jobs.job_class("my_job")


def _variant(name: str, **attributes):
    """A subclass of the example job under another name (its own load_task comes along)."""
    return type(f"Job_{name}", (_example_class(),), {"name": name, **attributes})


# --------------------------------------------------------------------------- register_job


def test_register_job_refuses_a_taken_name_or_alias():
    with pytest.raises(ValueError, match="job name 'mnist' is already registered"):
        register_job(_variant("mnist"))
    with pytest.raises(ValueError, match="job name 'regression' is already registered"):
        register_job(_variant("fresh", aliases=("regression",)))
    assert "fresh" not in jobs.job_names()


def test_register_job_replace_is_deliberate():
    cls = _variant("my_job", description="replaced")
    register_job(cls, replace=True)
    assert jobs.job_class("my_job") is cls
    as_decorator = register_job(replace=True)(_variant("my_job", description="again"))
    assert jobs.job_class("my_job").description == "again" == as_decorator.description


@pytest.mark.parametrize("attributes, message", [
    ({"name": "two words"}, "name must be a non-empty text without spaces"),
    ({"name": "no_task_file", "load_task": jobs.Job.load_task},
     "define load_task() returning a TaskFile"),
    ({"name": "twice", "option_specs": (jobs.Option("a", int, 1, "a"),) * 2},
     "option names repeat"),
])
def test_register_job_refuses_a_class_that_breaks_the_contract(attributes, message):
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        register_job(_variant(attributes.pop("name"), **attributes))


def test_register_job_names_missing_methods_and_attributes():
    class Half(jobs.Job):
        name = "half"

        def load_task(self):
            raise NotImplementedError

    with pytest.raises(TypeError, match=r"must define description, .*adapt_pred, .*probe"):
        register_job(Half)
    with pytest.raises(TypeError, match="takes a subclass of losscli.jobs.Job"):
        register_job(dict)


def test_sources_of_jobs():
    assert job_source("mnist") == job_source("regression") == "losscli"
    _example_class()
    assert job_source("my_job") == f"plugin {EXAMPLE}"
    register_job(_variant("imported", __module__="my_notebook"))  # outside any plugin
    assert job_source("imported") == "module my_notebook"


# --------------------------------------------------------------------------- loading


def test_failing_plugin_takes_its_jobs_back(tmp_path):
    plugin = tmp_path / "half_job.py"
    plugin.write_text(f"exec(open({str(EXAMPLE)!r}).read())\nraise RuntimeError('late')\n")
    with pytest.raises(UsageError, match=r"half_job.py failed at line 2: RuntimeError: late"):
        reg.load_plugin(str(plugin))
    with pytest.raises(UsageError, match="unknown task 'my_job'"):
        create_job("my_job")


def test_a_module_plugin_registers_jobs(tmp_path, monkeypatch):
    (tmp_path / "spiral_jobs.py").write_text(EXAMPLE.read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.load_plugin("spiral_jobs")
    assert job_source("my_job") == "plugin spiral_jobs"
    monkeypatch.delitem(sys.modules, "spiral_jobs")


def test_entry_point_in_the_jobs_group(monkeypatch):
    class EntryPoint:
        name, value, module = "spirals", "spiral_pkg:register", "spiral_pkg"

        @staticmethod
        def load():
            return lambda: reg.load_plugin(str(EXAMPLE))

    groups = []

    def entry_points(group):
        groups.append(group)
        return [EntryPoint()] if group == "losscli.jobs" else []

    monkeypatch.setattr(reg, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(reg, "_ENTRY_POINTS_ERROR", None)
    monkeypatch.setattr(reg, "entry_points", entry_points)
    assert "my_job" in jobs.job_names()
    assert groups == ["losscli.losses", "losscli.jobs"]


# --------------------------------------------------------------------------- CLI


def test_readme_example_job_trains_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--plugin", str(EXAMPLE), "--task", "my_job", "--loss",
                              "ce", "--loss", "focal:gamma=2", "--steps", "150", "--quiet",
                              "--noise", "0.05", "--out", str(out)])
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["job"]) == {"my_job"} and set(runs["status"]) == {"ok"}
    assert (runs["test_final"] > 0.8).all(), runs[["loss", "test_final"]]
    assert runs["job_options"].iloc[0] == '{"noise": "0.05"}'


def test_plugin_job_without_its_plugin_is_an_unknown_task(tmp_path):
    res = runner.invoke(app, ["train", "--task", "my_job", "--loss", "ce", "--out",
                              str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown task 'my_job'" in res.output


def test_list_tasks_shows_where_a_plugin_job_came_from():
    res = runner.invoke(app, ["list", "tasks", "--plugin", str(EXAMPLE)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "my_job" in text and "Two interleaved spirals" in text
    assert "from plugin" in text and "my_job.py" in text
    res = runner.invoke(app, ["list", "tasks", "my_job", "--plugin", str(EXAMPLE)])
    assert res.exit_code == 0 and "--n-train" in res.output


def test_suite_of_a_plugin_job_in_worker_processes(tmp_path):
    """Workers load the plugin before they unpickle its job: a pooled sweep trains it."""
    suite = tmp_path / "spirals.toml"
    suite.write_text('name = "spirals"\nseeds = 2\n\n[[job]]\ntask = "my_job"\n'
                     'losses = ["ce"]\nsteps = 40\noptions = { n_train = 256 }\n')
    out = tmp_path / "run"
    res = runner.invoke(app, ["sweep", str(suite), "--plugin", str(EXAMPLE), "--workers", "2",
                              "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 and set(runs["status"]) == {"ok"} and set(runs["job"]) == {"my_job"}
