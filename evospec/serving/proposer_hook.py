"""Tell the drafter which first-pass rows of vLLM's drafter batch hold verified tokens.

vLLM's EAGLE proposer (``SpecDecodeBaseProposer.propose`` in ``vllm/v1/spec_decode/llm_base_proposer.py``)
runs the drafter's first pass over every token the target just scored. With the padded drafter batch
(vLLM's default) a request's rows are ``[committed token, draft 1 .. draft n]`` whether the drafts were
accepted or not; ``token_indices_to_sample[i]`` is request i's last verified row (its input is the
token the target sampled there) and the rows after it carry rejected drafts. The model is handed none
of this. Row r's input is the token after r's position and its output is the drafter's guess for the
token after that, so a verified row r below request i's sampling row has a known answer: the input
of row r + 1. Those are the pairs online alignment trains on.

``install`` wraps ``propose`` of a proposer class: before vLLM's own code runs, a model that is a
``VerifiedRowsListener`` is told the rows (``verified_rows``); the arguments and the result are
vLLM's, untouched (the request bounds are read from ``query_start_loc_cpu``, vLLM's host copy).
The wrapper is installed from the drafter's constructor rather than from the plugin's ``register``:
the proposer's module takes about 11 s to import and ``register`` runs in every vLLM process (the API
server too), while the drafter is built in the process that runs the proposer, after the proposer
class is imported. On a GPU this would add a device-to-host copy of two small
index tensors per step (not measured: no GPU here).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch

WRAPPED = "_evospec_verified_rows_hook"  # marks a wrapped propose: installing twice is a no-op


def verified_rows(query_start_loc: torch.Tensor, token_indices_to_sample: torch.Tensor | None) -> torch.Tensor:
    """First-pass rows whose next row holds the verified token after them ([n] long, ascending).

    Args:
        query_start_loc: [R + 1] start row of each request in the drafter batch, then the row count.
        token_indices_to_sample: [R] each request's last verified row (the row vLLM samples the first
            draft from); None: every row is verified (vLLM's unpadded path), the last of each request
            samples. A request whose sampling row lies before its start (a discarded request) has none.
    """
    starts = query_start_loc.detach().to("cpu", torch.long)
    sample = starts[1:] - 1 if token_indices_to_sample is None else token_indices_to_sample.detach().to("cpu", torch.long)
    if sample.numel() != starts.numel() - 1:
        raise ValueError(f"token_indices_to_sample has {sample.numel()} entries for {starts.numel() - 1} requests")
    rows = torch.arange(int(starts[-1]))
    request = torch.searchsorted(starts[1:], rows, right=True)  # [n] the request each row belongs to
    return rows[rows < sample[request]]


def prompt_rows(query_start_loc: torch.Tensor, seq_lens: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """[n] bool: which of ``rows`` belong to a request's first prefill (its whole sequence is this step's
    query: vLLM's ``seq_lens_cpu_upper_bound``, exact for prefill rows). Prompt rows hold the prompt's
    text, decode rows the target's own continuation. None (no host copy of the lengths): none are."""
    if seq_lens is None:
        return torch.zeros(rows.numel(), dtype=torch.bool)
    starts = query_start_loc.detach().to("cpu", torch.long)
    first_prefill = seq_lens.detach().to("cpu", torch.long) == starts[1:] - starts[:-1]  # [R]
    return first_prefill[torch.searchsorted(starts[1:], rows, right=True)]


class VerifiedRowsListener:
    """A drafter that wants to know, per step, which first-pass rows are verified (a mixin)."""

    def verified_rows(self, rows: torch.Tensor, in_prompt: torch.Tensor) -> None:
        """Called before each drafting step with the rows of ``verified_rows`` for its first pass and
        which of them are prompt rows (``prompt_rows``)."""
        raise NotImplementedError


def install(proposer_class: type, unwrap: Callable[[object], object] = lambda model: model) -> None:
    """Wrap ``proposer_class.propose`` so that a listening drafter learns its verified rows (idempotent).

    Args:
        proposer_class: vLLM's proposer class (or any class with the same ``propose`` parameters).
        unwrap: the drafter behind ``self.model`` (vLLM may wrap it for CUDA graphs).
    """
    original = proposer_class.propose
    if getattr(original, WRAPPED, False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def propose(self, *args, **kwargs):
        model = unwrap(self.model)
        if isinstance(model, VerifiedRowsListener):
            bound = signature.bind(self, *args, **kwargs).arguments
            metadata = bound["common_attn_metadata"]
            rows = verified_rows(metadata.query_start_loc_cpu, bound.get("token_indices_to_sample"))
            model.verified_rows(rows, prompt_rows(metadata.query_start_loc_cpu,
                                                  metadata.seq_lens_cpu_upper_bound, rows))
        return original(self, *args, **kwargs)

    setattr(propose, WRAPPED, True)
    proposer_class.propose = propose


def install_in_vllm() -> None:
    """Wrap vLLM's EAGLE proposer (``SpecDecodeBaseProposer``, which ``EagleProposer`` inherits ``propose`` from)."""
    from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper
    from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer

    install(SpecDecodeBaseProposer,
            lambda model: model.unwrap() if isinstance(model, BreakableCUDAGraphWrapper) else model)
