"""The decoding loop on a CUDA device (runs where a GPU is; skipped with a reason elsewhere)."""

from __future__ import annotations

import pytest
import torch

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; torch sees none"),
]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("draft_tree", ["chain", "tree"])
def test_cuda_greedy_matches_hf(family, draft_tree):
    model = tiny_target(TINY_SHAPES[family], seed=21, dtype=torch.float64, layer_scale=0.3).cuda()
    drafter = tiny_drafter(model, draft_vocab=64, seed=22).cuda()
    generator = SpeculativeGenerator.from_models(model, drafter)
    prompt = [3, 1, 4, 1, 5]
    result = generator.generate(prompt, DecodeSettings(max_new_tokens=48, draft_tree=draft_tree, draft_depth=4))
    reference = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=48, min_new_tokens=48, do_sample=False)
    assert result.token_ids == reference[0, len(prompt) :].tolist()


def test_cuda_bf16_sampling_runs_from_disk(tmp_path):
    model = tiny_target(TINY_SHAPES["llama"], seed=23)
    model.save_pretrained(tmp_path / "t")
    from evospec.runtime.checkpoint import save_drafter

    save_drafter(tiny_drafter(model, draft_vocab=48, seed=24), tmp_path / "d")
    generator = SpeculativeGenerator.from_paths(tmp_path / "t", tmp_path / "d", device="cuda", dtype="bfloat16")
    assert generator.drafter.lm_head.weight.device.type == "cuda"
    result = generator.generate([1, 2, 3], DecodeSettings(max_new_tokens=32, temperature=0.8, top_p=0.9, seed=1))
    assert len(result.token_ids) == 32
