"""How report commands finish: the table on stdout, then the JSON and the plot where asked for."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click


def emit_report(table: str, rows_json: list[dict], json_path: Path | None = None,
                plot: Callable[[Path], None] | None = None, plot_path: Path | None = None) -> None:
    from evospec.core.atomic import write_text_atomic

    click.echo(table)
    if json_path is not None:
        write_text_atomic(Path(json_path), json.dumps(rows_json, indent=2))
        click.echo(f"wrote {json_path}")
    if plot_path is not None and plot is not None:
        plot(Path(plot_path))
        click.echo(f"wrote {plot_path}")
