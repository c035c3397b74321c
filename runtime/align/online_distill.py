"""Whole-drafter online distillation: the baselines ``osd`` and ``osd-reservoir``.

``osd`` is standard online distillation (Liu et al. 2023, "Online Speculative Decoding"): the
drafter is trained as it is, on the target's distributions seen while serving. The buffer keeps,
for every committed position, the drafter's inputs (tapped target features, token) and the
target's distribution over the drafter's own vocabulary (its ``draft_vocab_size`` head rows, the
target ids ``draft + d2t[draft]``): the target's logits restricted to those rows, log-softmaxed.
That is the same as renormalising the target's full-vocabulary probabilities over those rows
(softmax of restricted logits equals restricted probabilities divided by their sum), and it is
the teacher the drafter was trained against offline (``evospec.train.distill``: softmax of the target's
logits on the draft vocabulary), so online training continues the drafter's own objective (an unrenormalised teacher,
the restricted probabilities without dividing by their sum m, would give the logit gradient
m * q - p = m * (q - p / m): the same target, each position weighted by the target's mass on the
draft vocabulary). Every ``every`` cycles an update runs the drafter (fuse,
decoder layer, norm, its own head rows) over a contiguous span of ``batch`` buffered positions
(causal attention inside each generation call), takes the KL to the target over the draft
vocabulary and steps dense Adam over the drafter's own parameters. The head rows live inside the
reservoir the engines read, at the drafter's d2t ids: they are trained on a copy and written back
there after each step; the fuse/trunk weights are trained on a torch copy and written into the
live engines.

``osd-reservoir`` is the same loop over the whole reservoir instead of the drafter's head: the
target's full distribution over all |V| tokens in the buffer, KL over |V| and dense Adam over
every reservoir row, most of which the compile pass synthesised and which are not part of the
drafter. It is what an online adaptation of every row EvoSpec could activate would cost; it is
kept to show that cost, not as the standard baseline.

Memory (``nbytes``) is what each method allocates, summed over its tensors (``tensor_bytes``):
buffers, trainable copies (trunk; the head rows for ``osd``), gradients, Adam moments and step
counters. The reservoir itself is the engines' and is not counted (``osd-reservoir`` trains it in
place). Activations of an update's forward/backward are transient and not counted for any method.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import nn

from evospec.runtime.align.feedback import Changes, CycleFeedback, tensor_bytes
from evospec.runtime.drafter import Eagle3Trunk, draft_vocab_target_ids
from evospec.runtime.stages import FuseStage, TrunkStage

Head = Literal["draft", "reservoir"]


def draft_vocabulary_rows(drafter) -> torch.Tensor:
    """[draft_vocab_size] the target ids of the drafter's own head rows, in draft-id order, on the host; the
    reservoir holds those rows there unchanged (``build_reservoir``)."""
    return draft_vocab_target_ids(drafter.d2t.detach().cpu().long())


class OnlineDistiller:
    def __init__(self, drafter, buffer: int = 512, batch: int = 32, every: int = 4, lr: float = 1e-3,
                 seed: int = 0, head: Head = "draft") -> None:
        """``drafter``: a CompiledDrafter with host reservoir rows (ort or torch bundle). ``head``:
        ``"draft"`` trains the drafter's own head rows on distributions over its vocabulary (``osd``),
        ``"reservoir"`` every reservoir row on full-vocabulary distributions (``osd-reservoir``)."""
        if drafter.reservoir is None:
            raise ValueError("osd needs a drafter whose head rows live on the host (an ort or torch bundle)")
        if head not in ("draft", "reservoir"):
            raise ValueError(f"head must be 'draft' or 'reservoir' (got {head!r})")
        self.drafter, self.batch, self.every, self.head_kind = drafter, batch, every, head
        trunk = Eagle3Trunk(drafter.config)
        self.fuse, self.trunk = FuseStage(trunk), TrunkStage(trunk)
        weights = drafter.trunk_weights()
        self.fuse.load_state_dict({n: w for n, w in weights.items() if n.startswith("fc.")})
        self.trunk.load_state_dict({n: w for n, w in weights.items() if not n.startswith("fc.")})
        self.reservoir = drafter.reservoir  # the rows the engines read
        if head == "draft":
            self.rows: torch.Tensor | None = draft_vocabulary_rows(drafter)  # reservoir rows = the drafter's head
            self._rows_there = self.rows.to(self.reservoir.device)
            self.head = nn.Parameter(self.reservoir[self._rows_there].detach().float().cpu().clone())
        else:
            self.rows = self._rows_there = None
            self.head = nn.Parameter(self.reservoir)  # shares storage: updates land in the engines' rows
        params = [self.head, *self.fuse.parameters(), *self.trunk.parameters()]
        self.optimiser = torch.optim.Adam(params, lr=lr)
        c = drafter.config
        self.features = torch.zeros(buffer, 3 * c.target_hidden_size)
        self.tokens = torch.zeros(buffer, dtype=torch.long)
        self.segment = torch.zeros(buffer, dtype=torch.long)
        self.log_probs = torch.zeros(buffer, self.head.shape[0])  # the target's log-distribution over the head's rows
        self.added = self.cycles = self.updates = self.rollbacks = self._segment = 0
        self.update_seconds = self.blocking_seconds = 0.0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        """Buffers + trainable copies (trunk; head rows for ``osd``) + gradients + Adam state, as allocated."""
        copies = [*self.fuse.parameters(), *self.trunk.parameters()]
        if self.rows is not None:
            copies += [self.head, self.rows]
            if self._rows_there is not self.rows:
                copies.append(self._rows_there)
        grads = tensor_bytes(p.grad for g in self.optimiser.param_groups for p in g["params"])
        state = tensor_bytes(t for s in self.optimiser.state.values() for t in s.values())
        return tensor_bytes((self.features, self.tokens, self.segment, self.log_probs)) + tensor_bytes(copies) + grads + state

    def feedback(self, cycle: CycleFeedback) -> Changes | None:
        start = time.perf_counter()
        if cycle.features is None or cycle.tokens is None:
            raise ValueError("osd trains the whole drafter: the feedback must carry the root call's features and tokens")
        self._segment += int(cycle.new_context)
        logits = cycle.target_logits.float().cpu()
        log_probs = torch.log_softmax(logits if self.rows is None else logits[:, self.rows], dim=-1)
        for feature, token, lp in zip(cycle.features.float().cpu(), cycle.tokens.cpu(), log_probs):
            slot = self.added % self.features.shape[0]
            self.features[slot], self.tokens[slot], self.log_probs[slot] = feature, token, lp
            self.segment[slot] = self._segment
            self.added += 1
        self.cycles += 1
        changes = None
        if self.cycles % self.every == 0 and min(self.added, self.features.shape[0]) >= self.batch:
            changes = self.update()
        self.blocking_seconds += time.perf_counter() - start
        return changes

    def update(self) -> Changes:
        start = time.perf_counter()
        held = min(self.added, self.features.shape[0])
        first = self.added - held + int(torch.randint(0, held - self.batch + 1, (1,), generator=self.generator))
        span = torch.arange(first, first + self.batch) % self.features.shape[0]  # contiguous in arrival order
        segment = self.segment[span]
        mask = torch.ones(self.batch, self.batch, dtype=torch.bool).tril() & (segment[:, None] == segment[None, :])
        c = self.drafter.config
        empty = torch.zeros(1, c.num_key_value_heads, 0, c.head_dim)
        with torch.enable_grad():  # decoding runs under no_grad
            hidden = self.fuse(self.features[span][None])
            tokens = self.tokens[span][None].to(self.drafter.d2t.device)  # the embedding table lives with the target
            embeds = self.drafter.embed(tokens).float().detach().cpu()
            _, normed, _, _ = self.trunk(hidden, embeds, torch.arange(self.batch)[None], empty, empty, mask)
            log_q = torch.log_softmax(normed[0] @ self.head.T, dim=-1)
            loss = torch.nn.functional.kl_div(log_q, self.log_probs[span], log_target=True, reduction="batchmean")
            self.optimiser.zero_grad(set_to_none=False)
            loss.backward()
        self.optimiser.step()
        if self.rows is not None:  # the drafter's head rows sit in the engines' reservoir at its d2t ids
            with torch.no_grad():
                self.reservoir[self._rows_there] = self.head.detach().to(self.reservoir.device, self.reservoir.dtype)
        self.updates += 1
        trunk = {n: p.detach() for n, p in [*self.fuse.named_parameters(), *self.trunk.named_parameters()]}
        self.update_seconds += time.perf_counter() - start
        rows = self.rows if self.rows is not None else torch.arange(self.head.shape[0])
        return Changes(rows=rows, trunk=trunk)
