"""Online alignment in the EvoSpec vLLM plugin without a server: the proposer hook's verified rows from a
synthetic padded drafter batch, the resident-row aligner (loss, rows touched, memory, rollback) and the
``+align`` export (vLLM itself: tests/test_serve.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from evospec.bundle.export import export_drafter
from evospec.core.errors import CheckpointError, SettingsError
from evospec.serving import proposer_hook
from evospec.serving.alignment import ResidentAligner, ResidentAlignSettings
from evospec.serving.living import LivingSpec, read_spec
from evospec.serving.resident_rows import ResidentRows
from evospec.train.demo_pair import ASSET_DIR

from .test_serving import successor_frequencies  # noqa: F401  (fixture)

# A padded drafter batch of four requests, as vLLM's proposer builds it (rows = tokens the target scored):
# A decodes [t, d1..d5] and 2 drafts were accepted (sampling row 2); B decodes with none accepted (row 6);
# C is a 5-token prefill (its last row samples); D was discarded (vLLM points its sampling row before its start).
STARTS = torch.tensor([0, 6, 12, 17, 23], dtype=torch.int32)
SAMPLE = torch.tensor([2, 6, 16, 16], dtype=torch.int32)
SEQ_LENS = torch.tensor([100, 50, 5, 30], dtype=torch.int32)  # C's whole sequence is this step's query: a prompt
VERIFIED = [0, 1, 12, 13, 14, 15]
IN_PROMPT = [False, False, True, True, True, True]


def first_pass_input_ids(target_ids: torch.Tensor, next_ids: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """vLLM's ``set_inputs_first_pass`` (default EAGLE path): shift by one, the sampled token at each sampling row."""
    ids = torch.empty_like(target_ids)
    ids[:-1] = target_ids[1:]
    ids[sample.long()] = next_ids
    return ids


def test_the_verified_rows_of_a_padded_batch_are_those_before_each_sampling_row():
    assert proposer_hook.verified_rows(STARTS, SAMPLE).tolist() == VERIFIED
    unpadded = proposer_hook.verified_rows(torch.tensor([0, 3, 5]), None)  # every row verified, the last samples
    assert unpadded.tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="3 entries for 4 requests"):
        proposer_hook.verified_rows(STARTS, SAMPLE[:3])
    rows = torch.tensor(VERIFIED)
    assert proposer_hook.prompt_rows(STARTS, SEQ_LENS, rows).tolist() == IN_PROMPT
    assert not proposer_hook.prompt_rows(STARTS, None, rows).any()


def test_each_verified_rows_label_is_the_verified_token_after_it():
    target = torch.arange(100, 117)  # the tokens the target scored, row by row (requests A, B, C)
    next_ids = torch.tensor([900, 901, 902])  # what the target sampled after each request's last verified row
    ids = first_pass_input_ids(target, next_ids, SAMPLE[:3])
    rows = proposer_hook.verified_rows(STARTS[:4], SAMPLE[:3])
    # A: t=100, d1=101, d2=102 accepted, the target sampled 900 after d2: row 0 (input d1) is answered by d2,
    # row 1 (input d2) by 900. C: the prompt 112..116 and 902 after it.
    assert ids[rows + 1].tolist() == [102, 900, 114, 115, 116, 902]


class Listener(proposer_hook.VerifiedRowsListener):
    def __init__(self) -> None:
        self.seen: list[tuple[list[int], list[bool]]] = []

    def verified_rows(self, rows: torch.Tensor, in_prompt: torch.Tensor) -> None:
        self.seen.append((rows.tolist(), in_prompt.tolist()))


class FakeProposer:
    """The parameters of vLLM's ``SpecDecodeBaseProposer.propose``; returns what it was given."""

    def __init__(self, model) -> None:
        self.model = model

    def propose(self, num_speculative_tokens, target_token_ids, target_positions, target_hidden_states, next_token_ids,
                token_indices_to_sample, common_attn_metadata, sampling_metadata, mm_embed_inputs=None,
                num_rejected_tokens_gpu=None, slot_mappings=None):
        return ("vllm's own", token_indices_to_sample, common_attn_metadata)


def test_the_hook_tells_a_listening_drafter_its_rows_and_changes_nothing_vllm_computes():
    proposer_hook.install(FakeProposer)
    proposer_hook.install(FakeProposer)  # idempotent: one wrapper
    assert getattr(FakeProposer.propose, proposer_hook.WRAPPED) and FakeProposer.propose.__wrapped__.__name__ == "propose"
    metadata = SimpleNamespace(query_start_loc=STARTS, query_start_loc_cpu=STARTS, seq_lens_cpu_upper_bound=SEQ_LENS)
    listener = Listener()
    result = FakeProposer(listener).propose(num_speculative_tokens=5, target_token_ids=None, target_positions=None,
                                            target_hidden_states=None, next_token_ids=None, token_indices_to_sample=SAMPLE,
                                            common_attn_metadata=metadata, sampling_metadata=None)
    assert result == ("vllm's own", SAMPLE, metadata) and listener.seen == [(VERIFIED, IN_PROMPT)]
    assert FakeProposer(object()).propose(5, None, None, None, None, SAMPLE, metadata, None)[0] == "vllm's own"


