"""Progress bars for long training loops: step count, current loss, elapsed time."""

from __future__ import annotations

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def loss_progress(label: str, transient: bool = False) -> Progress:
    """A bar whose tasks carry a ``loss`` field (``bar.update(task, advance=1, loss=...)``)."""
    return Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), transient=transient)
