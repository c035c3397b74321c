"""The whole-drafter baselines ``osd`` (the drafter as it is: its own head rows, draft-vocabulary
distributions) and ``osd-reservoir`` (every reservoir row, full-vocabulary distributions)."""

from __future__ import annotations

import pytest
import torch

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.bundle.compile import compile_bundle
from evospec.passes.base import CompileSettings
from evospec.runtime.align.feedback import CycleFeedback
from evospec.runtime.align.methods import make_aligner
from evospec.runtime.align.online_distill import OnlineDistiller, draft_vocabulary_rows
from evospec.train.demo_pair import ASSET_DIR

TARGET, DRAFTER = ASSET_DIR / "target", ASSET_DIR / "drafter"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("osd") / "ort"
    compile_bundle(TARGET, DRAFTER, root, CompileSettings(backend="ort", buckets=(512,), index_dims=0))
    return root


@pytest.fixture
def generator(bundle):
    return SpeculativeGenerator.from_bundle(bundle, TARGET)


def _cycles(drafter, count: int, n: int = 3, seed: int = 0) -> list[CycleFeedback]:
    g, c = torch.Generator().manual_seed(seed), drafter.config
    return [CycleFeedback(torch.randn(n, c.hidden_size, generator=g), 3 * torch.randn(n, c.vocab_size, generator=g), 1,
                          drafter.active_ids, features=torch.randn(n, 3 * c.target_hidden_size, generator=g),
                          tokens=torch.randint(0, c.vocab_size, (n,), generator=g), new_context=i == 0)
            for i in range(count)]


def test_draft_rows_are_the_drafters_own_head(generator):
    """The rows osd trains are the checkpoint's d2t ids, where the reservoir holds its lm_head unchanged."""
    from safetensors.torch import load_file

    checkpoint = load_file(DRAFTER / "model.safetensors")
    drafter = generator.drafter
    rows = draft_vocabulary_rows(drafter)
    c = drafter.config
    assert torch.equal(rows, torch.arange(c.draft_vocab_size) + checkpoint["d2t"])
    assert rows.unique().numel() == c.draft_vocab_size < c.vocab_size  # a strict subset: other rows exist
    torch.testing.assert_close(drafter.reservoir[rows], checkpoint["lm_head.weight"].float())


@pytest.mark.parametrize("head", ["draft", "reservoir"])
def test_buffer_holds_the_targets_distribution_over_the_trained_rows(generator, head):
    drafter = generator.drafter
    c = drafter.config
    distiller = OnlineDistiller(drafter, buffer=16, batch=8, every=100, head=head)
    width = c.draft_vocab_size if head == "draft" else c.vocab_size
    assert distiller.log_probs.shape == (16, width) and distiller.head.shape == (width, c.hidden_size)
    cycle = _cycles(drafter, 1)[0]
    distiller.feedback(cycle)
    logits = cycle.target_logits if head == "reservoir" else cycle.target_logits[:, draft_vocabulary_rows(drafter)]
    held = distiller.log_probs[:3].exp()
    torch.testing.assert_close(held, torch.softmax(logits, -1))
    if head == "draft":  # the same as the target's full distribution renormalised over the draft vocabulary
        full = torch.softmax(cycle.target_logits, -1)[:, draft_vocabulary_rows(drafter)]
        torch.testing.assert_close(held, full / full.sum(-1, keepdim=True))


@pytest.mark.parametrize("head", ["draft", "reservoir"])
def test_memory_counts_what_is_allocated(generator, head):
    """nbytes equals a count from the drafter's shapes: buffers, trainable copies, and after the first
    update gradients, two Adam moments and one float32 step counter per parameter tensor."""
    drafter = generator.drafter
    c, f32, i64 = drafter.config, 4, 8
    buffer = 24
    distiller = OnlineDistiller(drafter, buffer=buffer, batch=8, every=4, head=head)
    trunk = sum(w.numel() for w in drafter.trunk_weights().values())  # the engines' fuse + trunk weights
    tensors = len(drafter.trunk_weights()) + 1  # and the head
    rows = c.draft_vocab_size if head == "draft" else c.vocab_size
    head_params = rows * c.hidden_size
    buffers = buffer * (3 * c.target_hidden_size * f32 + 2 * i64 + rows * f32)
    copies = trunk * f32 + (head_params * f32 + rows * i64 if head == "draft" else 0)  # the reservoir is the engines'
    assert distiller.nbytes == buffers + copies
    for cycle in _cycles(drafter, 4):
        changes = distiller.feedback(cycle)
    assert distiller.updates == 1 and changes is not None
    params = trunk + head_params
    assert distiller.nbytes == buffers + copies + params * f32 + 2 * params * f32 + tensors * f32


def test_osd_is_far_smaller_than_osd_reservoir(generator):
    drafter = generator.drafter
    small, large = (make_aligner(m, drafter) for m in ("osd", "osd-reservoir"))
    for aligner in (small, large):
        for cycle in _cycles(drafter, 12):  # 36 positions: the default batch of 32 is due at cycle 12
            aligner.feedback(cycle)
    assert small.head_kind == "draft" and large.head_kind == "reservoir"
    assert small.updates == large.updates == 1 and small.nbytes < large.nbytes


def test_updates_change_only_the_drafters_own_rows_and_reach_the_engine(generator):
    drafter = generator.drafter
    before = drafter.reservoir.clone()
    rows = draft_vocabulary_rows(drafter)
    others = torch.ones(drafter.config.vocab_size, dtype=torch.bool)
    others[rows] = False
    generator.aligner = OnlineDistiller(drafter, batch=4, every=1, lr=0.05)
    generator.generate(generator.encode("def parse(self, text):\n    "), DecodeSettings(max_new_tokens=32))
    distiller = generator.aligner
    assert distiller.updates >= 3
    after = drafter.reservoir
    assert torch.equal(after[others], before[others])  # synthesised rows: untouched
    changed = (after[rows] != before[rows]).any(-1)
    assert changed.float().mean() > 0.9  # Adam moves every row the draft softmax covers
    assert torch.equal(after[rows], distiller.head.detach())  # the trained head is written back at the d2t ids
    normed = torch.randn(3, drafter.config.hidden_size, generator=torch.Generator().manual_seed(1))
    plan = drafter.plan
    resident = drafter.runners["head_active"].infer({"normed": normed, "rows": drafter.active_rows.rows,
                                                     "bias": plan.bias})["logits"]
    in_graph = drafter.runners["head"].infer({"normed": normed, "active": plan.ids, "bias": plan.bias})["logits"]
    expected = normed @ after[plan.ids].T + plan.bias
    assert torch.allclose(resident, expected, atol=1e-4) and torch.allclose(in_graph, expected, atol=1e-4)
    assert not torch.allclose(resident, normed @ before[plan.ids].T + plan.bias, atol=1e-4)
