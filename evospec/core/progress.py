"""Progress bars for long training loops: step count, current loss, elapsed and remaining time."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def loss_progress(label: str, transient: bool = False, console: Console | None = None) -> Progress:
    """A bar whose tasks carry a ``loss`` field (``bar.update(task, completed=..., loss=...)``)."""
    return Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    transient=transient, console=console)
