"""The built-in demo pair: a small code model trained on the Python standard library, and an
EAGLE-3 drafter distilled on it.

No weights can be downloaded here, so the pair is trained from real text by :func:`build_demo_pair`
(``evospec build-demo``; a few minutes on 2 CPU cores) and the result ships with the package under
``evospec/assets/demo`` (fp16 weights, a few MB) with a ``recipe.json`` saying how it was made.
Both models are written in the standard layouts (HF directory with tokenizer; EAGLE-3 checkpoint)
and loaded back through the same loaders as any user's models. ``build-demo --reuse-target PAIR``
keeps a pair's target byte for byte and distils only a new drafter (minutes, not a quarter hour).
"""

from __future__ import annotations

import json
import platform
import shutil
import sysconfig
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from evospec.core.atomic import atomic_directory
from evospec.core.determinism import DEFAULT_THREADS, build_environment, reproducible
from evospec.core.errors import CheckpointError, SettingsError
from evospec.core.progress import loss_progress
from evospec.runtime.checkpoint import save_drafter
from evospec.runtime.drafter import tap_problem
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.target import TargetModel, load_target
from evospec.testing.tiny import TinyShape, tiny_drafter, tiny_target
from evospec.train.distill import DistillSettings, distill_drafter

ASSET_DIR = Path(__file__).parents[1] / "assets" / "demo"


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo pair is made. Attributes are the knobs of :func:`build_demo_pair`."""

    shape: TinyShape = TinyShape(vocab_size=512, hidden_size=128, layers=6, heads=4, kv_heads=2, intermediate_size=352)
    seq_len: int = 256
    batch_size: int = 16
    target_steps: int = 800
    target_lr: float = 3e-3
    draft_vocab: int = 384
    distill: DistillSettings = DistillSettings(steps=600, batch_size=16, unroll=3, lr=3e-3, seed=0)
    seed: int = 0
    # Written into the drafter's config. EAGLE-3's default for 6 layers, (2, 3, 3), repeats a
    # layer, which vLLM and upstream EAGLE cannot serve; low/middle/high of the 5 states they expose.
    taps: tuple[int, int, int] = (1, 3, 5)


def stdlib_corpus() -> list[str]:
    """The top-level modules of this Python's standard library (real, human-written code)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(errors="replace") for p in sorted(root.glob("*.py"))]


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def _batches(ids: torch.Tensor, recipe: DemoRecipe, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, ids.numel() - recipe.seq_len - 1, (recipe.batch_size,), generator=generator)
    return torch.stack([ids[s : s + recipe.seq_len] for s in starts.tolist()])


def train_target(ids: torch.Tensor, recipe: DemoRecipe):
    model = tiny_target(recipe.shape, seed=recipe.seed, init_std=0.02).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.target_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.target_lr, total_steps=recipe.target_steps,
                                                   pct_start=0.05)
    g = torch.Generator().manual_seed(recipe.seed)
    with loss_progress("training demo target") as bar:
        task = bar.add_task("t", total=recipe.target_steps, loss=float("nan"))
        for _ in range(recipe.target_steps):
            batch = _batches(ids, recipe, g)
            loss = model(input_ids=batch, labels=batch).loss
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            bar.update(task, advance=1, loss=float(loss.detach()))
    return model.eval(), float(loss.detach())


def _check_taps(taps: tuple[int, ...], layers: int) -> None:
    problem = tap_problem(taps, layers)
    if problem is not None:
        raise SettingsError(f"demo recipe: {problem}; vLLM and upstream EAGLE could not serve the drafter")