K, D, N = 16, 8, 64


def setup(settings: ResidentAlignSettings, seed: int = 0) -> tuple[ResidentAligner, torch.Tensor, ResidentRows]:
    generator = torch.Generator().manual_seed(seed)
    resident = ResidentRows(torch.arange(N), torch.randn(N, D, generator=generator), torch.arange(10, 10 + K))
    weight = torch.empty(K, D)
    resident.load_into(weight, None)
    return ResidentAligner(weight, resident, settings, background=False), weight, resident


def loss(weight: torch.Tensor, resident: ResidentRows, x: torch.Tensor, labels: torch.Tensor) -> float:
    cols = torch.nonzero(resident.ids[None, :] == labels[:, None])[:, 1]
    return float(torch.nn.functional.cross_entropy(x @ weight.T, cols))


def test_training_lowers_the_loss_on_verified_pairs_and_touches_only_resident_rows():
    aligner, weight, resident = setup(ResidentAlignSettings(lr=0.05, rollback=False))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(96, D, generator=generator)
    labels = resident.ids[torch.randint(0, K, (96,), generator=generator)]  # any resident tokens: a new mapping
    reservoir_before, storage = resident.rows.clone(), weight.data_ptr()
    before = loss(weight, resident, x, labels)
    for _ in range(60):
        aligner.observe(x, labels)
        aligner.observe(x[:4], torch.tensor([0, 1, 2, 3]))  # labels without a resident row: not scored
        aligner.take()
    assert loss(weight, resident, x, labels) < 0.6 * before
    assert weight.data_ptr() == storage  # in place
    others = torch.ones(N, dtype=torch.bool)
    others[resident.ids] = False
    assert torch.equal(resident.rows[others], reservoir_before[others])  # non-resident rows untouched
    assert torch.equal(resident.rows[resident.ids], weight)  # trained rows written back to the reservoir
    assert aligner.counters.updates > 0 and aligner.counters.scored < aligner.counters.pairs


def test_memory_is_bounded_and_updates_skip_columns_whose_token_changed():
    settings = ResidentAlignSettings(lr=0.05, buffer=40, rollback=True, window=16)
    aligner, weight, resident = setup(settings)
    generator = torch.Generator().manual_seed(2)
    for step in range(80):
        labels = resident.ids[torch.randint(0, K, (30,), generator=generator)]
        aligner.observe(torch.randn(30, D, generator=generator), labels)
        aligner.observe(torch.randn(30, D, generator=generator), labels)  # the worker is behind: the backlog is capped
        if step % 3 == 0:  # the vocabulary swaps two tokens before the update is written
            wanted = resident.ids.clone()
            wanted[torch.randint(0, K, (2,), generator=generator)] = torch.tensor([40 + step % 20, 60 + step % 4])
            if wanted.unique().numel() == K:
                changed = resident.plan(wanted)
                column = weight[changed.cols].clone()
                resident.apply(changed, weight, None)
                entered = resident.rows[changed.ids].clone()
                aligner.take()
                assert torch.equal(weight[changed.cols], entered) and not torch.equal(column, entered)
                continue
        aligner.take()
        assert aligner.nbytes <= ResidentAligner.bound_bytes(K, D, settings)
        assert len(aligner.optimiser.slot) <= K
    assert aligner.counters.dropped > 0 and aligner.counters.updates > 20


def test_a_window_that_scores_below_the_one_before_is_rolled_back():
    aligner, weight, resident = setup(ResidentAlignSettings(lr=0.05, window=8))
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(3))
    right = resident.ids[(x @ weight.T).argmax(-1)]  # the head's own top tokens: accuracy 1
    aligner.observe(x, right)
    aligner.take()
    kept = weight.clone()
    wrong = resident.ids[(x @ weight.T).argmin(-1)]  # accuracy 0: the window is worse than the one before
    aligner.observe(x, wrong)
    aligner.take()
    assert aligner.counters.rollbacks == 1 and torch.equal(weight, kept)
    assert torch.equal(resident.rows[resident.ids], kept)


def test_the_align_export_writes_its_settings_and_the_plugin_reads_them(tmp_path, successor_frequencies):  # noqa: F811
    export_drafter(tmp_path / "a", "vllm", "evospec:96+align", drafter_dir=ASSET_DIR / "drafter",
                   frequencies=successor_frequencies)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["evospec"]["policy"] == "evospec:96" and config["evospec"]["align"]["lr"] == 2e-5
    assert read_spec(tmp_path / "a")[0].align == ResidentAlignSettings()
    assert LivingSpec.parse("frspec:8+align").align is not None and LivingSpec.parse("evospec:8").align is None
    config["evospec"]["align"] = {"lr": 1e-3, "speed": 2}
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SettingsError, match=r"unknown keys \['speed'\]"):
        read_spec(tmp_path / "a")
    config["evospec"]["align"] = True
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="must be a table"):
        read_spec(tmp_path / "a")
    with pytest.raises(SettingsError, match="lr > 0"):
        ResidentAlignSettings(lr=0)
    with pytest.raises(SettingsError, match="living vocabulary"):
        LivingSpec.parse("eagle3+align")
