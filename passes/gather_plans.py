"""Pass 4: the head's bucketed active-set sizes, and the default plan (the drafter's own vocabulary)."""

from __future__ import annotations

from evospec.core.errors import SettingsError
from evospec.passes.base import CompileContext, CompilePass, PassResult, condition
from evospec.runtime.gather import choose_bucket


class PlanGathers(CompilePass):
    name = "gather_plans"
    reads = ('reservoir', 'draft_vocab_ids')

    def ensures(self, ctx: CompileContext) -> None:
        buckets = ctx.manifest.get("gather", {}).get("buckets", [])
        condition(bool(buckets) and buckets == sorted(set(buckets)) and buckets[-1] <= ctx.reservoir.shape[0],
                  f"ensures ascending buckets no larger than the reservoir (got {buckets})")

    def call(self, ctx: CompileContext) -> PassResult:
        buckets = tuple(b for b in ctx.settings.buckets if b <= ctx.reservoir.shape[0]) or (ctx.reservoir.shape[0],)
        size = int(ctx.draft_vocab_ids.numel())
        try:
            default = choose_bucket(size, buckets)
        except SettingsError as exc:
            raise SettingsError(f"the drafter's own vocabulary ({size} rows) must fit a bucket: {exc}") from None
        ctx.manifest["gather"] = {"buckets": list(buckets), "default_active": size, "default_bucket": default,
                                  "padding": "id 0 with bias -inf (never selected)"}
        dropped = sorted(set(ctx.settings.buckets) - set(buckets))
        note = f"; dropped buckets {dropped} (larger than the vocabulary)" if dropped else ""
        return PassResult(True, f"buckets {list(buckets)}; the drafter's {size} rows use bucket {default}{note}")
