"""What every command shares: consoles, exit codes, and turning errors into them."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "Bf16Opt", "Device", "DeviceOpt", "FormatOpt",
           "OutputFormat", "PluginOpt", "QuietOpt", "Vectorise", "VectoriseOpt",
           "cli_device", "err", "handle_errors", "out"]

EXIT_FAILED = 1  # a run errored, output could not be written, or a check found a regression
EXIT_USAGE = 2  # bad input: unknown names, incompatible pairs, malformed specs

# results: tables on stdout; piped output gets room for wide tables instead of 80 columns
out = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 160)))
err = Console(stderr=True)  # progress and diagnostics on stderr

F = TypeVar("F", bound=Callable[..., Any])


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Vectorise(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


# Options several commands share, declared once (help text included)
DeviceOpt = Annotated[Device, typer.Option(help="auto picks cuda, then mps, then cpu.")]
Bf16Opt = Annotated[bool, typer.Option(help="bf16 autocast on CUDA (the loss stays fp32).")]
VectoriseOpt = Annotated[Vectorise, typer.Option(
    help="Train a loss's seeds together as one vmapped model: auto (when a short "
    "calibration says it is faster), always, never.")]
PluginOpt = Annotated[list[str] | None, typer.Option(
    help="Module or .py file registering extra losses or jobs (repeatable).")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="Summary on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]


def cli_device(device: Device) -> str:
    """The device to run on (``auto`` resolved); an unavailable one is a usage error."""
    from losscli.engine import resolve_device
    from losscli.errors import UsageError

    try:
        return str(resolve_device(device.value))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def handle_errors(fn: F) -> F:
    """Usage errors exit 2 with the message (no traceback); write errors exit 1; SIGINT
    and SIGTERM exit 130 and 143 with one line saying how to resume."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from losscli.errors import UsageError
        from losscli.results import WriteError

        try:
            with _sigterm_interrupts():
                return fn(*args, **kwargs)
        except UsageError as exc:
            err.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except WriteError as exc:
            err.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_FAILED) from None
        except KeyboardInterrupt as exc:
            raise typer.Exit(_interrupted(exc)) from None

    return wrapper  # type: ignore[return-value]


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Say what an interrupt kept and how to resume; the exit code (128 + signal)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    root = getattr(exc, "root", None)
    kept = (f"; finished runs are kept in {root}: to resume, run the same command with "
            f"--out {root}") if root else ""
    err.print(f"interrupted ({signal.Signals(signum).name}){kept}", style="yellow",
              highlight=False, markup=False, soft_wrap=True)
    return 128 + signum


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``Interrupted`` (like Ctrl-C's KeyboardInterrupt) while a command runs,
    so it ends the same way: rows kept, workers stopped, exit 143."""
    from losscli.errors import Interrupted

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
