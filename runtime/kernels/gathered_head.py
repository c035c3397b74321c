"""Fused gathered LM head: logits over active reservoir rows, reduced to top-k, in one pass.

On a GPU the draft head is a memory-bound read of A active rows of the reservoir ([V, d]). Torch
spends a gather (read A rows, write a copy) and a matmul (read the copy again). This kernel reads
each active row once, straight from the reservoir through the active ids, multiplies it with the
1..16 hidden states, and keeps only what drafting needs: per block of rows, the top ``k`` logits
(iterated arg-max, k is small) and the block's max and sum of exponentials. A tiny merge on the
host side of the kernel (``nb * k`` candidates per state, not A logits) gives the top-k over the
whole active set and the log-sum-exp, so the caller gets log-probabilities without ever
materialising the [N, A] logits or a gathered copy of the weights.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the default test suite
checks it against torch). The interpreter multiplies bfloat16 ``tl.dot`` operands as raw bits
(triton-lang/triton#11584, not supported there), so bf16 is checked on the GPU only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass
class HeadTopK:
    values: torch.Tensor  # [N, k] logits, descending
    columns: torch.Tensor  # [N, k] int64 positions in the active set (not reservoir ids)
    logsumexp: torch.Tensor  # [N] over the whole active set

    @property
    def log_probs(self) -> torch.Tensor:
        return self.values - self.logsumexp[:, None]


@triton.jit
def _gathered_head_kernel(hidden, weight, active, bias, out_val, out_col, out_max, out_sum,
                          n_rows, n_active, dim, n_blocks,
                          K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_D: tl.constexpr,
                          IEEE: tl.constexpr):
    block = tl.program_id(0)
    cols = block * BLOCK_A + tl.arange(0, BLOCK_A)
    col_ok = cols < n_active
    ids = tl.load(active + cols, mask=col_ok, other=0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    acc = tl.zeros((BLOCK_N, BLOCK_A), dtype=tl.float32)
    for start in range(0, dim, BLOCK_D):
        offs = start + tl.arange(0, BLOCK_D)
        d_ok = offs < dim
        w = tl.load(weight + ids[:, None] * dim + offs[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        h = tl.load(hidden + rows[:, None] * dim + offs[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        if IEEE:  # fp32 rows: full precision (tl.dot would use tf32 on NVIDIA GPUs)
            acc += tl.dot(h, tl.trans(w), input_precision="ieee", out_dtype=tl.float32)
        else:
            acc += tl.dot(h.to(w.dtype), tl.trans(w), out_dtype=tl.float32)
    b = tl.load(bias + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc = tl.where(col_ok[None, :], acc + b[None, :], float("-inf"))
    m = tl.max(acc, axis=1)
    s = tl.sum(tl.exp(acc - m[:, None]), axis=1)
    stat = rows * n_blocks + block
    tl.store(out_max + stat, m, mask=row_ok)
    tl.store(out_sum + stat, s, mask=row_ok)
    for j in tl.static_range(K):  # iterated arg-max: k passes over a block held in registers
        best = tl.max(acc, axis=1)
        where = tl.argmax(acc, axis=1)
        tl.store(out_val + stat * K + j, best, mask=row_ok)
        tl.store(out_col + stat * K + j, (block * BLOCK_A + where).to(tl.int64), mask=row_ok)
        acc = tl.where(tl.arange(0, BLOCK_A)[None, :] == where[:, None], float("-inf"), acc)


def gathered_head_topk(hidden: torch.Tensor, reservoir: torch.Tensor, active: torch.Tensor, k: int,
                       bias: torch.Tensor | None = None, block_a: int = 128, block_d: int = 64) -> HeadTopK:
    """Top-``k`` logits of ``hidden [N, d] @ reservoir[active].T (+ bias)`` and their log-sum-exp.

    ``reservoir`` [V, d] fp32/fp16/bf16 (the hidden states are cast to its type, accumulation is
    fp32); ``active`` [A] reservoir ids; ``bias`` [A] fp32 (padding columns carry -inf). N <= 64.
    All tensors on one device: CUDA, or CPU under ``TRITON_INTERPRET=1``.
    """
    if hidden.dim() != 2 or reservoir.dim() != 2 or hidden.shape[1] != reservoir.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and reservoir {tuple(reservoir.shape)} must be [N, d] and [V, d]")
    n, dim = hidden.shape
    a = active.numel()
    if not 1 <= n <= 64 or not 1 <= k <= min(a, block_a):
        raise ValueError(f"need 1 <= N <= 64 (got {n}) and 1 <= k <= min(A, block_a) (got k={k}, A={a})")
    device = hidden.device
    if reservoir.device != device or active.device != device:
        raise ValueError(f"hidden ({device}), reservoir ({reservoir.device}) and active ({active.device}) must share a device")
    bias = torch.zeros(a, device=device) if bias is None else bias.float().contiguous()
    blocks = triton.cdiv(a, block_a)
    vals = torch.empty(n, blocks, k, device=device, dtype=torch.float32)
    cols = torch.empty(n, blocks, k, device=device, dtype=torch.int64)
    block_max = torch.empty(n, blocks, device=device, dtype=torch.float32)
    block_sum = torch.empty(n, blocks, device=device, dtype=torch.float32)
    block_n = max(16, triton.next_power_of_2(n))  # tl.dot wants M >= 16
    _gathered_head_kernel[(blocks,)](hidden.contiguous(), reservoir.contiguous(), active.contiguous(), bias,
                                     vals, cols, block_max, block_sum, n, a, dim, blocks,
                                     K=k, BLOCK_N=block_n, BLOCK_A=block_a, BLOCK_D=block_d,
                                     IEEE=reservoir.dtype == torch.float32)
    top_vals, where = vals.view(n, -1).topk(k, dim=-1)
    top_cols = cols.view(n, -1).gather(1, where)
    peak = block_max.max(dim=1).values
    total = (block_sum * torch.exp(block_max - peak[:, None])).nan_to_num(0.0).sum(dim=1)
    return HeadTopK(top_vals, top_cols, peak + torch.log(total))
