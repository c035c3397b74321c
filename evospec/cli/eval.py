"""Commands that measure: ``bench`` and ``profile stages|vocab|align``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from evospec.cli.bundle import compile_settings
from evospec.cli.options import bundle_options, check_runtimes_need_bundle
from evospec.cli.output import emit_report
from evospec.core.errors import SettingsError
from evospec.core.settings import DecodeSettings


@click.command()
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="HF causal LM directory.")
@click.option("--drafter", "drafter_dir", type=click.Path(path_type=Path), help="EAGLE-3 drafter directory.")
@bundle_options
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus folder: <domain>/test/*.txt|jsonl.")
@click.option("--domains", default=None, help="Comma-separated domains (default: all in the corpus).")
@click.option("--prompts", type=int, default=8, show_default=True, help="Prompts per domain.")
@click.option("--prompt-tokens", type=int, default=64, show_default=True, help="Tokens per prompt.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--draft-tree", type=click.Choice(["chain", "tree"]), default=None)
@click.option("--draft-depth", type=int, default=None)
@click.option("--draft-topk", type=int, default=None)
@click.option("--draft-tokens", type=int, default=None)
@click.option("--draft-budget", type=click.Choice(["fixed", "auto"]), default=None,
              help="auto: nodes kept by value under step costs measured online, at most the fixed tree; on a tree, "
                   "each step drafts the chain or the tree, whichever delivered more tokens per ms lately.")
@click.option("--draft-spine/--no-draft-spine", default=None,
              help="auto on a tree: keep the first-choice path to --draft-depth whatever it is worth and price only "
                   "the nodes off it [default: on]; --no-draft-spine lets the rule price the path too.")
@click.option("--draft-siblings", type=click.IntRange(min=0), default=None,
              help="Greedy chain: also verify the drafter's second choice at each of the first N levels, as a leaf "
                   "beside the chain (no drafter call: one more verified row each) [default: 0].")
@click.option("--draft-sibling-ratio", type=float, default=None,
              help="With --draft-siblings: keep a level's second choice only where the drafter's first choice there "
                   "is less than this many times as likely [default: 0: every level's].")
@click.option("--tree-children", type=click.Choice(["auto", "sampled", "topk"]), default=None,
              help="Sampling with a tree: sampled children (drawn without replacement, recursive rejection) or the "
                   "drafter's top-k [default: auto: sampled with Python's drafter, top-k with the C++ library].")
@click.option("--verifier", type=click.Choice(["auto", "python", "native"]), default=None,
              help="Who verifies sampled steps: python, or native (the C++ library's verifier: the same law, less time "
                   "a step; `make cpp`) [default: auto: native when the C++ library drafts].")
@click.option("--plain-fallback/--no-plain-fallback", default=None,
              help="Speculative rows: take plain steps wherever they lately delivered more tokens per ms than "
                   "speculative ones [default: off: every step speculates].")
@click.option("--temperature", type=float, default=None, help="0 = greedy (default); > 0 = exact sampling.")
@click.option("--top-p", type=float, default=None, help="Nucleus filter on the target's distribution.")
@click.option("--seed", type=int, default=None, help="Seed of drafting samples and acceptance tests.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the rows as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a PNG plot here.")
@click.option("--tap-numbering", type=click.Choice(["input", "output"]), default="input", show_default=True,
              help="How the drafter's config counts eagle_aux_hidden_state_layer_ids: input of layer i (EAGLE, vLLM) "
                   "or output of layer i (SGLang, so SpecForge checkpoints).")
@click.option("--engine", type=click.Choice(["evospec", "vllm", "both"]), default="evospec", show_default=True,
              help="evospec: this runtime. vllm: vLLM's CPU engine on the same prompts (plain and EAGLE-3; this "
                   "runtime decodes only the plain reference). both: side by side. vLLM needs `make vllm-setup`.")
@click.option("--vllm-drafter", type=click.Path(path_type=Path), default=None,
              help="Drafter directory vLLM loads (default: --drafter exported with `evospec export --format vllm`).")
@click.option("--batch", "batch_sizes", default="1", show_default=True,
              help="vLLM: comma-separated batch sizes (this runtime decodes one request at a time).")
@click.option("--vllm-threads", type=int, default=None,
              help="vLLM: OpenMP threads bound to cores 0..N-1 (default: vLLM's auto binding).")
@click.option("--vllm-compile/--vllm-eager", default=True, show_default=True,
              help="vLLM: torch.compile its model (its serving default, and its fastest here) or run eager "
                   "(starts in seconds instead of minutes).")
@click.option("--breakdown", is_flag=True, help="Also print where each step's time went (ms per step by part).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="This runtime: torch intra-op threads (default: torch's own choice, one per core). A tiny "
                   "model's step is many small calls, where one thread can beat two.")
def bench(target_dir, drafter_dir, bundle_dir, vocab_policy, frequencies, drafter_runtime, policy_runtime, router,
          evospec_config, corpus, domains, prompts, prompt_tokens,
          json_path, plot_path, device, dtype, tap_numbering, engine, vllm_drafter, batch_sizes, vllm_threads,
          vllm_compile, breakdown, threads, **values):
    """Acceptance and speed per domain: speculative (eagle3) against plain decoding, here and/or in vLLM."""
    from rich.progress import Progress

    from evospec.data.corpus import corpus_domains
    from evospec.eval.bench import BenchSettings, bench_plot, plain_steps_report, rows_json, rows_table, run_bench
    from evospec.eval.divergence import parted_report
    from evospec.runtime.generator import SpeculativeGenerator

    if (drafter_dir is None) == (bundle_dir is None):
        raise click.UsageError("give --drafter or --bundle (one of them)")
    if vocab_policy is not None and engine != "evospec":
        raise click.UsageError("--vocab is this runtime's policy; vLLM serves a fixed export (--vllm-drafter DIR from "
                               "`evospec export --format vllm --vocab ...`): compare policies with --engine evospec")
    if (vocab_policy, frequencies, router, evospec_config) != (None,) * 4 and bundle_dir is None:
        raise click.UsageError("--vocab, --frequencies, --router and --evospec-config need --bundle: policies "
                               "choose rows of its reservoir")
    check_runtimes_need_bundle(bundle_dir, drafter_runtime, policy_runtime)
    if values.get("draft_siblings") and engine != "evospec":
        raise click.UsageError("--draft-siblings is this runtime's draft shape; vLLM drafts a plain chain: compare "
                               "shapes with --engine evospec")
    vllm_source = drafter_dir if bundle_dir is None else bundle_dir / "drafter"  # a bundle carries its drafter's copy
    decode = DecodeSettings(**{k: v for k, v in values.items() if v is not None})
    chosen = tuple(d for d in domains.split(",") if d) if domains else None
    settings = BenchSettings(domains=chosen, prompts=prompts, prompt_tokens=prompt_tokens)
    vllm_settings = None
    if engine != "evospec":
        from evospec.eval.vllm_engine import VllmSettings, check_head_sizes, vllm_missing_reason

        vllm_settings = VllmSettings(batch_sizes=tuple(_number_list(batch_sizes, "--batch", int, 1)),
                                     threads=vllm_threads, compile=vllm_compile)
        if (reason := vllm_missing_reason()) is not None:
            raise SettingsError(reason)
        check_head_sizes(target_dir, vllm_drafter or vllm_source)  # before minutes of decoding, not after
    total = prompts * len(chosen or corpus_domains(corpus))
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    click.echo(f"this runtime: {torch.get_num_threads()} torch threads")
    if bundle_dir is not None:
        generator = SpeculativeGenerator.from_bundle(bundle_dir, target_dir, device=device, dtype=dtype,
                                                     vocab=vocab_policy, frequencies=frequencies, router=router,
                                                     evospec_config=evospec_config, drafter_runtime=drafter_runtime,
                                                     threads=threads or 0, policy_runtime=policy_runtime)
    else:
        generator = SpeculativeGenerator.from_paths(target_dir, drafter_dir, device=device, dtype=dtype,
                                                    tap_numbering=tap_numbering)
    with Progress(transient=True) as bar:
        task = bar.add_task("bench", total=total)
        run = run_bench(generator, str(corpus), decode, settings, lambda domain: bar.update(task, advance=1),
                        speculative=engine != "vllm")
    rows = run.rows
    if vllm_settings is not None:
        rows += _vllm_rows(target_dir, vllm_source, vllm_drafter, tap_numbering, run, decode, vllm_settings,
                           generator.target.eos_token_ids)
    table = rows_table(rows) + parted_report([(f"{r.domain} ({r.engine})", r.first_difference)
                                              for r in rows if r.first_difference]) + plain_steps_report(rows)
    if breakdown:
        from evospec.eval.bench import breakdown_table

        table += "\n\nms per step, this runtime (draft = trunk + head; head includes choosing tokens and building the tree):\n" + breakdown_table(rows)
    emit_report(table, rows_json(rows), json_path, lambda path: bench_plot(rows, path), plot_path)


def _vllm_rows(target_dir, drafter_dir, vllm_drafter, tap_numbering, run, decode, settings, stop_ids) -> list:
    """vLLM's rows on the prompts this runtime decoded, its greedy outputs checked against the plain ones."""
    import os
    import tempfile

    from evospec.bundle.export import export_drafter
    from evospec.eval.vllm_engine import run_vllm

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="evospec-vllm-") as scratch:
        if vllm_drafter is None:  # the same drafter and vocabulary, in the layout and tap numbering vLLM reads
            vllm_drafter = Path(scratch) / "drafter"
            export_drafter(vllm_drafter, "vllm", drafter_dir=Path(drafter_dir), tap_numbering=tap_numbering)
        click.echo(f"vLLM: target {target_dir}, drafter {vllm_drafter}, batch sizes {list(settings.batch_sizes)}")
        return run_vllm(Path(target_dir), Path(vllm_drafter), run.prompts, decode, settings, stop_ids,
                        references=run.plain_outputs)



