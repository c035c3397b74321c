"""Click options more than one command takes with the same meaning, defined once."""

from __future__ import annotations

from pathlib import Path

import click


def bundle_options(command):
    """``--bundle``, ``--vocab`` and ``--frequencies``: draft with a compiled bundle under a vocabulary policy."""
    for option in reversed((
        click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path),
                     help="Draft with a compiled bundle (`evospec compile`) instead of --drafter."),
        click.option("--vocab", "vocab_policy", default=None,
                     help="With --bundle: the drafter's active vocabulary policy (full, eagle3, frspec:K, dynaspec:K:C, "
                          "evospec:K, evospec:K:VARIANT); a +align suffix adds EvoSpec's online alignment "
                          "(evospec:K+align)."),
        click.option("--frequencies", type=click.Path(path_type=Path), default=None,
                     help="Token-frequency file for frspec:K and evospec:K (`evospec vocab frequencies`)."),
    )):
        command = option(command)
    return command