def build_demo_pair(out: Path, recipe: DemoRecipe = DemoRecipe(), reuse_target: Path | None = None) -> Path:
    """Train the pair and write ``out/target``, ``out/drafter`` and ``out/recipe.json`` atomically.

    Args:
        out: The pair folder to write.
        recipe: How to train (``recipe.shape`` and the target knobs are ignored with ``reuse_target``).
        reuse_target: A pair folder whose ``target/`` is copied unchanged (its tokenizer too): only
            the drafter is distilled, on the target as shipped (fp16 weights, run in float32).
    """
    if reuse_target is None:
        _check_taps(recipe.taps, recipe.shape.layers)  # before a quarter hour of target training
    started = time.perf_counter()
    texts = stdlib_corpus()
    reused: dict = {}
    with reproducible(DEFAULT_THREADS):
        if reuse_target is None:
            tokenizer = train_tokenizer(texts, recipe.shape.vocab_size)
        else:
            source = Path(reuse_target) / "target"
            loaded = load_target(source, dtype="float32")
            tokenizer, model = loaded.tokenizer, loaded.model
            manifest_path = Path(reuse_target) / "recipe.json"
            reused = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        eos = tokenizer.eos_token_id
        ids = torch.tensor([t for text in texts for t in tokenizer.encode(text) + [eos]])
        if reuse_target is None:
            model, target_loss = train_target(ids, recipe)
            model.generation_config.eos_token_id = None  # code has no natural end here; demo runs to max tokens
        else:
            target_loss = reused.get("target_final_loss")
        _check_taps(recipe.taps, model.config.num_hidden_layers)
        target = TargetModel(model, recipe.taps)

        counts = Counter(ids.tolist())
        draft_ids = torch.tensor(sorted(t for t, _ in counts.most_common(recipe.draft_vocab)))
        drafter = tiny_drafter(model, seed=recipe.seed + 1, init_std=0.02, draft_ids=draft_ids, tap_layers=recipe.taps)
        g = torch.Generator().manual_seed(recipe.seed + 2)
        sequences = torch.cat([_batches(ids, recipe, g) for _ in range(16)])[:, :128]
        settings = recipe.distill
        with loss_progress("distilling demo drafter") as bar:
            task = bar.add_task("d", total=settings.steps, loss=float("nan"))
            losses = distill_drafter(target, drafter, sequences, settings,
                                     lambda step, loss: bar.update(task, advance=1, loss=loss))
    with atomic_directory(out) as tmp:
        if reuse_target is None:
            model.to(torch.float16).save_pretrained(tmp / "target")
            tokenizer.save_pretrained(tmp / "target")
        else:
            shutil.copytree(source, tmp / "target")
        save_drafter(drafter.to(torch.float16), tmp / "drafter")
        manifest = {
            "recipe": asdict(recipe),
            "corpus": f"Python {platform.python_version()} standard library, top-level modules "
                      f"({len(texts)} files, {sum(map(len, texts))} characters, {ids.numel()} tokens)",
            "target_final_loss": target_loss,
            "drafter_final_loss": losses[-1],
            "build_seconds": round(time.perf_counter() - started, 1),
            "machine": f"{platform.machine()}, {DEFAULT_THREADS} torch threads",
            "environment": build_environment(DEFAULT_THREADS, "cpu"),
        }
        if reuse_target is not None:
            manifest["target_reused"] = {"from": str(reuse_target), "recipe": reused.get("recipe"),
                                         "build_seconds": reused.get("build_seconds"),
                                         "machine": reused.get("machine")}
        (tmp / "recipe.json").write_text(json.dumps(manifest, indent=2))
    return out


def demo_generator(pair_dir: Path | None = None, device: str = "cpu") -> SpeculativeGenerator:
    """Load a pair folder (target/ + drafter/; the shipped demo pair by default) in float32."""
    pair_dir = Path(pair_dir) if pair_dir is not None else ASSET_DIR
    if not (pair_dir / "drafter" / "config.json").exists():
        raise CheckpointError(f"{pair_dir} holds no model pair (target/ and drafter/); build one with "
                              f"`evospec reference build --out {pair_dir}` or `evospec build-demo --out {pair_dir}`")
    return SpeculativeGenerator.from_paths(pair_dir / "target", pair_dir / "drafter", device=device, dtype="float32")
