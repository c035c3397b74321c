"""A drafter call's shortcuts (issue 18, stop 50): the head over the last input alone, and no mask for one new
position. Each must give what the full call gives, for the eager drafter and for a torch bundle."""

import copy

import pytest
import torch

from evospec.runtime.compiled_drafter import eager_compiled
from evospec.runtime.drafter import DrafterKVCache
from evospec.testing.tiny import tiny_drafter, tiny_target


@pytest.fixture(params=["eager", "bundle"])
def drafter(request):
    """The eager drafter, or a torch bundle built from it."""
    model = tiny_target(seed=5)
    eager = tiny_drafter(model, draft_vocab=48, seed=6).float().eval()
    if request.param == "eager":
        return eager
    return eager_compiled(eager, torch.randn(model.config.vocab_size, eager.config.hidden_size), (48,))


def _prefilled(config, t: int = 5):
    """A cache holding t committed positions, and the call that wrote them."""
    torch.manual_seed(0)
    cache = DrafterKVCache(config, 32, torch.device("cpu"), torch.float32)
    features = torch.randn(1, t, 3 * config.target_hidden_size)
    ids = torch.randint(0, config.vocab_size, (1, t))
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    return cache, (features, ids, torch.arange(t)[None], cache, 0, mask)


def test_the_last_rows_logits_alone_are_the_full_calls_last_rows(drafter):
    with torch.inference_mode():
        cache, call = _prefilled(drafter.config)
        full_hidden, full = drafter(*call)
        cache.length = 0
        for rows in (1, 2):
            hidden, last = drafter(*call, logit_rows=rows)
            assert last.shape == (1, rows, full.shape[-1])
            torch.testing.assert_close(last, full[:, -rows:], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(hidden, full_hidden)  # the states fed to the next level are all there


def test_one_position_without_a_mask_sees_every_slot_as_an_all_ones_mask_does(drafter):
    with torch.inference_mode():
        cache, call = _prefilled(drafter.config)
        hidden, _ = drafter(*call)
        other = copy.deepcopy(cache)
        step = (hidden[:, -1:], torch.tensor([[7]]), torch.tensor([[5]]))
        with_mask = drafter(*step, cache, 5, torch.ones(1, 6, dtype=torch.bool))
        without = drafter(*step, other, 5, None)
        for a, b in zip(with_mask, without):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(cache.keys, other.keys)
        # a partial mask differs: the unmasked call is not ignoring the cache
        masked = torch.ones(1, 6, dtype=torch.bool)
        masked[0, :3] = False
        assert not torch.allclose(drafter(*step, copy.deepcopy(cache), 5, masked)[1], without[1])


def test_no_mask_is_refused_for_several_positions(drafter):
    with torch.inference_mode():
        cache, call = _prefilled(drafter.config)
        before = cache.keys.clone()
        with pytest.raises(ValueError, match="one new position only"):
            drafter(*call[:5], None)
        assert torch.equal(cache.keys, before)  # refused before anything was written
