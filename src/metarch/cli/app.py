"""The ``metarch`` command: one entry point, one sub-application per domain.

Errors a user can cause are :class:`~metarch.errors.MetarchError`; they are printed as one
line on stderr with exit status 2. So are the file system's (a read-only or full disk, a
path below a file, a path that is not UTF-8): one line naming the path and what to do.
``--debug`` (anywhere on the command line, or ``METARCH_DEBUG=1``) shows the traceback
instead. Warnings the library logs (a partly extracted data folder, evaluation on trained
classes, ...) are printed as ``warning: ...`` lines on stderr.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from metarch import __version__
from metarch.cli import config as config_commands
from metarch.cli import data as data_commands
from metarch.cli import demo as demo_command
from metarch.cli import evaluate as evaluate_command
from metarch.cli import export as export_command
from metarch.cli import hardware as hardware_commands
from metarch.cli import nas as nas_commands
from metarch.cli import search as search_commands
from metarch.cli import train as train_command
from metarch.errors import MetarchError
from metarch.utils.io import describe_os_error, describe_unicode_error

__all__ = ["app", "main"]

DESCRIPTION = (
    "Few-shot episodic data, meta-learners, a meta-training engine, MetaNAS (architectures "
    "meta-learned with their weights and adapted to each task) and H-Meta-NAS (a "
    "meta-learned supernet searched per device and latency budget)."
)

app = typer.Typer(
    name="metarch",
    help=DESCRIPTION,
    no_args_is_help=True,
    # Plain help: typer's rich panels print flags as if they took a value (--json <bool>).
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data_commands.app, name="data")
app.add_typer(config_commands.app, name="config")
app.add_typer(nas_commands.app, name="nas")
app.add_typer(hardware_commands.app, name="hardware")
app.command("demo")(demo_command.demo)
app.command("train")(train_command.train)
app.command("evaluate")(evaluate_command.evaluate)
app.command("export")(export_command.export)
app.command("search")(search_commands.search)
app.command("adapt")(search_commands.adapt)

EXIT_USER_ERROR = 2


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"metarch {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks for errors (also accepted after a subcommand)."
    ),
) -> None:
    # --version is handled by its callback, --debug by main(); the help is DESCRIPTION.
    del version, debug


class _StderrWarnings(logging.Handler):
    """``warning: MESSAGE`` on the current ``sys.stderr`` for each library warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _show_library_warnings() -> None:
    logger = logging.getLogger("metarch")
    if not any(isinstance(h, _StderrWarnings) for h in logger.handlers):
        logger.addHandler(_StderrWarnings())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and exit with its status."""
    _show_library_warnings()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("METARCH_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        # Standalone mode handles usage errors, --help and exit codes; user errors of ours
        # propagate out of it and are reported here.
        app(args=args, prog_name="metarch")
    except MetarchError as exc:
        if debug:
            raise
        _fail(str(exc))
    except OSError as exc:
        if debug:
            raise
        _fail(describe_os_error(exc))
    except UnicodeEncodeError as exc:
        # Only a path can hold the lone surrogates that stand for non-UTF-8 bytes.
        if debug or exc.reason != "surrogates not allowed":
            raise
        _fail(describe_unicode_error(exc))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)
