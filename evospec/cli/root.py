"""The root ``evospec`` group. Every EvoSpec error becomes one line on stderr and exit code 2; the
command modules beside this one are registered on it in ``evospec/cli/__init__.py``."""

from __future__ import annotations

import logging
import os

import click

from evospec.core.errors import EvoSpecError


class EvoSpecGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EvoSpecError as exc:
            click.echo(f"evospec: error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=EvoSpecGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
def main(verbose: bool) -> None:
    """EvoSpec: exact speculative decoding with EAGLE-3 drafters."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # keep errors to one line: transformers' load reports and bars only with --verbose
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
