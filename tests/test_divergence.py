"""Where a greedy output parts from plain decoding, and whether the target was at a near tie there: the gap is
the target's own logit difference at the first differing token, computed over the shared prefix."""

from __future__ import annotations

import math

import torch

from evospec.eval.divergence import NEAR_TIE, Divergence, first_divergence
from evospec.runtime.target import load_target
from evospec.train.demo_pair import ASSET_DIR


def test_first_divergence_weighs_the_first_differing_token_with_the_target():
    model = load_target(ASSET_DIR / "target").model
    prompts = [[5, 6, 7], [1, 2, 3, 4]]
    plain = [[9, 10, 11], [12, 13, 14, 15]]
    assert first_divergence(model, prompts, plain, plain) is None
    speculative = [[9, 10, 11], [12, 13, 20, 15]]  # the second prompt parts at new token 2
    parted = first_divergence(model, prompts, speculative, plain)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4, 12, 13]])).logits[0, -1]
    assert (parted.prompt, parted.token, parted.plain_id, parted.speculative_id) == (1, 2, 14, 20)
    assert math.isclose(parted.logit_gap, float(logits[14] - logits[20]), rel_tol=1e-5, abs_tol=1e-6)
    assert "new token 2: plain 14, speculative 20" in parted.describe()


def test_only_a_gap_within_rounding_is_called_a_near_tie():
    tie = Divergence(6, 3, 74966, 1177, 1.6e-6, 8.77)
    assert tie.near_tie and "near tie" in tie.describe()
    wrong = Divergence(0, 1, 4, 5, 100 * NEAR_TIE * 8.77, 8.77)
    assert not wrong.near_tie and "NOT a near tie" in wrong.describe()
    ended = first_divergence(load_target(ASSET_DIR / "target").model, [[1, 2]], [[3, 4]], [[3, 4, 5]])
    assert ended.token == 2 and "one output ends after 2 new tokens" in ended.describe()


def test_a_report_lists_the_parted_rows_and_nothing_when_none_parted():
    from evospec.eval.divergence import parted_report

    assert parted_report([]) == ""
    report = parted_report([("multilingual (evospec)", "prompt 6, new token 3: ...")])
    assert report.endswith("where it first parted:\n  multilingual (evospec): prompt 6, new token 3: ...")
