"""Plain-text tables for command output: left-aligned columns under a header and a rule."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(x) for x in row] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in cells])
