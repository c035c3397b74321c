"""The living-vocabulary EAGLE-3 drafter inside vLLM: vLLM's own drafter with K resident rows whose
token ids change between steps. Imported by vLLM only (it imports vLLM).

Where vLLM's EAGLE proposer passes (``vllm/v1/spec_decode/llm_base_proposer.py``), per step:
``combine_hidden_states`` once (the step begins: the newest planned set is copied into the
resident rows in place), then ``forward`` for the first pass, whose ``input_ids`` are the tokens the
target just verified (the prompt at prefill) and whose forward context splits them per request
(``query_start_loc``): they are handed to the shared vocabulary (a worker plans the next set); then
one ``forward`` + ``compute_logits`` per further draft position. With vLLM's padded drafter batch the
first pass also carries rejected draft tokens; they were drafted from the set already, so as
evidence they only refresh recency.

Hot path: no shape changes and no new tensors for vLLM: ``lm_head.weight`` [K, d] and
``draft_id_to_target_id`` [K] are written in place, in the un-compiled part of the drafter (vLLM
compiles ``self.model``, the decoder layer; the head and ``compute_logits`` run eagerly).
``compute_logits`` reads the live weight: on CPU vLLM prepacks a head's weight for oneDNN at load,
and a packed copy would never see the row copies. Observation sits in ``forward`` (Python, eager);
under CUDA graphs it would have to move out of the captured call (not done: no GPU here).
Verification is vLLM's, against the target's full vocabulary: outputs stay exact whatever the set.

Online alignment (a drafter exported with ``+align``): the constructor wraps vLLM's proposer
(``proposer_hook``) so that before each step the drafter is told which first-pass rows are verified;
``forward`` hands the head inputs there and the verified tokens after them to ``ResidentAligner``
(training on a worker thread), and ``combine_hidden_states`` writes a finished update into the
resident rows in place, before the step's set change.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from vllm.config import VllmConfig
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.models.llama_eagle3 import Eagle3LlamaForCausalLM

from evospec.serving import proposer_hook
from evospec.serving.alignment import ResidentAligner
from evospec.serving.living import load_shared_vocabulary, read_spec

logger = logging.getLogger("vllm.evospec")  # under vLLM's logger: its handlers print it in every process
LOG_EVERY = 512  # steps between summaries of what the vocabulary did


def request_segments(input_ids: torch.Tensor) -> list[list[int]]:
    """The first pass's tokens split per request (vLLM's ``query_start_loc``), or one segment."""
    tokens = input_ids.detach().to("cpu").tolist()
    starts = None
    if is_forward_context_available():
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, dict) and metadata:
            starts = getattr(next(iter(metadata.values())), "query_start_loc", None)
    if starts is None:
        return [tokens]
    bounds = starts.detach().to("cpu").tolist()
    return [tokens[a:b] for a, b in itertools.pairwise(bounds) if b > a]


class Eagle3EvoSpecLlamaForCausalLM(Eagle3LlamaForCausalLM, proposer_hook.VerifiedRowsListener):
    """vLLM's EAGLE-3 Llama drafter with a living draft vocabulary (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if vllm_config.parallel_config.tensor_parallel_size != 1:
            raise ValueError("the EvoSpec drafter holds the whole head on one rank: run it with tensor parallel 1 "
                             "(replicas scale out with data parallel instead)")
        if self.draft_id_to_target_id is None:
            raise ValueError("the EvoSpec drafter needs draft_vocab_size < the target's vocabulary (K resident rows)")
        directory = Path(vllm_config.speculative_config.draft_model_config.model)
        self.vocabulary = load_shared_vocabulary(directory)
        self.align_settings = read_spec(directory)[0].align
        if self.vocabulary.resident.k != self.config.draft_vocab_size:
            raise ValueError(f"{directory}: K={self.vocabulary.resident.k} != draft_vocab_size "
                             f"{self.config.draft_vocab_size}")
        self.logit_scale = float(getattr(self.config, "logit_scale", 1.0))
        self.register_buffer("draft_index", torch.arange(self.config.draft_vocab_size), persistent=False)
        # Set when a drafting step begins: its next forward carries the verified tokens. A flag set before a call
        # is what vLLM's proposer interface leaves (it hands the model no step or token metadata).
        self._first_pass = False
        self.steps = 0  # drafting steps begun
        self._verified: torch.Tensor | None = None  # this step's verified first-pass rows (the proposer hook's)
        self.aligner: ResidentAligner | None = None  # built once the head rows are loaded
        if self.align_settings is not None:
            proposer_hook.install_in_vllm()
        logger.info("EvoSpec drafter: %s, K=%d resident rows from a reservoir of %d, %s%s",
                    self.vocabulary.policy.name, self.vocabulary.resident.k, self.vocabulary.resident.rows.shape[0],
                    "static" if self.vocabulary.static else "planned on a worker thread",
                    "" if self.align_settings is None else f"; online alignment on ({self.align_settings})")

    def load_weights(self, weights) -> None:
        super().load_weights(weights)
        self.vocabulary.resident.load_into(self.lm_head.weight, self.draft_id_to_target_id)
        if self.align_settings is not None:
            self.aligner = ResidentAligner(self.lm_head.weight, self.vocabulary.resident, self.align_settings,
                                           self.logit_scale)

    def verified_rows(self, rows: torch.Tensor, in_prompt: torch.Tensor) -> None:
        train_on_prompts = self.align_settings is not None and self.align_settings.prompts
        self._verified = rows if train_on_prompts else rows[~in_prompt]

    def combine_hidden_states(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.aligner is not None:  # before the set change: a trained row that leaves is written back first
            self.aligner.take()
        change = self.vocabulary.next_change()
        counters = self.vocabulary.counters
        if change is not None:
            start = time.perf_counter()
            self.vocabulary.resident.apply(change, self.lm_head.weight, self.draft_id_to_target_id)
            counters.engine_s += time.perf_counter() - start
        self.steps += 1
        if self.steps % LOG_EVERY == 0:
            self._log_costs()
        self._first_pass = True
        return super().combine_hidden_states(hidden_states)

    def _log_costs(self) -> None:
        counters, steps = self.vocabulary.counters, self.steps
        if not self.vocabulary.static:
            logger.info("EvoSpec vocabulary: %d steps, %d sets applied, %d rows copied (%.2f per step); "
                        "%.3f ms per step on the engine thread, %.3f ms per step on the worker", steps,
                        counters.sets, counters.rows_copied, counters.rows_copied / steps,
                        1e3 * counters.engine_s / steps, 1e3 * counters.worker_s / steps)
        if self.aligner is not None:
            trained = self.aligner.counters
            logger.info("EvoSpec alignment: %d steps, %s; %.3f ms per step on the engine thread, %.3f ms per step "
                        "on the worker, %d KB of state", steps, trained.summary(), 1e3 * trained.engine_s / steps,
                        1e3 * trained.worker_s / steps, self.aligner.nbytes // 1024)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, hidden_states: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self._first_pass:
            self._first_pass = False
            if input_ids is not None and not self.vocabulary.static:
                start = time.perf_counter()
                segments = request_segments(input_ids)
                self.vocabulary.counters.engine_s += time.perf_counter() - start
                self.vocabulary.observe(segments)
        out = super().forward(input_ids, positions, hidden_states, inputs_embeds)
        verified, self._verified = self._verified, None
        if self.aligner is not None and verified is not None and verified.numel() and input_ids is not None:
            rows = verified.to(input_ids.device)
            self.aligner.observe(out[0][rows], input_ids[rows + 1])  # head input at row r, the verified token after
        return out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = F.linear(hidden_states, self.lm_head.weight)  # [n, K], from the live rows
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        full = logits.new_full((logits.shape[0], self.config.vocab_size), float("-inf"))  # [n, V]
        full[:, self.draft_index + self.draft_id_to_target_id] = logits
        return full
