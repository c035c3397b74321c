"""An LM head that computes a few rows of logits with the vocabulary as the long side of the GEMM.

``nn.Linear`` computes ``x @ W.T``: with a handful of rows (a verification pass over a draft of 6
tokens) and a 151k-row weight, the CPU BLAS takes a path that costs about 3x a single row's
(23 ms against 7 ms for 6 rows at d=160, measured on the reference machine). ``(W @ x.T).T`` is the
same product with the weight as the long operand, which streams the weight once for all rows. The
values agree to float rounding (a different summation order), not bit for bit, like any change of
GEMM kernel; on a GPU the head is left as it is.
"""

from __future__ import annotations

import torch
from torch import nn


class SkinnyHead(nn.Module):
    """Wraps a bias-free ``nn.Linear`` LM head; shares its weight (tied embeddings stay tied)."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if rows.shape[0] == 1:  # a single row is a GEMV either way
            return self.head(hidden)
        return torch.mm(self.head.weight, rows.T).T.reshape(*hidden.shape[:-1], -1)


def use_skinny_head(model: nn.Module) -> bool:
    """Swap a CPU model's bias-free linear LM head for a :class:`SkinnyHead`; False where it does not apply."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear) or head.bias is not None or head.weight.device.type != "cpu":
        return False
    model.lm_head = SkinnyHead(head)
    return True
