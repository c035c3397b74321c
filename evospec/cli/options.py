"""Click options more than one command takes with the same meaning, defined once."""

from __future__ import annotations

from pathlib import Path

import click


def bundle_options(command):
    """``--bundle``, ``--vocab``, ``--frequencies``, ``--drafter-runtime``, ``--policy-runtime``, ``--router``,
    ``--evospec-config``: draft with a compiled bundle under a vocabulary policy, in Python or in the C++ library."""
    for option in reversed((
        click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path),
                     help="Draft with a compiled bundle (`evospec compile`) instead of --drafter."),
        click.option("--vocab", "vocab_policy", default=None,
                     help="With --bundle: the drafter's active vocabulary policy (full, eagle3, frspec:K, dynaspec:K:C, "
                          "evospec:K, evospec:K:VARIANT); a +align suffix adds EvoSpec's online alignment "
                          "(evospec:K+align)."),
        click.option("--frequencies", type=click.Path(path_type=Path), default=None,
                     help="Token-frequency file for frspec:K and evospec:K (`evospec vocab frequencies`)."),
        click.option("--drafter-runtime", type=click.Choice(["python", "cpp"]), default="python", show_default=True,
                     help="With --bundle: draft with Python's stages or with the C++ library (`make cpp`; torch "
                          "bundles; the vocabulary policy runs inside it; verification stays Python's)."),
        click.option("--policy-runtime", type=click.Choice(["python", "cpp"]), default="python", show_default=True,
                     help="With --bundle and Python's drafter: run the vocabulary policy in Python or in the C++ "
                          "library (`make cpp`; the same sets, less time a step; EvoSpec's built-in settings)."),
        click.option("--router", type=click.Path(path_type=Path), default=None,
                     help="Router file for dynaspec:K:C (`evospec vocab dynaspec`)."),
        click.option("--evospec-config", type=click.Path(path_type=Path), default=None,
                     help="TOML of EvoSpec's settings and variants (template: configs/evospec.toml; default: "
                          "built-in)."),
    )):
        command = option(command)
    return command


def check_runtimes_need_bundle(bundle_dir: Path | None, drafter_runtime: str, policy_runtime: str) -> None:
    """The library runtimes of ``bundle_options`` read a compiled bundle: without ``--bundle``, one usage error."""
    if drafter_runtime != "python" and bundle_dir is None:
        raise click.UsageError("--drafter-runtime cpp needs --bundle: the C++ library reads compiled torch bundles")
    if policy_runtime != "python" and bundle_dir is None:
        raise click.UsageError("--policy-runtime cpp needs --bundle: policies choose rows of a compiled bundle's "
                               "reservoir")
