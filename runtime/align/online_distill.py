"""Baseline ``osd``: standard online adaptation, i.e. online distillation of the whole drafter.

What online distillation does without EvoSpec's sparsity: the buffer keeps, for every committed
position, the drafter's inputs (tapped target features, token) and the target's full distribution
over all |V| tokens; each update runs the drafter (fuse, decoder layer, norm, the full-vocabulary
head) over a contiguous span of the buffer with causal attention inside each generation call,
takes the KL to the target over all |V| tokens, and steps dense Adam over every parameter
(|V| x d head rows included). The trained weights are written into the live engines. The
trunk is trained on a torch copy of its weights, which counts as memory the method adds; the
head rows are the reservoir the engines read, which does not.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from evospec.runtime.align.feedback import Changes, CycleFeedback, tensor_bytes
from evospec.runtime.drafter import DecoderLayer, Eagle3Config, RMSNorm
from evospec.runtime.stages import FuseStage, TrunkStage


class _Trunk(nn.Module):
    """The drafter without its head, in the attribute layout ``FuseStage``/``TrunkStage`` read."""

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self.config = config
        self.fc = nn.Linear(3 * config.target_hidden_size, config.hidden_size, bias=False)
        self.midlayer = DecoderLayer(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = LlamaRotaryEmbedding(config.llama_config())



class OnlineDistiller:
    def __init__(self, drafter, buffer: int = 512, batch: int = 32, every: int = 4, lr: float = 1e-3,
                 seed: int = 0) -> None:
        """``drafter``: a CompiledDrafter with host reservoir rows (ort or torch bundle)."""
        if drafter.reservoir is None:
            raise ValueError("osd needs a drafter whose head rows live on the host (an ort or torch bundle)")
        self.drafter, self.batch, self.every = drafter, batch, every
        trunk = _Trunk(drafter.config)
        self.fuse, self.trunk = FuseStage(trunk), TrunkStage(trunk)
        weights = drafter.trunk_weights()
        self.fuse.load_state_dict({n: w for n, w in weights.items() if n.startswith("fc.")})
        self.trunk.load_state_dict({n: w for n, w in weights.items() if not n.startswith("fc.")})
        self.head = nn.Parameter(drafter.reservoir)  # shares storage: updates land in the engines' rows
        params = [self.head, *self.fuse.parameters(), *self.trunk.parameters()]
        self.optimiser = torch.optim.Adam(params, lr=lr)
        c = drafter.config
        self.features = torch.zeros(buffer, 3 * c.target_hidden_size)
        self.tokens = torch.zeros(buffer, dtype=torch.long)
        self.segment = torch.zeros(buffer, dtype=torch.long)
        self.log_probs = torch.zeros(buffer, drafter.reservoir.shape[0])
        self.added = self.cycles = self.updates = self.rollbacks = self._segment = 0
        self.update_seconds = self.blocking_seconds = 0.0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        """Buffers + the trunk's trainable copy + gradients + Adam moments, as allocated."""
        trunk = tensor_bytes([*self.fuse.parameters(), *self.trunk.parameters()])
        grads = tensor_bytes(p.grad for g in self.optimiser.param_groups for p in g["params"])
        state = tensor_bytes(t for s in self.optimiser.state.values() for t in s.values())
        return tensor_bytes((self.features, self.tokens, self.segment, self.log_probs)) + trunk + grads + state

    def feedback(self, cycle: CycleFeedback) -> Changes | None:
        start = time.perf_counter()
        if cycle.features is None or cycle.tokens is None:
            raise ValueError("osd trains the whole drafter: the feedback must carry the root call's features and tokens")
        self._segment += int(cycle.new_context)
        log_probs = torch.log_softmax(cycle.target_logits.float(), dim=-1)
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
        self.updates += 1
        trunk = {n: p.detach() for n, p in [*self.fuse.named_parameters(), *self.trunk.named_parameters()]}
        self.update_seconds += time.perf_counter() - start
        return Changes(rows=torch.arange(self.head.shape[0]), trunk=trunk)
