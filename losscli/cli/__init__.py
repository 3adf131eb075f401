"""The ``losscli`` command. Only this package knows typer, exit codes and rendering."""

from __future__ import annotations

import typer

from losscli.cli import check, listing, recommend, report, sweep, train

app = typer.Typer(
    name="losscli",
    help="Compare PyTorch loss functions empirically on small standard training jobs.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
# job options arrive as flags typer does not know; train checks them against the job
app.command("train", context_settings={"allow_extra_args": True,
                                       "ignore_unknown_options": True},
            epilog=train.JOB_OPTIONS_HELP)(train.train)
app.command("sweep")(sweep.sweep)
app.command("check")(check.check)
app.command("baseline")(check.baseline)
app.command("report")(report.report)
app.command("recommend")(recommend.recommend)
app.add_typer(listing.app, name="list")


def main() -> None:
    app()
