"""Commands over compiled bundles: ``compile``, ``inspect``, ``doctor``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import click

from evospec.core.errors import SettingsError


def compile_settings(config_path: Path | None, **flags):
    """``[compile]`` table of a TOML file, then the command-line flags that were given."""
    from evospec.passes.base import CompileSettings

    values: dict = {}
    if config_path is not None:
        try:
            values = dict(tomllib.loads(Path(config_path).read_text()).get("compile", {}))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config file {config_path}: {exc}") from None
        unknown = sorted(set(values) - set(CompileSettings.__dataclass_fields__))
        if unknown:
            raise SettingsError(f"config file {config_path}: unknown [compile] keys {unknown}")
    values.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(values.get("buckets"), str):
        try:
            values["buckets"] = tuple(int(b) for b in values["buckets"].split(",") if b)
        except ValueError:
            raise SettingsError(f"--buckets expects comma-separated integers, got {values['buckets']!r}") from None
    if "buckets" in values:
        values["buckets"] = tuple(values["buckets"])
    return CompileSettings(**values)


@click.command("compile")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="HF causal LM directory.")
@click.option("--drafter", "drafter_dir", required=True, type=click.Path(path_type=Path), help="EAGLE-3 drafter directory.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write (atomically).")
@click.option("--backend", type=click.Choice(["ort", "tensorrt", "torch"]), default=None, help="Engine backend [ort].")
@click.option("--buckets", default=None, help="Active-set sizes of the head, e.g. 4096,8192,16384,32768.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None, help="Engine precision [fp32].")
@click.option("--index-dims", type=int, default=None,
              help="Dimensions of the semantic (USearch) index over the reservoir [64]; 0 leaves it out.")
@click.option("--mass-clusters", type=int, default=None,
              help="Clusters of the mass index (evospec:K's tail fill by the drafter's estimated mass) [2048]; 0 leaves it out.")
@click.option("--frequencies", type=click.Path(path_type=Path), default=None,
              help="Token-frequency file (`evospec vocab frequencies --successors 8`) to carry in the bundle.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML file with a [compile] table.")
@click.option("--tap-numbering", type=click.Choice(["input", "output"]), default=None,
              help="How the drafter's config counts eagle_aux_hidden_state_layer_ids: input of layer i (EAGLE, vLLM) "
                   "or output of layer i (SGLang, so SpecForge checkpoints) [input].")
def compile_cmd(target_dir, drafter_dir, out, backend, buckets, precision, index_dims, mass_clusters, frequencies,
                config_path, tap_numbering):
    """Split the drafter into trunk + LM-head stages, export ONNX, build engines, check parity, write a bundle."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from evospec.bundle.compile import compile_bundle

    settings = compile_settings(config_path, backend=backend, buckets=buckets, precision=precision, index_dims=index_dims,
                                mass_clusters=mass_clusters, frequencies=str(frequencies) if frequencies else None, tap_numbering=tap_numbering)
    if settings.backend == "ort" and settings.precision == "fp16":
        raise SettingsError("fp16 is a TensorRT build flag here; ONNX Runtime bundles are fp32 (use --backend tensorrt)")
    with Progress(TextColumn("compile"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.description}"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=None)

        def on_pass(name: str, index: int, total: int) -> None:
            bar.update(task, total=total, completed=index, description=name)

        manifest = compile_bundle(target_dir, drafter_dir, out, settings, on_pass=on_pass)
    for record in manifest["passes"]:
        click.echo(f"{record['name']:<16} {record['seconds']:>7.2f}s  {record['summary']}")
    click.echo(f"wrote {out}")


@click.command("inspect")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect_cmd(bundle, as_json):
    """Show a bundle: inputs, shapes, buckets, passes, files and the parity report."""
    from evospec.bundle.inspect import manifest_report
    from evospec.runtime.bundle import read_manifest

    manifest = read_manifest(bundle)
    click.echo(json.dumps(manifest, indent=2) if as_json else manifest_report(manifest))


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor_cmd(as_json):
    """Which backends and devices this machine has, and why each missing one is missing."""
    from evospec.bundle.doctor import doctor_rows

    rows = doctor_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["component"]) for r in rows)
    for r in rows:
        click.echo(f"{r['component']:<{width}}  {'yes' if r['available'] else 'no ':<3}  {r['detail']}")


@click.command("export")
@click.option("--drafter", "drafter_dir", type=click.Path(path_type=Path), help="An EAGLE-3 checkpoint to export.")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path),
              help="Or a compiled bundle: its drafter, and reservoir rows for tokens outside the drafter's vocabulary.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Drafter directory to write (atomically).")
@click.option("--format", "fmt", type=click.Choice(["eagle", "vllm", "sglang"]), required=True,
              help="The engine that will load it (taps in its numbering; sglang also writes its token map).")
@click.option("--vocab", default="eagle3", show_default=True,
              help="Draft vocabulary: eagle3 (the drafter's own), frspec:K (K most frequent tokens), a file of token "
                   "ids (JSON list or torch.save'd list), or with --format vllm evospec:K: a living vocabulary of K "
                   "resident rows for the EvoSpec vLLM plugin (`evospec serve`); a +align suffix (evospec:K+align, "
                   "frspec:K+align) also trains those rows online from what vLLM verifies.")
@click.option("--frequencies", type=click.Path(path_type=Path), default=None,
              help="For frspec:K and evospec:K: a frequency file (`evospec vocab frequencies`; evospec:K needs "
                   "--successors); a bundle's own is the default.")
@click.option("--tap-numbering", type=click.Choice(["input", "output"]), default="input", show_default=True,
              help="With --drafter: how its config counts taps (output: SGLang/SpecForge).")
def export_cmd(drafter_dir, bundle_dir, out, fmt, vocab, frequencies, tap_numbering):
    """Write a drafter that EAGLE, vLLM or SGLang loads unchanged, with a chosen static vocabulary."""
    from evospec.bundle.export import export_drafter

    summary = export_drafter(out, fmt, vocab, drafter_dir=drafter_dir, bundle_dir=bundle_dir, frequencies=frequencies,
                             tap_numbering=tap_numbering)
    click.echo(f"format {summary.format} · vocab {summary.vocab}: {summary.draft_vocab_size} draft tokens "
               f"({summary.rows_from_drafter} rows from the drafter, {summary.rows_from_reservoir} from the reservoir)")
    click.echo(f"taps written: {summary.tap_ids_written if summary.tap_ids_written is not None else 'none (engine default)'}")
    click.echo(f"wrote {out}: {', '.join(summary.files)}")

