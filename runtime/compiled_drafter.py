"""A drafter that runs from compiled stages (torch, ONNX Runtime or TensorRT runners).

It has the interface the decoding loop uses (``config``, ``d2t``, ``draft_to_target``, ``dtype``,
and ``__call__(hidden, target_ids, positions, cache, start, mask)``), so trees, verification and
the generator are unchanged: only where the drafter's arithmetic happens moves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evospec.runtime.active_rows import ActiveRows
from evospec.runtime.device_upload import DeviceUploader
from evospec.runtime.drafter import DrafterKVCache, Eagle3Config, check_unmasked
from evospec.runtime.gather import GatherPlan, make_plan
from evospec.runtime.native_plan import plan_update
from evospec.runtime.runners import Runner, TorchRunner
from evospec.runtime.stages import SIGNATURES, ActiveHeadStage, FuseStage, HeadStage, TrunkStage


class CompiledDrafter:
    def __init__(self, config: Eagle3Config, d2t: torch.Tensor, embed_table: torch.nn.Module,
                 runners: dict[str, Runner], plan: GatherPlan, buckets: tuple[int, ...],
                 reservoir: torch.Tensor | None = None, static_past: bool = False,
                 host_rows: torch.Tensor | None = None) -> None:
        """``reservoir`` (rows shared with the head engine: host rows for ONNX Runtime, device rows
        for torch on a GPU) turns on the resident head: the ``head_active`` stage over rows kept by
        ``ActiveRows``; without it the ``head`` stage gathers in-graph (TensorRT bundles).
        ``static_past``: the trunk attends over the whole cache capacity with a mask, so its input
        shapes depend only on the number of new tokens (what CUDA graphs need). ``host_rows``: a host
        copy of the rows of an engine that holds its own (TensorRT), which online alignment updates
        and ``rows_changed`` refits into the engine."""
        self.config, self.d2t, self._embed, self.runners = config, d2t, embed_table, runners
        self.semantic_index = None  # a bundle's SemanticIndex, for policies that retrieve by state
        self.mass_index = None  # a bundle's MassIndex, for evospec:K's mass fill
        self.frequencies_path = None  # a bundle's statistical index (token frequencies + successors), if it has one
        self.root_normed: torch.Tensor | None = None  # head inputs of the cycle's first call, one row per position
        # called with the head input at the newest committed token between the trunk and the head of a
        # cycle's first call, so a routing policy can choose this cycle's set from the fresh state
        self.on_root_state: Callable[[torch.Tensor], None] | None = None
        self._requested: torch.Tensor | None = None  # the tensor the current plan was made from
        self._lay_out = False  # the next set_active lays its set out afresh (``lay_out_next``)
        use_resident = reservoir is not None and "head_active" in runners
        self.static_past = static_past
        self.host_rows = host_rows if reservoir is None else None
        self._to_map = DeviceUploader(d2t.device)  # id maps go where the tree indexes with them
        rows_device = reservoir.device if reservoir is not None else torch.device("cpu")
        self._to_rows = self._to_map if rows_device == d2t.device else DeviceUploader(rows_device)
        self.active_rows = ActiveRows(reservoir, plan, self._to_rows) if use_resident else None
        # torch stages on the host: the resident head is computed by ActiveRows, which packs rows that stay put
        self._host_head = use_resident and isinstance(runners["head_active"], TorchRunner) and rows_device.type == "cpu"
        self.buckets = buckets
        self.dtype = torch.float32  # engines take and return fp32 at their boundary
        self.moved_rows = 0  # head columns changed by the last set_active (a delta, not a rebuild)
        self.draft_vocab_ids = plan.ids[: plan.size].clone()  # the drafter's own vocabulary (policy eagle3)
        self._use(plan)

    def _use(self, plan: GatherPlan, cols: torch.Tensor | None = None) -> None:
        """Point the head at ``plan``. ``cols``: the host columns whose id differs from the current
        plan's (same bucket); on a GPU only those entries of the id maps go up, and a bias that did
        not change (same size) is not sent again."""
        previous = getattr(self, "plan", None)
        same_size = previous is not None and cols is not None and plan.size == previous.size
        self.plan = plan  # host tensors
        if not self._to_map.cuda:  # host maps: the plan's own ids (a view), nothing to patch
            self._id_map = plan.ids[: plan.size]
        else:
            self._id_map = self._to_map.patch("id_map", self._id_map if same_size else None, plan.ids[: plan.size],
                                              cols[cols < plan.size] if same_size else None)
        if previous is None or plan.bias is not previous.bias:
            self._bias = self._to_rows.upload("bias", plan.bias)
        if self.active_rows is None:  # the in-graph gather head reads the ids themselves
            self._active = self._to_rows.patch("active", getattr(self, "_active", None), plan.ids, cols)

    def set_active(self, target_ids: torch.Tensor) -> None:
        """Draft over ``target_ids`` from the next call on; logits column j is token ``id_map[j]``.

        Handing back the tensor the current plan was made from (what static policies do) costs
        nothing; a changed set costs its delta: the plan update is linear in the set, and only the
        columns whose id changed are copied and uploaded."""
        if target_ids is self._requested:
            self.moved_rows = 0
            return
        if self._lay_out:  # a fresh layout, the set's own order (``lay_out_next``)
            self._lay_out = False
            plan = make_plan(target_ids.cpu(), self.buckets, self.plan.bias.dtype)
            self.moved_rows = plan.size
            cols = None
        else:  # plans live on the host; the library updates them when it is built (``native_plan.py``)
            plan, self.moved_rows, cols = plan_update(self.plan, target_ids.cpu(), self.buckets)
        self._requested = target_ids
        if plan is self.plan:
            return
        if self.active_rows is not None:
            self.active_rows.follow(plan, cols)
        self._use(plan, cols)

    def lay_out_next(self) -> None:
        """Lay out the next set ``set_active`` gets afresh, in its own order, instead of moving in only what changed.

        Why: ``update_plan`` keeps a retained id in its column. A policy's first set then keeps its ids where the
        drafter's own vocabulary had them, so a living vocabulary's core sits scattered among columns that change
        every step. ``PackedHead`` packs only leading columns that stay put, so it found none: at K = 16,384
        every step packed all 16,384 rows again (2.2 ms a step, and head calls twice as slow; stop 37). Laid out
        in its own order, a policy's set has its core first, and the core never leaves. The C++ library lays out
        a policy's first set the same way."""
        self._lay_out = True

    @property
    def reservoir(self) -> torch.Tensor | None:
        """The rows the head reads, or the host copy of an engine's own rows (TensorRT; None if not loaded)."""
        return self.host_rows if self.active_rows is None else self.active_rows.reservoir

    def rows_changed(self, target_ids: torch.Tensor) -> None:
        """Reservoir rows of ``target_ids`` were changed in place: refresh the resident copy, or refit
        an engine that holds its own rows (TensorRT refits whole weights: the cost is one upload)."""
        if self.active_rows is not None:
            self.active_rows.refresh(target_ids)
        elif self.host_rows is not None:
            self.runners["head"].update_weight("reservoir", self.host_rows)

    def trunk_weights(self) -> dict[str, torch.Tensor]:
        """The fuse and trunk weights as the stages name them (``fc.weight``, ``layer.*``, ``norm.weight``),
        for alignment methods that update them. Read from the torch stages, or from the ONNX Runtime
        sessions' bound weights; TensorRT engines do not hand their weights back."""
        weights = {}
        for stage in ("fuse", "trunk"):
            runner = self.runners[stage]
            if hasattr(runner, "module"):
                weights.update({n: p.detach() for n, p in runner.module.named_parameters()})
            elif hasattr(runner, "weights"):
                runner.activate()
                for name, array in runner.weights.items():
                    tensor = torch.from_numpy(array)
                    weights[name[:-2] if name.endswith(".T") else name] = tensor.T if name.endswith(".T") else tensor
            else:
                raise NotImplementedError(f"the {stage} runner {type(runner).__name__} does not expose its weights")
        return {n: w.clone() for n, w in weights.items() if n.endswith((".weight", ".bias"))}  # not rope's inv_freq

    def update_trunk_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Write fuse/trunk weights (names as ``trunk_weights``) into the live engines, in place:
        torch parameters are copied into, ONNX Runtime weights through ``update_weight``, TensorRT by refit."""
        for name, value in weights.items():
            stage = "fuse" if name.startswith("fc.") else "trunk"
            runner = self.runners[stage]
            if hasattr(runner, "module"):
                with torch.no_grad():
                    dict(runner.module.named_parameters())[name].copy_(value)
            else:
                runner.update_weight(name, value)

    @property
    def context_state(self) -> torch.Tensor | None:
        """The head input at the newest committed token (what semantic retrieval queries with)."""
        return None if self.root_normed is None else self.root_normed[-1]

    @property
    def active_ids(self) -> torch.Tensor:
        return self._id_map

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Head column -> target id, through the current plan's id map."""
        return self._id_map[draft_ids.to(self._id_map.device)]

    def embed(self, target_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(target_ids)

    @torch.no_grad()
    def __call__(self, hidden: torch.Tensor, target_ids: torch.Tensor, positions: torch.Tensor,
                 cache: DrafterKVCache, start: int, mask: torch.Tensor | None,
                 logit_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The eager drafter's call (``runtime/drafter.py``): ``mask`` None for one input that sees every slot
        up to it, ``logit_rows`` n for the last n inputs' logits alone."""
        device, c = hidden.device, self.config
        if mask is None:  # the engines take a mask
            check_unmasked(target_ids.shape[1])
            mask = torch.ones(1, start + 1, dtype=torch.bool, device=device)
        hidden = hidden.float()
        features_in = hidden.shape[-1] == 3 * c.target_hidden_size
        if features_in:
            hidden = self.runners["fuse"].infer({"features": hidden})["hidden"].to(device)
        embeds = self.embed(target_ids).float()
        b, t = target_ids.shape
        if self.static_past:  # the whole capacity; slots not yet written (or scratch) are masked out
            capacity = cache.keys.shape[2]
            full = torch.zeros(t, capacity + t, dtype=torch.bool, device=device)
            full[:, :start], full[:, capacity:] = mask[:, :start], mask[:, start:]
            past_keys, past_values, mask = cache.keys.float(), cache.values.float(), full
        elif start == 0:  # engines take a non-empty past: one dummy slot that the mask hides
            empty = torch.zeros(b, c.num_key_value_heads, 1, c.head_dim, device=device)
            past_keys = past_values = empty
            mask = torch.cat((torch.zeros(t, 1, dtype=torch.bool, device=device), mask), dim=1)
        else:
            past_keys, past_values = cache.keys[:, :, :start].float(), cache.values[:, :, :start].float()
        out = self.runners["trunk"].infer({"hidden": hidden, "embeds": embeds, "positions": positions,
                                           "past_keys": past_keys, "past_values": past_values, "mask": mask})
        cache.write(start, out["new_keys"].to(device, cache.keys.dtype), out["new_values"].to(device, cache.values.dtype))
        normed = out["normed"].reshape(b * t, c.hidden_size)
        if features_in:  # the cycle's first call: its last row sits at the newest committed token
            self.root_normed = normed.detach().clone()
            if self.on_root_state is not None:
                self.on_root_state(self.root_normed[-1])
        rows = t if logit_rows is None else logit_rows
        if rows != t:  # the head over the last rows of each sequence only
            normed = normed.reshape(b, t, c.hidden_size)[:, t - rows:].reshape(b * rows, c.hidden_size)
        if self._host_head:
            logits = self.active_rows.logits(normed, self._bias)
        elif self.active_rows is not None:
            feed = {"normed": normed, "rows": self.active_rows.rows, "bias": self._bias}
            logits = self.runners["head_active"].infer(feed)["logits"]
        else:
            feed = {"normed": normed, "active": self._active, "bias": self._bias}
            logits = self.runners["head"].infer(feed)["logits"]
        return out["hidden_out"].to(device), logits[:, : self.plan.size].reshape(b, rows, self.plan.size).to(device)


def eager_compiled(drafter, reservoir: torch.Tensor, buckets: tuple[int, ...]) -> CompiledDrafter:
    """The torch backend built in memory from a loaded drafter and a reservoir (no bundle on disk)."""

    head = HeadStage(reservoir)
    modules = {"fuse": FuseStage(drafter), "trunk": TrunkStage(drafter), "head": head, "head_active": ActiveHeadStage()}
    runners = {stage: TorchRunner(stage, modules[stage], list(SIGNATURES[stage].inputs), list(SIGNATURES[stage].outputs))
               for stage in modules}
    vocab_ids = drafter.draft_vocab_target_ids().cpu()
    return CompiledDrafter(drafter.config, drafter.d2t, drafter._table[0], runners, make_plan(vocab_ids, buckets), buckets,
                           reservoir=head.reservoir)
