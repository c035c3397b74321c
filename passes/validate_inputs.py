"""Pass 1: load target and drafter with the decoding core's loaders; hash the files they came from."""

from __future__ import annotations

from pathlib import Path

from evospec.passes.base import CompileContext, CompilePass, PassResult, condition
from evospec.runtime.files import hash_directory
from evospec.runtime.generator import SpeculativeGenerator


class ValidateInputs(CompilePass):
    name = "validate_inputs"

    def ensures(self, ctx: CompileContext) -> None:
        condition(ctx.target is not None and ctx.drafter is not None, "ensures target and drafter are loaded")
        condition("inputs" in ctx.manifest, "ensures the input files are hashed into the manifest")

    def call(self, ctx: CompileContext) -> PassResult:
        generator = SpeculativeGenerator.from_paths(ctx.target_dir, ctx.drafter_dir,  # all loader checks
                                                    tap_numbering=ctx.settings.tap_numbering)
        ctx.target, ctx.drafter = generator.target, generator.drafter
        c = ctx.drafter.config
        ctx.manifest["inputs"] = {
            "target": {"path": str(Path(ctx.target_dir).resolve()), "files": hash_directory(ctx.target_dir)},
            "drafter": {"path": str(Path(ctx.drafter_dir).resolve()), "files": hash_directory(ctx.drafter_dir)},
        }
        ctx.manifest["shapes"] = {
            "vocab_size": c.vocab_size, "draft_vocab_size": c.draft_vocab_size, "hidden_size": c.hidden_size,
            "target_hidden_size": c.target_hidden_size, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
            "tap_layers": list(ctx.target.tap_layers), "target_layers": ctx.target.num_layers,
            "tap_numbering_read": c.tap_numbering,
        }
        files = sum(len(v["files"]) for v in ctx.manifest["inputs"].values())
        return PassResult(False, f"target and drafter load and fit together; {files} files hashed")
