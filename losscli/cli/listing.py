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
    job = create_job(task) if task is not None else None
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
def list_tasks_cmd(
    task: Annotated[str | None, typer.Argument(help="One job: show all its options.",
                                               show_default=False)] = None,
    markdown: Annotated[bool, typer.Option(help="Each job's options as the README's "
                                           "Markdown tables.")] = False,
) -> None:
    """Every standard job: data, model, metrics, budget, options, default losses."""
    from losscli.jobs import create_job, list_jobs

    if markdown:
        out.print(options_markdown(list_jobs()), markup=False, highlight=False, soft_wrap=True)
        return
    jobs = [create_job(task)] if task else [cls() for cls in list_jobs()]
    out.print(_tasks_table(jobs, details=task is not None))
    if task:
        out.print(_options_table(jobs[0]))


def _budget(job) -> str:
    b = job.task.budget
    return (f"{b.epochs:g} epochs" if b.epochs else f"{b.steps} steps") + \
        f", batch {b.batch_size}, {b.optimizer} lr {b.lr:g}"


def _tasks_table(jobs, details: bool) -> Table:
    from losscli.sweep import compatible_losses

    table = Table(title="tasks", title_justify="left", show_lines=True)
    columns = ["task", "data", "model", "metrics (primary first)", "budget", "options",
               "default losses"] + (["compatible losses"] if details else [])
    for col in columns:
        table.add_column(col, overflow="fold")
    for job in jobs:
        metrics = [job.primary_metric, *[m for m in job.metrics if m != job.primary_metric]]
        cells = [
            Text(job.name + (f"\n({', '.join(job.aliases)})" if job.aliases else ""),
                 style="bold"),
            Text(job.description), job.model_name,
            f"{', '.join(metrics)}\ntarget {job.primary_metric} "
            f"{'≥' if job.maximize else '≤'} {job.task.target:g}",
            _budget(job), Text(", ".join(o.name for o in job.option_specs)),
            Text("\n".join(job.task.losses))]
        if details:
            cells.append(Text(", ".join(compatible_losses(job))))
        table.add_row(*cells)
    return table


def _default(option) -> str:
    return "–" if option.default is None else str(option.default).lower() \
        if option.type is bool else str(option.default)


def _options_table(job) -> Table:
    table = Table(title=f"{job.name} options (flags of `losscli train --task {job.name}`, "
                  "or --opt NAME=VALUE, or a suite's options = {...})", title_justify="left")
    for col in ("flag", "type", "default", "allowed", "meaning"):
        table.add_column(col, overflow="fold")
    for o in job.option_specs:
        table.add_row(o.cli, o.type_name, _default(o), o.rule(), Text(o.help))
    return table


def options_markdown(jobs) -> str:
    """Each job's options as Markdown (the README's "Job options" section is this text)."""
    parts = []
    for cls in jobs:
        parts += [f"**{cls.name}**", "", "| flag | type | default | allowed | meaning |",
                  "|---|---|---|---|---|"]
        parts += [f"| `{o.cli}` | {o.type_name} | {_default(o)} | {o.rule()} | {o.help} |"
                  for o in cls.option_specs]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"
