"""Baseline ``osd``: standard online adaptation of the head, dense and full-vocabulary.

What online distillation does without EvoSpec's sparsity: the buffer keeps the target's full
distribution for every entry, the loss is the KL over all |V| tokens, every row of the LM head
gets a gradient and dense Adam moments (|V| x d each). The trunk is not updated here (the buffer
holds head inputs), so this baseline understates the memory of whole-drafter distillation.
"""

from __future__ import annotations

import time

import torch


class DenseHeadAligner:
    def __init__(self, reservoir: torch.Tensor, buffer: int = 512, batch: int = 32, every: int = 4,
                 lr: float = 1e-3, seed: int = 0) -> None:
        self.rows, self.batch, self.every = reservoir, batch, every
        self.param = torch.nn.Parameter(reservoir)  # shares storage: updates land in the engines' rows
        self.optimiser = torch.optim.Adam([self.param], lr=lr)
        self.states = torch.zeros(buffer, reservoir.shape[1])
        self.log_probs = torch.zeros(buffer, reservoir.shape[0])
        self.added = self.cycles = self.updates = self.rollbacks = 0
        self.update_seconds = 0.0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        """Buffer + gradient + Adam moments, as allocated."""
        state = sum(t.numel() * t.element_size() for s in self.optimiser.state.values() for t in s.values()
                    if torch.is_tensor(t))
        grad = 0 if self.param.grad is None else self.param.grad.numel() * self.param.grad.element_size()
        return self.states.numel() * 4 + self.log_probs.numel() * 4 + state + grad

    def feedback(self, states: torch.Tensor, target_logits: torch.Tensor, accepted: int,
                 active_ids: torch.Tensor) -> torch.Tensor | None:
        for state, logits in zip(states.float(), target_logits.float()):
            slot = self.added % self.states.shape[0]
            self.states[slot], self.log_probs[slot] = state, torch.log_softmax(logits, dim=-1)
            self.added += 1
        self.cycles += 1
        if self.cycles % self.every or min(self.added, self.states.shape[0]) < self.batch:
            return None
        start = time.perf_counter()
        pick = torch.randperm(min(self.added, self.states.shape[0]), generator=self.generator)[: self.batch]
        with torch.enable_grad():  # decoding runs under no_grad
            log_q = torch.log_softmax(self.states[pick] @ self.param.T, dim=-1)
            loss = torch.nn.functional.kl_div(log_q, self.log_probs[pick], log_target=True, reduction="batchmean")
            self.optimiser.zero_grad(set_to_none=False)
            loss.backward()
        self.optimiser.step()
        self.updates += 1
        self.update_seconds += time.perf_counter() - start
        return torch.arange(self.rows.shape[0])
