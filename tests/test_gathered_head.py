"""The fused gathered-LM-head Triton kernel against torch: CUDA where present, else the CPU interpreter."""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":  # conftest sets it before triton is first imported
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1: the kernel has nowhere to run", allow_module_level=True)
triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from evospec.runtime.kernels.gathered_head import gathered_head_topk  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


def reference(hidden, reservoir, active, k, bias):
    logits = hidden.to(reservoir.dtype).float() @ reservoir[active].float().T + bias
    return logits, logits.topk(k, dim=-1)


def check(n, a, k, dim, dtype, seed, block_a=128, block_d=64, pad=0):
    g = torch.Generator().manual_seed(seed)
    reservoir = torch.randn(a + 50, dim, generator=g).to(dtype)
    active = torch.randperm(a + 50, generator=g)[:a]
    hidden = torch.randn(n, dim, generator=g)
    bias = torch.zeros(a)
    if pad:
        bias[-pad:] = float("-inf")  # bucket padding: must never win
    args = [t.to(DEVICE) for t in (hidden, reservoir, active)]
    out = gathered_head_topk(*args, k, bias=bias.to(DEVICE), block_a=block_a, block_d=block_d)
    logits, (values, columns) = reference(hidden, reservoir, active, k, bias)
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    assert torch.allclose(out.values.cpu(), values, atol=tol, rtol=tol)
    # the kernel's columns must hold the values it reports (ties may order differently)
    assert torch.allclose(logits.gather(1, out.columns.cpu()), values, atol=tol, rtol=tol)
    assert (out.columns < a - pad).all()
    assert torch.allclose(out.logsumexp.cpu(), logits.logsumexp(-1), atol=tol, rtol=tol)
    assert torch.allclose(out.log_probs.cpu(), torch.log_softmax(logits, -1).gather(1, out.columns.cpu()), atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 3, 16])
def test_fused_head_matches_torch(dtype, n):
    check(n=n, a=300, k=8, dim=96, dtype=dtype, seed=n, pad=7)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 17), a=st.integers(1, 400), k=st.integers(1, 10), dim=st.sampled_from([16, 40, 64, 130]),
       block_a=st.sampled_from([16, 64, 128]), seed=st.integers(0, 10_000))
def test_fused_head_property(n, a, k, dim, block_a, seed):
    check(n=n, a=a, k=min(k, a, block_a), dim=dim, dtype=torch.float32, seed=seed, block_a=block_a, block_d=32)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="bf16 tl.dot needs a CUDA GPU (the interpreter does not support it: triton#11584)")
def test_fused_head_bf16_on_gpu():
    check(n=8, a=16384, k=8, dim=4096, dtype=torch.bfloat16, seed=0, pad=100)


def test_fused_head_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be \\[N, d\\]"):
        gathered_head_topk(torch.zeros(2, 8), torch.zeros(10, 4), torch.arange(3), 2)
    with pytest.raises(ValueError, match="k <= min"):
        gathered_head_topk(torch.zeros(2, 4), torch.zeros(10, 4), torch.arange(3), 5)
