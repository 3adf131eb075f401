"""``losscli list losses|tasks``: what is registered and what applies where."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from losscli.cli.common import handle_errors, out

app = typer.Typer(help="List losses and tasks.", no_args_is_help=True)


def _params(info) -> str:
    from losscli.losses.registry import format_value

    return ", ".join(f"{k}={format_value(v)}" for k, v in info.params.items())


@app.command("losses")
@handle_errors
def list_losses_cmd(
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only losses that apply "
                                             "to this job.")] = None,
    plugin: Annotated[list[str] | None, typer.Option(help="Module or .py file registering "
                                                     "extra losses.")] = None,
) -> None:
    """Every registered loss: family, input kinds, parameters, reference."""
    from losscli.jobs import create_job
    from losscli.losses import list_losses, load_entry_point_plugins, load_plugin

    for p in plugin or []:
        load_plugin(p)
    load_entry_point_plugins()
    job = create_job(task) if task else None
    infos = [i for i in list_losses() if job is None or job.incompatibility(i) is None]
    table = Table(title=f"losses{f' that apply to {job.name}' if job else ''} ({len(infos)})",
                  title_justify="left")
    for col in ("name", "family", "pred", "target", "parameters", "weights", "reference",
                "description"):
        table.add_column(col, overflow="fold")
    for i in infos:
        name = i.name + (f" ({', '.join(i.aliases)})" if i.aliases else "")
        table.add_row(Text(name, style="bold"), str(i.family), str(i.pred), str(i.target),
                      Text(_params(i)), "needs" if i.needs_weights else "",
                      Text(i.reference), Text(i.description))
    out.print(table)


@app.command("tasks")
@handle_errors
def list_tasks_cmd() -> None:
    """Every standard job: data, model, metrics, budget, default and compatible losses."""
    from losscli.jobs import list_jobs
    from losscli.sweep import compatible_losses

    table = Table(title="tasks", title_justify="left", show_lines=True)
    for col in ("task", "data", "model", "metrics (primary first)", "budget",
                "default losses", "compatible losses"):
        table.add_column(col, overflow="fold")
    for cls in list_jobs():
        job = cls()
        b = job.task.budget
        budget = (f"{b.epochs} epochs" if b.epochs else f"{b.steps} steps") + \
            f", batch {b.batch_size}, {b.optimizer} lr {b.lr:g}"
        metrics = [job.primary_metric, *[m for m in job.metrics if m != job.primary_metric]]
        table.add_row(
            Text(job.name + (f"\n({', '.join(job.aliases)})" if job.aliases else ""),
                 style="bold"),
            Text(job.description), job.model_name,
            f"{', '.join(metrics)}\ntarget {job.primary_metric} "
            f"{'≥' if job.maximize else '≤'} {job.task.target:g}",
            budget, Text("\n".join(job.task.losses)), Text(", ".join(compatible_losses(job))),
        )
    out.print(table)
