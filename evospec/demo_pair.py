"""The built-in demo pair: a tiny character-level target and an EAGLE-3 drafter distilled on it.

No weights can be downloaded here, so the pair is built from code on first use (about half a
minute on 2 CPU cores, with a progress bar) and cached. The target is a random, bigram-like
Llama (its text is meaningless); the drafter is trained on the target's own outputs with
EAGLE-3's recipe, so acceptance figures are real. Both are written in the standard layouts
(HF directory with tokenizer; EAGLE-3 checkpoint) and loaded back through the normal loaders.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from evospec.atomic import atomic_directory
from evospec.distill import DistillSettings, distill_drafter, sample_sequences
from evospec.runtime.checkpoint import save_drafter
from evospec.runtime.drafter import default_tap_layers
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.target import TargetModel
from evospec.tiny import TinyShape, tiny_drafter, tiny_target

DEMO_VERSION = 1
DEMO_SHAPE = TinyShape(vocab_size=97, hidden_size=32, layers=4, heads=4, kv_heads=2, intermediate_size=64)
DEMO_DRAFT_VOCAB = 64
DEMO_DISTILL = DistillSettings(steps=500, batch_size=16, unroll=2)


def default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "evospec" / f"demo-v{DEMO_VERSION}"


def char_tokenizer():
    """A character-level HF tokenizer over printable ASCII and newline (97 ids)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def build_demo_pair(out: Path) -> Path:
    """Build the pair into ``out/target`` and ``out/drafter`` atomically; returns ``out``."""
    with atomic_directory(out) as tmp:
        model = tiny_target(DEMO_SHAPE, seed=2026, init_std=1.0, layer_scale=0.1)
        model.config.name_or_path = "evospec-demo-target"
        target = TargetModel(model, default_tap_layers(DEMO_SHAPE.layers))
        sequences = sample_sequences(target, 128, 48, seed=1, temperature=0.3)
        counts = Counter(sequences.flatten().tolist())
        frequent = sorted(t for t, _ in counts.most_common(DEMO_DRAFT_VOCAB))
        frequent += sorted(set(range(DEMO_SHAPE.vocab_size)) - set(frequent))[: DEMO_DRAFT_VOCAB - len(frequent)]
        drafter = tiny_drafter(model, seed=7, init_std=0.05, draft_ids=torch.tensor(sorted(frequent)))
        with Progress(
            TextColumn("distilling demo drafter"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), transient=True,
        ) as bar:
            task = bar.add_task("distill", total=DEMO_DISTILL.steps, loss=float("nan"))
            distill_drafter(target, drafter, sequences, DEMO_DISTILL, lambda step, loss: bar.update(task, advance=1, loss=loss))
        model.save_pretrained(tmp / "target")
        char_tokenizer().save_pretrained(tmp / "target")
        save_drafter(drafter, tmp / "drafter")
    return out


def demo_generator(cache_dir: Path | None = None, rebuild: bool = False) -> SpeculativeGenerator:
    out = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if rebuild or not (out / "drafter" / "config.json").exists():
        build_demo_pair(out)
    return SpeculativeGenerator.from_paths(out / "target", out / "drafter")
