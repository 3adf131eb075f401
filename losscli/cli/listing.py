"""``losscli list losses|tasks``: what is registered and what applies where."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from losscli.cli.common import PluginOpt, handle_errors, out
from losscli.cli.help import TASKS, Command, Group

app = typer.Typer(cls=Group, help="List losses and tasks.", no_args_is_help=True)
DetailsOpt = Annotated[bool, typer.Option("--details", help="Every column (wide: made for a "
                                          "wide terminal or a pager).")]


def _params(info) -> str:
    from losscli.losses.registry import format_value

    return ", ".join(f"{k}={format_value(v)}" for k, v in info.params.items())


@app.command("losses", cls=Command)
@handle_errors
def list_losses_cmd(
    task: Annotated[str | None, typer.Option("--task", "-t", metavar="<job>", help="Only "
                                             f"losses that apply to this job: {TASKS}.")] =
        None,
    plugin: PluginOpt = None,
    details: DetailsOpt = False,
) -> None:
    """Every registered loss: name, family and what it is; with --details its input kinds,
    parameters with defaults, weights and reference."""
    from losscli.jobs import create_job
    from losscli.losses import list_losses, load_entry_point_plugins, load_plugin

    for p in plugin or []:
        load_plugin(p)
    load_entry_point_plugins()
    job = create_job(task) if task is not None else None
    infos = [i for i in list_losses() if job is None or job.incompatibility(i) is None]
    title = f"losses{f' that apply to {job.name}' if job else ''} ({len(infos)})"
    out.print(_losses_table(infos, title, details))


def _losses_table(infos, title: str, details: bool) -> Table:
    """Compact: a section per family, each loss's name (aliases) and description."""
    from losscli.render import Spec

    table = Table(title=title, title_justify="left", show_lines=details)
    table.add_column("name", max_width=32)  # long aliases wrap below the name
    for col in ["pred", "target", "parameters", "weights", "reference"] if details else []:
        table.add_column(col)
    table.add_column("description")
    family = None
    for i in infos:
        if i.family != family:
            family = i.family
            table.add_row(Text(str(family), style="bold magenta"), end_section=False)
        name = Text(i.name, style="bold") + Text(
            f" ({', '.join(i.aliases)})" if i.aliases else "", style="dim")
        cells = [name, Text(i.description)]
        if details:
            cells[1:1] = [str(i.pred), str(i.target), Spec(_params(i)),
                          "needs" if i.needs_weights else "", Text(i.reference)]
        table.add_row(*cells)
    return table


@app.command("tasks", cls=Command)
@handle_errors
def list_tasks_cmd(
    task: Annotated[str | None, typer.Argument(metavar="JOB", show_default=False, help=(
        f"One job ({TASKS}): all its details and options."))] = None,
    details: DetailsOpt = False,
    markdown: Annotated[bool, typer.Option(help="Each job's options as the README's "
                                           "Markdown tables.")] = False,
    plugin: PluginOpt = None,
) -> None:
    """Every job, standard and plugins' (with where each plugin job came from): data,
    metrics and budget; with --details its model, options, default losses and the losses
    that apply."""
    from losscli.jobs import create_job, list_jobs
    from losscli.losses import load_plugin

    for p in plugin or []:
        load_plugin(p)
    if markdown:
        out.print(options_markdown(list_jobs()), markup=False, highlight=False, soft_wrap=True)
        return
    jobs = [create_job(task)] if task else [cls() for cls in list_jobs()]
    if not (details or task):
        out.print(_tasks_table(jobs))
        return
    for job in jobs:
        out.print(_task_card(job))
        out.print(_options_table(job))
        out.print()


def _budget(job) -> str:
    b = job.task.budget
    return (f"{b.epochs:g} epochs" if b.epochs else f"{b.steps} steps") + \
        f", batch {b.batch_size}, {b.optimizer} lr {b.lr:g}"


def _task_cell(job, aliases: bool = True) -> Text:
    """The job's name, its aliases and, for a plugin's job, where it came from."""
    from losscli.jobs import BUILTIN, job_source

    cell = Text(job.name, style="bold")
    if job.aliases and aliases:
        cell.append(f"\n({', '.join(job.aliases)})", style="bold")
    if (source := job_source(job.name)) != BUILTIN:
        cell.append(f"\nfrom {source}", style="dim")
    return cell


def _tasks_table(jobs) -> Table:
    """One row per job: data, primary metric and target, budget."""
    table = Table(title="tasks", title_justify="left", show_lines=True,
                  caption="`losscli list tasks JOB` or --details: model, options, losses",
                  caption_justify="left")
    for col in ("task", "data", "target", "budget"):
        table.add_column(col)
    for job in jobs:
        b = job.task.budget
        table.add_row(_task_cell(job, aliases=False), Text(job.description), _target(job),
                      f"{b.epochs:g} epochs" if b.epochs else f"{b.steps} steps")
    return table


def _target(job) -> str:
    return f"{job.primary_metric} {'≥' if job.maximize else '≤'} {job.task.target:g}"


def _task_card(job) -> Table:
    """Everything about one job, as label: value lines (fits any width)."""
    from losscli.sweep import compatible_losses

    card = Table.grid(padding=(0, 2))
    card.title = _task_cell(job).plain.replace("\n", " ")
    card.title_justify, card.title_style = "left", "bold"
    card.add_column(style="dim", no_wrap=True)
    card.add_column()
    metrics = [job.primary_metric, *[m for m in job.test_metric_names if m != job.primary_metric]]
    for label, value in (
            ("data", job.description), ("model", job.model_name),
            ("metrics", f"{', '.join(metrics)} (target {_target(job)})"),
            ("budget", _budget(job)), ("options", ", ".join(o.name for o in job.option_specs)),
            ("default losses", ", ".join(job.task.losses)),
            ("losses that apply", ", ".join(compatible_losses(job)))):
        card.add_row(label, Text(value))
    return card


def _default(option) -> str:
    return "–" if option.default is None else str(option.default).lower() \
        if option.type is bool else str(option.default)


def _options_table(job) -> Table:
    table = Table(title=f"{job.name} options (flags of `losscli train --task {job.name}`, "
                  "or --opt NAME=VALUE, or a suite's options = {...})", title_justify="left")
    for col in ("flag", "type", "default", "allowed", "meaning"):
        table.add_column(col, no_wrap=col in ("flag", "type"))
    for o in job.option_specs:
        table.add_row(o.cli, o.type_name, Text(_default(o)), Text(o.rule()), Text(o.help))
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
