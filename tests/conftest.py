"""Shared fixtures: tiny targets and drafters built in code, and their on-disk checkpoints."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through its interpreter. The flag must be set before
    # anything imports triton (the model imports below pull it in): triton.jit reads it at decoration time.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from evospec.runtime.checkpoint import save_drafter  # noqa: E402
from evospec.runtime.drafter import default_tap_layers
from evospec.runtime.target import TargetModel
from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target
from evospec.train.distill import DistillSettings, distill_drafter, sample_sequences

torch.set_num_threads(2)


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """The reference: transformers' own greedy generate."""
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt) :].tolist()


def char_tokenizer():
    """A character-level HF tokenizer over printable ASCII and newline (97 ids), built in code."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.fixture(scope="session")
def trained_pair():
    """A bigram-like tiny target and a drafter distilled on its outputs (accepts a fair share).

    The layers are scaled down to 0.01 so the next token depends mostly on the last one: a
    one-layer 32-wide drafter then learns it well (tau 2.2-2.9 at depth 4) and by a wide margin on
    any CPU. With 0.1 and 64 sequences it reached only 1.1-1.3, and which side of the test's bound
    it fell on depended on the host's float kernels.
    """
    model = tiny_target(TINY_SHAPES["llama"], seed=3, init_std=1.0, layer_scale=0.01, dtype=torch.float64)
    target = TargetModel(model, default_tap_layers(model.config.num_hidden_layers))
    drafter = tiny_drafter(model, seed=4, init_std=0.05)
    sequences = sample_sequences(target, 256, 40, temperature=0.3)
    distill_drafter(target, drafter, sequences, DistillSettings(steps=600, batch_size=16, unroll=2, lr=1e-2))
    return model, drafter


@pytest.fixture
def checkpoint_dirs(tmp_path):
    """A tiny Llama target (HF layout) and an EAGLE-3 drafter (official layout) on disk."""
    model = tiny_target(TINY_SHAPES["llama"], seed=5)
    drafter = tiny_drafter(model, draft_vocab=48, seed=6)
    model.save_pretrained(tmp_path / "target")
    save_drafter(drafter, tmp_path / "drafter")
    return tmp_path / "target", tmp_path / "drafter", model, drafter


@pytest.fixture(scope="session")
def cpp_library():
    """The C++ library `make cpp` built (build/cpp, or EVOSPEC_CPP_LIBRARY) when it is current; otherwise one built
    here from runtime/cpp into a temporary folder (about 70 s on 2 cores) and pointed to by EVOSPEC_CPP_LIBRARY for the
    session, so a fresh clone tests it too. Skips, saying why, only without a toolchain."""
    import shutil
    import tempfile
    from pathlib import Path

    from evospec.runtime.native_library import library_path

    from .cpp_build import build_cpp, current_library, toolchain_problem

    path = library_path()
    if current_library(path):
        yield path
        return
    problem = toolchain_problem()
    if problem:
        pytest.skip(f"the C++ library cannot be built here: {problem}")
    build = Path(tempfile.mkdtemp(prefix="evospec-cpp-library-"))
    try:
        build_cpp(build, "evospec_drafter")
        before = os.environ.get("EVOSPEC_CPP_LIBRARY")
        os.environ["EVOSPEC_CPP_LIBRARY"] = str(build / "libevospec_drafter.so")  # what library_path() loads
        _forget_library_lookups()
        try:
            yield build / "libevospec_drafter.so"
        finally:
            if before is None:
                os.environ.pop("EVOSPEC_CPP_LIBRARY", None)
            else:
                os.environ["EVOSPEC_CPP_LIBRARY"] = before
            _forget_library_lookups()
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _forget_library_lookups() -> None:
    """Python's drafter looks the library up once per process (its plan updates, its greedy choices): after the
    session's library changes, the next lookup finds the new one, so its chains are the library's own."""
    from evospec.runtime import native_choice, native_plan

    native_choice._library.cache_clear()
    native_plan._library.cache_clear()
