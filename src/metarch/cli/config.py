"""``metarch config ...``: what a training config may say."""

from __future__ import annotations

import itertools
import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metarch.engine.keys import ConfigKey, config_keys

__all__ = ["app"]

app = typer.Typer(
    help="What a training config may set.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("keys")
def keys(
    methods: list[str] = typer.Option(
        [],
        "--method",
        metavar="NAME",
        help="Only this meta-learner's options (repeatable; default: all).",
    ),
    models: list[str] = typer.Option(
        [],
        "--model",
        metavar="NAME",
        help="Only this backbone's options (repeatable; default: all).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """List every config key with its type, range, default and help.

    General keys first, then the options of each meta-learner (method.options.*) and
    backbone (model.options.*), which apply when method.name or model.name chooses it.
    """
    found = config_keys(methods or None, models or None)
    if as_json:
        typer.echo(json.dumps({"keys": [key.to_json() for key in found]}))
        return
    console = Console()
    for when, group in itertools.groupby(found, key=lambda key: key.when):
        console.print(_table(when, list(group)))


def _table(when: str, found: list[ConfigKey]) -> Table:
    title = f"Options with {when}" if when else "Config keys"
    table = Table(title=title, title_justify="left")
    for column in ("key", "type", "default", "help"):
        table.add_column(column, overflow="fold")
    for key in found:
        type_text = f"{key.type} {key.range}" if key.range else key.type
        # Types and help hold brackets (dict[str, any]) that rich would read as markup.
        cells = (key.key, type_text, _default_text(key), key.help)
        table.add_row(*(escape(cell) for cell in cells))
    return table


def _default_text(key: ConfigKey) -> str:
    if key.required:
        return "(required)"
    if isinstance(key.default, str):
        return key.default
    return json.dumps(key.default)
