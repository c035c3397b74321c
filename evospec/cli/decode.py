"""Commands that decode: ``generate`` and ``demo`` (and the decoding options they share)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from evospec.cli.options import bundle_options, check_runtimes_need_bundle
from evospec.core.settings import DecodeSettings


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--prompt-ids") from None


_DEFAULTS = DecodeSettings()


def _default(field: str) -> str:
    return f" [default: {getattr(_DEFAULTS, field)}, or the --config file's]"


def decode_options(fn):
    """The decoding options of ``generate`` and ``demo``. Their values default to None so that a --config
    file's [decode] table applies; the help shows the defaults that apply without one."""
    options = [
        click.option("--prompt", help="Prompt text (needs a tokenizer in the target directory)."),
        click.option("--prompt-ids", help="Prompt as comma-separated token ids, e.g. 1,2,3."),
        click.option("--max-new-tokens", type=int, default=None, help="New tokens to generate." + _default("max_new_tokens")),
        click.option("--temperature", type=float, default=None,
                     help="0 = greedy; > 0 = exact sampling." + _default("temperature")),
        click.option("--top-p", type=float, default=None, help="Nucleus filter on the target's distribution." + _default("top_p")),
        click.option("--seed", type=int, default=None, help="Seed of drafting samples and acceptance tests." + _default("seed")),
        click.option("--draft-tree", type=click.Choice(["chain", "tree"]), default=None,
                     help="A chain (one token per level) or EAGLE's dynamic tree." + _default("draft_tree")),
        click.option("--draft-depth", type=int, default=None, help="Draft levels per step." + _default("draft_depth")),
        click.option("--draft-topk", type=int, default=None, help="Children per node in the dynamic tree." + _default("draft_topk")),
        click.option("--draft-tokens", type=int, default=None, help="Nodes kept in the dynamic tree." + _default("draft_tokens")),
        click.option("--draft-budget", type=click.Choice(["fixed", "auto"]), default=None,
                     help="fixed: keep --draft-tokens nodes (a chain: --draft-depth); auto: keep the nodes whose path "
                          "probability pays for their verified row under step costs measured online, at most the "
                          "fixed tree; on a tree, each step drafts the chain instead where chains lately delivered "
                          "more tokens per ms." + _default("draft_budget")),
        click.option("--draft-spine/--no-draft-spine", default=None,
                     help="With --draft-budget auto on a tree: draft the first-choice path to --draft-depth whatever "
                          "it is worth (the tree holds the chain) and let the value rule add only the nodes off it; "
                          "--no-draft-spine lets the rule price the path too." + _default("draft_spine")),
        click.option("--draft-siblings", type=click.IntRange(min=0), default=None,
                     help="Greedy chain: also verify the drafter's second choice at each of the first N levels, as a "
                          "leaf beside the chain (no drafter call: one more verified row each)." + _default("draft_siblings")),
        click.option("--draft-sibling-ratio", type=float, default=None,
                     help="With --draft-siblings: keep a level's second choice only where the drafter's first choice "
                          "there is less than this many times as likely (0: every level's)." + _default("draft_sibling_ratio")),
        click.option("--tree-children", type=click.Choice(["auto", "sampled", "topk"]), default=None,
                     help="Sampling with a tree: sampled draws each node's children from the drafter without "
                          "replacement (recursive rejection; accepts more where the target's law is flat), topk takes "
                          "the drafter's likeliest as fixed tokens; auto: sampled with Python's drafter, topk with the "
                          "C++ library." + _default("tree_children")),
        click.option("--verifier", type=click.Choice(["auto", "python", "native"]), default=None,
                     help="Who verifies sampled steps: python, or native (the C++ library's verifier: the same law, "
                          "less time a step; `make cpp`); auto: native when the C++ library drafts." + _default("verifier")),
        click.option("--plain-fallback/--no-plain-fallback", default=None,
                     help="Take plain steps (verify the newest token alone, draft nothing) wherever they have lately "
                          "delivered more tokens per ms than speculative steps; a few steps of the other kind keep "
                          "both measured." + _default("plain_fallback")),
        click.option("--no-draft", is_flag=True, help="Plain autoregressive decoding through the same loop."),
        click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML file with a [decode] table."),
        click.option("--stream", is_flag=True, help="Print tokens as they are accepted (with --json: one JSON line per token)."),
        click.option("--json", "as_json", is_flag=True, help="End with one JSON line: tokens, text and stats."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Torch CPU threads [default: torch's own, all cores; demo: 1]. Small models decode fastest on "
                          "one thread, and on a busy machine extra threads only wait for each other."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch  # here, not at the top: `evospec --help` and usage errors answer without loading torch

        torch.set_num_threads(threads)


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
    from evospec.cli.stats_table import stats_table

    token_stream = generator.stream(ids, settings)
    tokens: list[int] = []
    shown = ""
    for token in token_stream:
        if stream:
            # decode the whole text so far: a byte-level token may end inside a multi-byte character
            tokens.append(token)
            text = generator.decode(tokens)
            piece = text[len(shown) :] if text is not None else f"{token} "
            shown = text if text is not None else shown
            if as_json:
                click.echo(json.dumps({"token_id": token, "text": piece if text is not None else None}))
            else:
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


@click.command()
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="HF causal LM directory.")
@click.option("--drafter", "drafter_dir", type=click.Path(path_type=Path), help="EAGLE-3 drafter directory.")
@bundle_options
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="float32, float16, bfloat16, float64 or auto.")
@click.option("--tap-numbering", type=click.Choice(["input", "output"]), default="input", show_default=True,
              help="How the drafter's config counts eagle_aux_hidden_state_layer_ids: input of layer i (EAGLE, vLLM) "
                   "or output of layer i (SGLang, so SpecForge checkpoints).")
@decode_options
def generate(target_dir, drafter_dir, bundle_dir, vocab_policy, frequencies, drafter_runtime, policy_runtime, router,
             evospec_config, device, dtype, tap_numbering, prompt, prompt_ids, config_path, no_draft, stream, as_json,
             threads, **values):
    """Generate with speculative decoding (exact: greedy output equals the target's own)."""
    settings = _settings(config_path, no_draft, **values)
    set_threads(threads)
    checked = checked_prompt(prompt, prompt_ids)
    if drafter_dir is not None and bundle_dir is not None:
        raise click.UsageError("give --drafter or --bundle, not both (a bundle carries its drafter)")
    if drafter_dir is None and bundle_dir is None and settings.use_draft:
        raise click.UsageError("--drafter (or --bundle) is required unless --no-draft is given")
    if bundle_dir is not None and tap_numbering != "input":
        raise click.UsageError("--tap-numbering applies to --drafter; a bundle's drafter copy counts taps as EAGLE does "
                               "(give --tap-numbering to `evospec compile`)")
    if vocab_policy is not None and bundle_dir is None:
        raise click.UsageError("--vocab needs --bundle: policies choose rows of a compiled bundle's reservoir")
    check_runtimes_need_bundle(bundle_dir, drafter_runtime, policy_runtime)
    from evospec.runtime.generator import SpeculativeGenerator  # torch and transformers: after the cheap checks

    if bundle_dir is not None and settings.use_draft:
        generator = SpeculativeGenerator.from_bundle(bundle_dir, target_dir, device=device, dtype=dtype,
                                                     vocab=vocab_policy, frequencies=frequencies, router=router,
                                                     evospec_config=evospec_config, drafter_runtime=drafter_runtime,
                                                     threads=threads or 0, policy_runtime=policy_runtime)
    else:
        generator = SpeculativeGenerator.from_paths(target_dir, drafter_dir if settings.use_draft else None,
                                                    device=device, dtype=dtype, tap_numbering=tap_numbering)
    run_generation(generator, prompt_token_ids(generator, checked), settings, stream, as_json)


@click.command()
@click.option("--pair", "pair_dir", type=click.Path(path_type=Path), default=None,
              help="A folder with target/ and drafter/ (from `evospec build-demo` or `evospec reference build`; "
                   "default: the pair shipped with evospec).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@decode_options
def demo(pair_dir, device, prompt, prompt_ids, config_path, no_draft, stream, as_json, threads, **values):
    """Generate with a model pair (default: the built-in small code model and its drafter), then plainly."""
    from evospec.train.demo_pair import demo_generator

    settings = _settings(config_path, no_draft, **values)
    set_threads(1 if threads is None else threads)
    checked = checked_prompt("def " if prompt is None and prompt_ids is None else prompt, prompt_ids)
    generator = demo_generator(pair_dir, device=device)
    ids = prompt_token_ids(generator, checked)
    if not as_json:
        click.echo(f"prompt: {checked!r}")
    generator.generate([0], dataclasses.replace(settings, max_new_tokens=4))  # warm-up, not reported
    result = run_generation(generator, ids, settings, stream, as_json)
    if not as_json and settings.use_draft:
        plain = generator.generate(ids, dataclasses.replace(settings, use_draft=False))
        click.echo(
            f"plain decoding, same prompt: {plain.stats.tokens_per_second:.1f} tokens/s; "
            f"speculative/plain: {result.stats.tokens_per_second / plain.stats.tokens_per_second:.2f}x; "
            f"identical tokens: {plain.token_ids == result.token_ids}"
        )
