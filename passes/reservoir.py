"""Pass 3: LM-head rows for every target token, so later stages can activate any long-tail token.

The drafter's own ``lm_head`` rows are kept exactly. Rows it lacks are synthesised from the
target's LM head through a linear map A (target width -> drafter width) fitted by ridge least
squares on the shared tokens: ``rows_d ~ rows_t @ A``. The fit is judged on held-out shared
rows (10%) before the final fit on all of them; both relative errors go into the manifest.
"""

from __future__ import annotations

import torch

from evospec.passes.base import CompileContext, CompilePass, PassResult, condition
from evospec.runtime.stages import ActiveHeadStage, HeadStage


def fit_map(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """argmin_A |x A - y|^2 + ridge * tr(x'x)/n * |A|^2, by the normal equations in float64."""
    x, y = x.double(), y.double()
    gram = x.T @ x
    gram += torch.eye(gram.shape[0], dtype=gram.dtype) * (ridge * gram.diagonal().mean().clamp_min(1e-12))
    return torch.linalg.solve(gram, x.T @ y)


def relative_error(x: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() @ a - y.double()).norm() / y.double().norm().clamp_min(1e-30))


def build_reservoir(target_head: torch.Tensor, draft_head: torch.Tensor, draft_vocab_ids: torch.Tensor, seed: int = 0):
    """Returns (reservoir [V, d], report dict)."""
    vocab, width = target_head.shape[0], draft_head.shape[1]
    reservoir = torch.zeros(vocab, width, dtype=torch.float32)
    reservoir[draft_vocab_ids] = draft_head.float()
    missing = torch.ones(vocab, dtype=torch.bool)
    missing[draft_vocab_ids] = False
    report = {"rows": vocab, "from_drafter": int(draft_vocab_ids.numel()), "synthesised": int(missing.sum())}
    if missing.any():
        x, y = target_head[draft_vocab_ids].float(), draft_head.float()
        order = torch.randperm(len(draft_vocab_ids), generator=torch.Generator().manual_seed(seed))
        held = order[: max(1, len(order) // 10)]
        fit = order[len(held):] if len(order) > len(held) else order
        a = fit_map(x[fit], y[fit])
        report["heldout_relative_error"] = relative_error(x[held], a, y[held])
        a = fit_map(x, y)
        report["fit_relative_error"] = relative_error(x, a, y)
        reservoir[missing] = (target_head[missing].double() @ a).float()
    return reservoir, report


class BuildReservoir(CompilePass):
    name = "reservoir"
    reads = ('target', 'drafter')

    def ensures(self, ctx: CompileContext) -> None:
        c = ctx.drafter.config
        condition(tuple(ctx.reservoir.shape) == (c.vocab_size, c.hidden_size) and ctx.reservoir.is_floating_point(),
                  f"ensures the reservoir is float [V, d] = [{c.vocab_size}, {c.hidden_size}] "
                  f"(got {ctx.reservoir.dtype} {tuple(ctx.reservoir.shape)})")
        ids = ctx.draft_vocab_ids
        condition(ids.shape == (c.draft_vocab_size,) and int(ids.min()) >= 0 and int(ids.max()) < c.vocab_size,
                  f"ensures draft_vocab_ids are [{c.draft_vocab_size}] target ids in [0, {c.vocab_size})")
        condition({"head", "head_active"} <= set(ctx.stages), "ensures stages head and head_active")

    def call(self, ctx: CompileContext) -> PassResult:
        drafter = ctx.drafter
        vocab_ids = drafter.draft_vocab_target_ids().cpu()
        target_head = ctx.target.model.get_output_embeddings().weight.detach().cpu()[: drafter.config.vocab_size]
        reservoir, report = build_reservoir(target_head, drafter.lm_head.weight.detach().cpu(), vocab_ids)
        ctx.reservoir, ctx.draft_vocab_ids = reservoir, vocab_ids
        ctx.stages["head"] = HeadStage(reservoir).eval()
        ctx.stages["head_active"] = ActiveHeadStage().eval()
        ctx.manifest["reservoir"] = report
        fit = f", held-out fit error {report['heldout_relative_error']:.3f}" if "heldout_relative_error" in report else ""
        return PassResult(True, f"{report['rows']} rows: {report['from_drafter']} from the drafter, "
                                f"{report['synthesised']} synthesised{fit}")