@click.group("profile")
def profile_group() -> None:
    """Latency profiles (tables + JSON)."""


@profile_group.command("stages")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), help="Profile a compiled bundle's engines.")
@click.option("--synthetic", default=None, help="Or a production shape with random weights: llama3-8b, qwen2-7b, tiny.")
@click.option("--backend", type=click.Choice(["ort", "torch"]), default="ort", show_default=True,
              help="Backend for --synthetic (a bundle uses its own).")
@click.option("--buckets", default="4096,8192,16384,32768", show_default=True, help="Active-set sizes of the head.")
@click.option("--rows", "rows_per_step", type=int, default=8, show_default=True, help="Drafter rows per call (tree width).")
@click.option("--context", type=int, default=512, show_default=True, help="Drafter KV-cache length.")
@click.option("--runs", type=int, default=30, show_default=True)
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: the GPU head benchmark (full head, torch gather+matmul, fused kernel, bandwidth floor) "
                   "and the draft step with and without stream overlap, at --synthetic's shape.")
@click.option("--hidden-rows", default="1,8,16", show_default=True, help="With --device cuda: hidden-state rows per head call.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the rows as JSON here.")
def profile_stages_cmd(bundle_dir, synthetic, backend, buckets, rows_per_step, context, runs, warmup, device,
                       hidden_rows, json_path):
    """Median and p90 latency of trunk, head per bucket, full head, gather and top-k."""
    from rich.console import Console

    from evospec.eval.profile_stages import profile_bundle, profile_synthetic, rows_json, rows_table

    if device == "cuda":
        return _profile_device(synthetic or "llama3-8b", bundle_dir, buckets, hidden_rows, rows_per_step, context, runs,
                               warmup, json_path)
    if (bundle_dir is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --bundle DIR or --synthetic NAME")
    sizes = compile_settings(None, buckets=buckets).buckets
    if runs < 1 or warmup < 0:
        raise SettingsError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    with Console(stderr=True).status("profiling") as status:
        def progress(what: str) -> None:
            status.update(what)

        if synthetic is not None:
            rows = profile_synthetic(synthetic, backend, sizes, rows_per_step, context, runs, warmup, progress)
        else:
            rows = profile_bundle(bundle_dir, sizes if buckets else None, rows_per_step, context, runs, warmup, progress)
    emit_report(rows_table(rows), rows_json(rows), json_path)


def _profile_device(synthetic, bundle_dir, buckets, hidden_rows, rows_per_step, context, runs, warmup, json_path) -> None:
    from rich.console import Console

    from evospec.eval.profile_device import (
        device_json,
        device_table,
        profile_device_heads,
        profile_device_step,
        resolve_device,
    )

    if bundle_dir is not None:
        raise click.UsageError("--device cuda profiles a --synthetic shape, not a bundle")
    sizes = compile_settings(None, buckets=buckets).buckets
    try:
        rows_list = tuple(int(x) for x in hidden_rows.split(",") if x)
    except ValueError:
        raise SettingsError(f"--hidden-rows must be comma-separated integers (got {hidden_rows!r})") from None
    if not rows_list or not all(1 <= r <= 64 for r in rows_list):
        raise SettingsError(f"--hidden-rows must be integers in 1..64 (got {hidden_rows!r})")
    device = resolve_device("cuda")
    with Console(stderr=True).status("profiling on the GPU") as status:
        def progress(what: str) -> None:
            status.update(what)

        rows = profile_device_heads(synthetic, device, sizes, rows_list, runs=runs, warmup=warmup, progress=progress)
        step_size = 16384 if 16384 in sizes else sizes[len(sizes) // 2]
        rows += profile_device_step(synthetic, device, active=step_size, n=rows_per_step, context=context, runs=runs,
                                    warmup=warmup, progress=progress)
    emit_report(device_table(rows), device_json(rows), json_path)

@profile_group.command("vocab")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path), help="Compiled bundle.")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="Its target.")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus folder (<domain>/test/...).")
@click.option("--policies", default="eagle3,frspec:K,evospec:K", show_default=True,
              help="Comma list; K in a name is replaced by each of --sizes (full always runs: shares are of it); "
                   "evospec:K:VARIANT runs a variant of --evospec-config, a +align suffix adds online alignment.")
