"""The ``losscli`` command. Only this package knows typer, exit codes and rendering."""

from __future__ import annotations

from typing import Annotated

import typer

from losscli.cli import check, inspect, listing, recommend, report, sweep, train
from losscli.cli.help import Command, Group

app = typer.Typer(
    name="losscli",
    cls=Group,
    help="Compare PyTorch loss functions empirically on small standard training jobs.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from losscli import __version__

        typer.echo(f"losscli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Compare PyTorch loss functions empirically on small standard training jobs."""


# job options arrive as flags typer does not know; train checks them against the job
app.command("train", cls=Command, context_settings={"allow_extra_args": True,
                                                    "ignore_unknown_options": True},
            epilog=train.JOB_OPTIONS_HELP)(train.train)
app.command("sweep", cls=Command)(sweep.sweep)
app.command("check", cls=Command)(check.check)
app.command("baseline", cls=Command)(check.baseline)
app.command("show", cls=Command)(inspect.show)
app.command("diff", cls=Command)(inspect.diff)
app.command("report", cls=Command)(report.report)
app.command("recommend", cls=Command)(recommend.recommend)
app.add_typer(listing.app, name="list")


def main() -> None:
    app()
