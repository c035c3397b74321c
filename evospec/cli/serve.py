"""``evospec serve``: vLLM's OpenAI-compatible server with an EAGLE-3 drafter and the EvoSpec plugin;
``evospec loadtest``: the real ``openai`` client against such servers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click


@click.command("serve")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="HuggingFace target directory.")
@click.option("--drafter", "drafter_dir", type=click.Path(path_type=Path), default=None,
              help="Drafter vLLM loads: an `evospec export --format vllm` output (with --vocab: any EAGLE-3 checkpoint, "
                   "exported first). Omit to serve without speculation.")
@click.option("--vocab", default=None,
              help="Export --drafter first with this draft vocabulary: eagle3, frspec:K or evospec:K (the living "
                   "vocabulary, served by the plugin); +align (evospec:K+align) also trains its rows online.")
@click.option("--frequencies", type=click.Path(path_type=Path), default=None,
              help="With --vocab frspec:K or evospec:K: the frequency file (`evospec vocab frequencies`).")
@click.option("--export-dir", type=click.Path(path_type=Path), default=None,
              help="Where --vocab writes the exported drafter [default: a folder under the system's temp directory].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port of the OpenAI-compatible API.")
@click.option("--replicas", type=int, default=1, show_default=True,
              help="Engine replicas behind the one endpoint (vLLM data parallel).")
@click.option("--draft-depth", type=int, default=5, show_default=True, help="Draft tokens per step.")
@click.option("--max-model-len", type=int, default=None, help="Longest prompt + output [default: the target's].")
@click.option("--max-num-seqs", type=int, default=16, show_default=True, help="Requests batched at most.")
@click.option("--kv-cache-gib", type=int, default=1, show_default=True, help="KV cache of vLLM's CPU build, GiB.")
@click.option("--eager", is_flag=True, help="Skip torch.compile: starts faster, decodes slower.")
@click.option("--served-model-name", default=None, help="Model name clients send [default: the target folder's name].")
@click.option("--print-command", is_flag=True, help="Print the exact `vllm serve` line and exit.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def serve_cmd(target_dir, drafter_dir, vocab, frequencies, export_dir, host, port, replicas, draft_depth, max_model_len,
              max_num_seqs, kv_cache_gib, eager, served_model_name, print_command, extra):
    """Serve the target with speculative decoding on vLLM's OpenAI-compatible API (/v1/completions,
    /v1/chat/completions, streaming, /metrics). Arguments after `--` go to `vllm serve` unchanged."""
    from evospec.core.errors import SettingsError
    from evospec.serving.server import ServeSettings, check_inputs, printable, serve, vllm_executable

    if vocab is not None:
        if drafter_dir is None:
            raise SettingsError("--vocab exports --drafter: give the EAGLE-3 checkpoint with --drafter")
        export_dir = export_dir or Path(tempfile.gettempdir()) / f"evospec-serve-{drafter_dir.name}-{vocab.replace(':', '-')}"
        if not print_command:
            from evospec.bundle.export import export_drafter

            summary = export_drafter(export_dir, "vllm", vocab, drafter_dir=drafter_dir, frequencies=frequencies)
            click.echo(f"exported {drafter_dir} with vocab {vocab} ({summary.draft_vocab_size} draft tokens) to {export_dir}",
                       err=True)
        drafter_dir = export_dir
    settings = ServeSettings(target=target_dir, drafter=drafter_dir, host=host, port=port, replicas=replicas,
                             draft_depth=draft_depth, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                             kv_cache_gib=kv_cache_gib, eager=eager, served_model_name=served_model_name,
                             extra=tuple(extra))
    if print_command:
        if vocab is None:
            check_inputs(settings)
        click.echo(printable(settings, vllm_executable()))
        return
    serve(settings)


def _methods(values: tuple[str, ...]) -> list[tuple[str, Path | None]]:
    from evospec.core.errors import SettingsError

    methods = []
    for value in values:
        name, _, directory = value.partition("=")
        if name == "plain" and not directory:
            methods.append(("plain", None))
        elif name and directory:
            methods.append((name, Path(directory)))
        else:
            raise SettingsError(f"--method {value!r}: expected plain or NAME=DRAFTER_DIR (e.g. evospec=out/living)")
    if len({m for m, _ in methods}) != len(methods):
        raise SettingsError("--method names must differ")
    return methods


@click.command("loadtest")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="HuggingFace target directory.")
@click.option("--method", "methods", multiple=True, required=True,
              help="plain (no speculation) or NAME=DRAFTER_DIR (an `evospec export --format vllm` output); repeat. "
                   "Put plain first: later methods are also compared with its outputs.")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus folder the prompts come from.")
@click.option("--domain", default="code", show_default=True, help="Corpus domain of the prompts.")
@click.option("--split", default="test", show_default=True, help="Corpus split of the prompts.")
@click.option("--requests", type=int, default=32, show_default=True, help="Requests per cell.")
@click.option("--prompt-tokens", type=int, default=64, show_default=True, help="Tokens per prompt.")
@click.option("--max-tokens", type=int, default=64, show_default=True, help="Tokens each request decodes.")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma-separated concurrencies, a cell each.")
@click.option("--draft-depth", type=int, default=5, show_default=True, help="Draft tokens per step.")
@click.option("--eager/--compile", default=False, show_default=True,
              help="Run vLLM eager (starts fast) or compiled (vLLM's default, faster decoding).")
@click.option("--kv-cache-gib", type=int, default=1, show_default=True, help="KV cache of vLLM's CPU build, GiB.")
@click.option("--replicas", type=int, default=1, show_default=True,
              help="Engine replicas behind each server's one endpoint (vLLM data parallel).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the rows as JSON.")
@click.option("--logs", type=click.Path(path_type=Path), default=Path("loadtest-logs"), show_default=True,
              help="Folder for each server's log.")
def loadtest_cmd(target_dir, methods, corpus, domain, split, requests, prompt_tokens, max_tokens, concurrency,
                 draft_depth, eager, kv_cache_gib, replicas, json_path, logs):
    """Stream completions with the openai client against vLLM servers (one per method): tokens/s, p50/p99
    latency, acceptance per position from /metrics, and every T=0 response checked against the target's
    greedy output."""
    import importlib.util
    import platform

    from evospec.core.errors import SettingsError
    from evospec.eval.loadtest import (
        LoadSettings,
        corpus_prompts,
        greedy_reference,
        rows_table,
        run_method,
        summary_line,
        write_rows,
    )
    from evospec.serving.process import free_port
    from evospec.serving.server import SETUP_HINT, ServeSettings

    if importlib.util.find_spec("openai") is None or importlib.util.find_spec("vllm") is None:
        raise SettingsError(f"loadtest needs vllm and the openai client in this environment; {SETUP_HINT}")
    chosen = _methods(methods)
    try:
        levels = tuple(int(c) for c in concurrency.split(",") if c)
    except ValueError:
        raise SettingsError(f"--concurrency {concurrency!r}: expected comma-separated integers") from None
    settings = LoadSettings(concurrency=levels, requests=requests, max_tokens=max_tokens)
    prompts = corpus_prompts(target_dir, corpus, domain, requests, prompt_tokens, split)
    click.echo(f"{len(prompts)} prompts of {prompt_tokens} tokens from {corpus}/{domain}/{split}; target greedy "
               "references ...", err=True)
    reference = greedy_reference(target_dir, prompts, max_tokens)
    rows, plain, startups = [], None, {}
    for name, drafter in chosen:
        serve = ServeSettings(target=target_dir, drafter=drafter, port=free_port(), draft_depth=draft_depth,
                              max_model_len=prompt_tokens + max_tokens + draft_depth + 16, max_num_seqs=max(levels),
                              kv_cache_gib=kv_cache_gib, eager=eager, served_model_name="target", replicas=replicas)
        click.echo(f"{name}: serving on port {serve.port} (log {logs / f'{name}.log'})", err=True)
        cells, outputs, startups[name] = run_method(
            name, serve, prompts, settings, reference, plain, logs.resolve() / f"{name}.log",
            progress=lambda r: click.echo(f"  {r.method} x{r.concurrency}: {r.tokens_per_second:.1f} tok/s", err=True))
        rows += cells
        if name == "plain":
            plain = outputs
    click.echo(rows_table(rows))
    click.echo(summary_line(rows))
    if json_path is not None:
        meta = {"target": str(target_dir), "methods": {n: str(d) if d else None for n, d in chosen},
                "corpus": str(corpus), "domain": domain, "split": split, "requests": requests,
                "prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "draft_depth": draft_depth,
                "eager": eager, "replicas": replicas, "startup_s": startups, "machine": f"{platform.machine()}, shared 2-core CPU host"}
        write_rows(json_path, rows, meta)
        click.echo(f"wrote {json_path}")


@click.command("soak")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="HuggingFace target directory.")
@click.option("--drafter", "drafter_dir", type=click.Path(path_type=Path), default=None,
              help="Drafter directory (an `evospec export --format vllm` output); omit for no speculation.")
@click.option("--corpus", required=True, type=click.Path(path_type=Path), help="Corpus folder the prompts come from.")
@click.option("--domain", default="code", show_default=True, help="Corpus domain of the prompts.")
@click.option("--prompts", "prompt_count", type=int, default=16, show_default=True, help="Distinct prompts in the pool.")
@click.option("--prompt-tokens", type=int, default=48, show_default=True, help="Tokens per prompt.")
@click.option("--requests", type=int, default=1000, show_default=True, help="Requests after warm-up.")
@click.option("--warmup", type=int, default=50, show_default=True, help="Requests before the memory baseline.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Requests in flight.")
@click.option("--max-tokens", type=int, default=96, show_default=True, help="Longest request (each draws 1..this).")
@click.option("--sampled-share", type=float, default=0.3, show_default=True,
              help="Share of requests sampled at T>0 (the rest are greedy and checked for exactness).")
@click.option("--cancel-share", type=float, default=0.1, show_default=True, help="Share cancelled mid-stream.")
@click.option("--malformed-share", type=float, default=0.05, show_default=True, help="Share of malformed requests.")
@click.option("--replicas", type=int, default=1, show_default=True, help="Engine replicas (vLLM data parallel).")
@click.option("--draft-depth", type=int, default=5, show_default=True, help="Draft tokens per step.")
@click.option("--eager/--compile", default=False, show_default=True, help="vLLM eager or compiled.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=Path("soak-server.log"), show_default=True,
              help="The server's log.")
def soak_cmd(target_dir, drafter_dir, corpus, domain, prompt_count, prompt_tokens, requests, warmup, concurrency,
             max_tokens, sampled_share, cancel_share, malformed_share, replicas, draft_depth, eager, json_path, log_path):
    """Mixed requests (lengths, temperatures, cancellations mid-stream, malformed ones) against one server:
    none lost, T=0 exact, malformed -> 4xx, still healthy, resident memory within +-5% after warm-up."""
    import importlib.util
    import json as json_module

    from evospec.core.errors import SettingsError
    from evospec.eval.loadtest import corpus_prompts, greedy_reference
    from evospec.eval.soak import SoakSettings, run_soak, write_report
    from evospec.serving.process import free_port
    from evospec.serving.server import SETUP_HINT, ServeSettings

    if importlib.util.find_spec("openai") is None or importlib.util.find_spec("vllm") is None:
        raise SettingsError(f"soak needs vllm and the openai client in this environment; {SETUP_HINT}")
    settings = SoakSettings(requests=requests, warmup=warmup, concurrency=concurrency, max_tokens=max_tokens,
                            cancel_share=cancel_share, malformed_share=malformed_share, sampled_share=sampled_share)
    prompts = corpus_prompts(target_dir, corpus, domain, prompt_count, prompt_tokens)
    reference = greedy_reference(target_dir, prompts, max_tokens)
    vocab_size = int(json_module.loads((Path(target_dir) / "config.json").read_text())["vocab_size"])
    serve = ServeSettings(target=target_dir, drafter=drafter_dir, port=free_port(), replicas=replicas,
                          draft_depth=draft_depth, max_model_len=prompt_tokens + max_tokens + draft_depth + 16,
                          max_num_seqs=concurrency, eager=eager, served_model_name="target")
    report = run_soak(serve, settings, prompts, reference, vocab_size, log_path.resolve(),
                      progress=lambda done, r: click.echo(f"  {done} requests: {r.completed} completed, {r.cancelled} "
                                                          f"cancelled, {r.malformed_4xx}/{r.malformed} malformed -> 4xx, "
                                                          f"{len(r.lost)} lost, RSS {r.rss_samples_mb[-1]:.0f} MB",
                                                          err=True))
    click.echo(f"{report.requests} requests in {report.wall_s:.0f} s: {report.completed} completed "
               f"({report.exact_greedy}/{report.greedy} T=0 equal to the target's greedy), {report.cancelled} cancelled, "
               f"{report.malformed_4xx}/{report.malformed} malformed -> 4xx, {len(report.lost)} lost; healthy at the end: "
               f"{report.healthy_at_end}; RSS {report.rss_baseline_mb:.0f} MB after warm-up, max change "
               f"{100 * report.rss_max_change:.1f}%")
    for line in (report.lost + report.wrong_status)[:10]:
        click.echo(f"  {line}")
    if json_path is not None:
        write_report(json_path, report, settings, {"target": str(target_dir), "drafter": str(drafter_dir),
                                                   "replicas": replicas, "eager": eager})
        click.echo(f"wrote {json_path}")
    if not report.passed(settings.rss_band):
        click.echo("soak: FAILED (see above)", err=True)
        raise click.exceptions.Exit(1)