@click.option("--sizes", default="16384", show_default=True, help="Active sizes K for policies named with K.")
@click.option("--frequencies", type=click.Path(path_type=Path), default=None, help="For frspec:K and evospec:K.")
@click.option("--list", "lists", multiple=True, metavar="NAME=FILE",
              help="A named frequency list (repeatable): policy NAME@LIST builds from it, e.g. frspec:K@general.")
@click.option("--router", type=click.Path(path_type=Path), default=None, help="For dynaspec:K:C (`evospec vocab dynaspec`).")
@click.option("--evospec-config", type=click.Path(path_type=Path), default=None,
              help="TOML of EvoSpec's settings and variants (template: configs/evospec.toml; default: built-in).")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True,
              help="Corpus split of the prompts and replayed text: valid to tune settings, test to report.")
@click.option("--domains", default=None, help="Comma-separated domains (default: all).")
@click.option("--prompts", type=int, default=4, show_default=True)
@click.option("--prompt-tokens", type=int, default=64, show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--draft-depth", type=int, default=5, show_default=True)
@click.option("--temperature", "temperatures", default="0", show_default=True,
              help="Comma list of temperatures, each a full run (0 = greedy), e.g. 0,1.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--replay-tokens", type=int, default=8192, show_default=True,
              help="Test-text tokens per domain replayed for text coverage.")
@click.option("--stages", "stages_path", type=click.Path(path_type=Path), default=None,
              help="`profile stages --json` output at a production shape: adds a projected speedup column.")
@click.option("--target-layers", type=int, default=32, show_default=True,
              help="With --stages: decoder layers of the production target (verification cost = layers x trunk).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Rows as JSON; the K sweep beside it (.sweep.json).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Share of full tau vs K, a panel per domain.")
def profile_vocab_cmd(bundle_dir, target_dir, corpus, policies, sizes, frequencies, lists, router, evospec_config, split,
                      domains, prompts,
                      prompt_tokens, max_new_tokens, draft_depth, temperatures, top_p, seed, replay_tokens, stages_path,
                      target_layers, json_path, plot_path):
    """Acceptance and coverage of each vocabulary policy per domain and temperature (chain drafting), with K sweeps."""
    from rich.console import Console

    from evospec.core.atomic import write_text_atomic
    from evospec.core.settings import DecodeSettings
    from evospec.eval.bench import BenchSettings
    from evospec.eval.profile_vocab import (
        StageCosts,
        expand_policies,
        project_speedups,
        run_profile_vocab,
        vocab_json,
        vocab_table,
    )
    from evospec.eval.vocab_sweep import sweep_json, sweep_plot, sweep_rows, sweep_table
    from evospec.runtime.generator import SpeculativeGenerator
    from evospec.runtime.vocab.evospec_settings import EvoSpecConfig

    chosen = tuple(d for d in domains.split(",") if d) if domains else None
    settings = BenchSettings(domains=chosen, prompts=prompts, prompt_tokens=prompt_tokens, split=split)
    ks = _number_list(sizes, "--sizes", int, minimum=1)
    temps = _number_list(temperatures, "--temperature", float)
    decodes = [DecodeSettings(max_new_tokens=max_new_tokens, draft_tree="chain", draft_depth=draft_depth,
                              temperature=t, top_p=top_p, seed=seed) for t in temps]  # bad values fail here
    names = expand_policies([p for p in policies.split(",") if p], ks)
    named_lists = _named_files(lists, "--list")
    costs = StageCosts.load(str(stages_path)) if stages_path is not None else None  # before the long run
    evospec = EvoSpecConfig.load(evospec_config)
    generator = SpeculativeGenerator.from_bundle(bundle_dir, target_dir)
    with Console(stderr=True).status("profiling vocabularies") as status:
        rows = run_profile_vocab(generator, str(corpus), names, str(frequencies) if frequencies else None,
                                 str(router) if router else None, decodes, settings, replay_tokens,
                                 lambda what: status.update(what), named_lists, evospec)
    if costs is not None:
        project_speedups(rows, costs, target_layers, draft_depth)
        click.echo(f"projected x: PROJECTION at the shape of {stages_path} (verification = {target_layers} x trunk "
                   "+ full head), from the measured tau; not a measured speed-up")
    sweep = sweep_rows(rows)
    emit_report(vocab_table(rows), vocab_json(rows), json_path, lambda path: sweep_plot(sweep, path), plot_path)
    click.echo(sweep_table(sweep))
    if json_path is not None:
        sweep_path = Path(json_path).with_suffix(".sweep.json")
        write_text_atomic(sweep_path, json.dumps(sweep_json(sweep), indent=2))
        click.echo(f"wrote {sweep_path}")


def _named_files(values: tuple[str, ...], option: str) -> dict[str, str]:
    named = {}
    for value in values:
        name, eq, path = value.partition("=")
        if not eq or not name or not path:
            raise click.BadParameter(f"expected NAME=FILE, got {value!r}", param_hint=option)
        if not Path(path).is_file():
            raise click.BadParameter(f"{path}: no such file", param_hint=option)
        named[name] = path
    return named


def _number_list(text: str, option: str, cast: type, minimum: float | None = None) -> list:
    """Comma-separated numbers of one type (``int`` or ``float``), or a one-line usage error naming the option."""
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {cast.__name__}s, got {text!r}", param_hint=option) from None
    if not values or (minimum is not None and min(values) < minimum):
        raise click.BadParameter(f"expected at least one value{'' if minimum is None else f' >= {minimum}'}, "
                                 f"got {text!r}", param_hint=option)
    return values


@profile_group.command("align")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), help="ort or torch bundle.")
@click.option("--drafter", "drafter_dir", type=click.Path(path_type=Path),
              help="Or an EAGLE-3 drafter checkpoint, staged in memory (torch) instead of a bundle.")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path))
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus with topic-switch streams.")
@click.option("--methods", default="none,osd,evospec,evospec-nocurriculum", show_default=True,
              help="Comma list of: none, osd, osd-reservoir, evospec, evospec-nocurriculum, evospec-norm, "
                   "evospec-sync (NAME:LR sets a learning rate).")
@click.option("--streams", type=int, default=2, show_default=True)
@click.option("--chunk", type=int, default=32, show_default=True, help="Tokens generated per call along a stream.")
@click.option("--json", "json_path", type=click.Path(path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(path_type=Path))
def profile_align_cmd(bundle_dir, drafter_dir, target_dir, corpus, methods, streams, chunk, json_path, plot_path):
    """Acceptance over topic-switch streams with each online-alignment method, and the memory each adds."""
    from rich.console import Console

    from evospec.eval.profile_align import align_json, align_plot, align_table, run_profile_align

    if (bundle_dir is None) == (drafter_dir is None):
        raise click.UsageError("give exactly one of --bundle DIR or --drafter DIR")
    with Console(stderr=True).status("profiling alignment") as status:
        rows = run_profile_align(None if bundle_dir is None else str(bundle_dir), str(target_dir), str(corpus),
                                 [m for m in methods.split(",") if m], streams, chunk,
                                 progress=lambda what: status.update(what),
                                 drafter=None if drafter_dir is None else str(drafter_dir))
    emit_report(align_table(rows), align_json(rows), json_path, lambda path: align_plot(rows, path), plot_path)
