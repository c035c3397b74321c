"""Shared plumbing for the PNG plots of `vocab coverage` and `bench`: optional matplotlib, atomic writes."""

from __future__ import annotations

import os
import tempfile

from evospec.core.errors import SettingsError


def pyplot():
    """matplotlib.pyplot on the headless Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SettingsError("--plot needs matplotlib: pip install 'evospec[plot]'") from None
    return plt


def save_figure(fig, path) -> None:
    """Save a PNG through a temporary sibling and a rename; closes the figure."""
    plt = pyplot()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
