"""The speculative decoding loop: draft, verify in one target pass, accept, roll back.

Invariant between steps: the target's KV cache holds every committed token except the newest
(the *root*), and the drafter's cache holds one (target state, next token) pair per target slot.
A step (1) feeds the drafter the pairs committed by the previous step, (2) drafts a tree from its
last state, (3) runs the target once over [root] + tree, (4) verifies, and (5) keeps only the
accepted path in the target cache. ``use_draft=False`` runs the same loop with an empty tree.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from evospec.core.errors import CompatibilityError, SettingsError
from evospec.core.settings import DecodeSettings
from evospec.runtime.align.feedback import CycleFeedback, apply_changes
from evospec.runtime.align.methods import make_evospec_aligner
from evospec.runtime.bundle import check_target, load_compiled_drafter, read_manifest
from evospec.runtime.checkpoint import load_drafter, read_config
from evospec.runtime.drafter import DrafterKVCache, Eagle3Drafter, default_tap_layers
from evospec.runtime.sampled_tree import draft_sampled_tree
from evospec.runtime.shape_choice import CHAIN, TREE, ShapeChooser, chain_tokens
from evospec.runtime.speculation_gate import SpeculationGate
from evospec.runtime.stats import DecodeStats, GenerationResult
from evospec.runtime.target import TargetModel, keep_cache_prefix, keep_cache_slots, load_target
from evospec.runtime.target_law import TargetRow
from evospec.runtime.tree import DraftRequest, DraftTree, StepCosts, draft_tree
from evospec.runtime.tree_costs import StepCostModel, StepTiming, tried_edges
from evospec.runtime.trunk_clock import TrunkClock, trunk_module
from evospec.runtime.verify import verify_greedy, verify_sampling
from evospec.runtime.vocab import PolicyInputs, make_policy, split_align
from evospec.runtime.vocab.evospec_settings import EvoSpecConfig

logger = logging.getLogger(__name__)


class TokenStream:
    """Iterates over new token ids as they are accepted; ``result`` is set once it is exhausted."""

    def __init__(self, steps: Iterator[int], finish) -> None:
        self._steps = steps
        self._finish = finish
        self._tokens: list[int] = []
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[int]:
        for token in self._steps:
            self._tokens.append(token)
            yield token
        self.result = self._finish(self._tokens)


class SpeculativeGenerator:
    """Exact speculative decoding with an EAGLE-3 drafter (or plain decoding without one).

    Args:
        target: The target model. Its tap layers are set from the drafter's config here.
        drafter: An EAGLE-3 drafter, or None for plain autoregressive decoding.
    """

    def __init__(self, target: TargetModel, drafter: Eagle3Drafter | None = None, policy=None) -> None:
        if drafter is not None:
            target = _tapped(target, drafter.config.tap_layers)
        if policy is not None and not hasattr(drafter, "set_active"):
            raise CompatibilityError("vocabulary policies need a compiled drafter (`evospec compile`, then --bundle)")
        self.target = target
        self.drafter = drafter
        self.policy = policy  # chooses the drafter's active vocabulary each step (compiled drafters)
        self._static_cache = None  # the drafter cache kept between calls for static-shape (graphed) drafters
        self.aligner = None  # a HeadAligner (runtime/align) updating the drafter's head rows online
        self.native = None  # a NativeDrafter (the C++ library) drafting in place of ``drafter``'s Python stages
        self._verifier = None  # the C++ library's sampling verifier, once a call asks for it
        self._device = target.device  # set again by each call (_decode): the model may have moved
        self._warned_topk_tree = False  # whether the C++ drafter's top-k trees at T > 0 were warned about
        self.step_costs = StepCostModel()  # what steps cost on this machine, for value-based budgets (auto)
        self.shapes = ShapeChooser()  # chain or tree per step by tokens per ms (auto on a tree)
        self.gate = SpeculationGate()  # speculate or take a plain step, by tokens per ms (plain_fallback)
        self._laid_out_for = None  # the policy whose first set the drafter laid out afresh (lay_out_next)

    @classmethod
    def from_models(cls, model, drafter: Eagle3Drafter | None = None, tokenizer=None) -> SpeculativeGenerator:
        """Wrap an already-loaded HF causal LM (and optional tokenizer) and drafter."""
        return cls(TargetModel(model, (), tokenizer), drafter)

    @classmethod
    def from_paths(
        cls, target_dir: str | Path, drafter_dir: str | Path | None = None, *, device: str = "cpu", dtype: str = "float32",
        tap_numbering: str = "input",
    ) -> SpeculativeGenerator:
        """Load a target (HF directory) and an EAGLE-3 drafter (official layout) from local paths;
        ``tap_numbering``: ``output`` for drafters whose config counts taps as SGLang does (SpecForge)."""
        if drafter_dir is not None:
            read_config(drafter_dir, tap_numbering)  # fail on a bad drafter before the (slow) target load
        target = load_target(target_dir, device=device, dtype=dtype)
        drafter = None
        if drafter_dir is not None:
            drafter = load_drafter(
                drafter_dir,
                target_embeddings=target.model.get_input_embeddings(),
                target_hidden_size=target.hidden_size,
                target_vocab_size=target.vocab_size,
                device=target.device,
                dtype=target.model.dtype,
                target_num_layers=target.num_layers,
                tap_numbering=tap_numbering,
            )
            drafter.use_timed_head()  # CPU: the drafter's head runs on every drafter call, up to six a step
        return cls(target, drafter)

    @classmethod
    def from_bundle(
        cls, bundle: str | Path, target_dir: str | Path, *, device: str = "cpu", dtype: str = "float32",
        vocab: str | None = None, frequencies: str | Path | None = None, router: str | Path | None = None,
        evospec_config: str | Path | None = None, drafter_runtime: str = "python", threads: int = 0,
        policy_runtime: str = "python",
    ) -> SpeculativeGenerator:
        """Draft with a compiled bundle (``evospec compile``) for the target it was compiled for.

        ``vocab`` names a vocabulary policy (``full``, ``eagle3``, ``frspec:K``, ``evospec:K``, ...);
        a ``+align`` suffix adds EvoSpec's online alignment (``evospec:K+align``: the full method);
        default: the drafter's own vocabulary, fixed. ``evospec_config``: a TOML file of EvoSpec's
        settings (default: the built-in ones, mirrored by configs/evospec.toml). ``drafter_runtime``:
        ``python`` (runtime/compiled_drafter.py) or ``cpp`` (the C++ library through its C ABI, torch
        bundles; the policy runs inside it; ``threads``: its libtorch threads, 0 = unchanged). ``policy_runtime``:
        with Python's drafter, run the vocabulary policy in ``python`` or in the C++ library (``cpp``: the same sets,
        less time on the decoding thread; EvoSpec's built-in settings; ``runtime/vocab/native_policy.py``).
        """
        if drafter_runtime not in ("python", "cpp"):
            raise SettingsError(f"drafter runtime {drafter_runtime!r}: expected python or cpp")
        if policy_runtime not in ("python", "cpp"):
            raise SettingsError(f"policy runtime {policy_runtime!r}: expected python or cpp")
        if policy_runtime == "cpp":
            if drafter_runtime == "cpp":
                raise SettingsError("--policy-runtime cpp is for Python's drafter; the C++ drafter runs its policy "
                                    "inside the library already")
            if evospec_config is not None:
                raise SettingsError("--evospec-config with --policy-runtime cpp: the library runs EvoSpec's built-in "
                                    "settings; use --policy-runtime python for a settings file")
            if vocab is None:
                raise SettingsError("--policy-runtime cpp needs a policy to run (--vocab evospec:K, dynaspec:K:C, ...)")
        config = EvoSpecConfig.load(evospec_config)  # a bad config or policy name fails before the target load
        name, align = split_align(vocab) if vocab is not None else (None, False)

        manifest = read_manifest(bundle)  # a bad bundle fails before the (slow) target load
        check_target(Path(bundle), manifest, Path(target_dir))
        if drafter_runtime == "cpp":
            return cls._with_native_drafter(bundle, target_dir, device, dtype, name, align, frequencies, router,
                                            evospec_config, threads)
        target = load_target(target_dir, device=device, dtype=dtype)
        drafter, _ = load_compiled_drafter(bundle, target)
        policy = None
        if name is not None and policy_runtime == "cpp":
            from evospec.runtime.vocab.native_policy import native_policy

            policy = native_policy(name, bundle, drafter.config.vocab_size, drafter.config.hidden_size,
                                   frequencies or drafter.frequencies_path, router)
        elif name is not None:
            inputs = PolicyInputs(drafter.config.vocab_size, drafter.draft_vocab_ids, drafter.semantic_index,
                                  drafter.mass_index)
            policy = make_policy(name, inputs, frequencies or drafter.frequencies_path, router, config)
        generator = cls(target, drafter, policy)
        if align:
            if drafter.reservoir is None:
                raise CompatibilityError(f"{bundle}: +align needs a bundle whose head rows live on the host (ort or torch)")
            generator.aligner = make_evospec_aligner(drafter, config.for_policy(name))
        return generator

    @classmethod
    def _with_native_drafter(cls, bundle, target_dir, device, dtype, policy, align, frequencies, router, evospec_config,
                             threads) -> SpeculativeGenerator:
        """The C++ library drafts (and runs the policy); Python keeps the target and verification. No Python
        drafter is loaded: its reservoir would be a second copy of the rows the library holds."""
        if align:
            raise SettingsError("+align with the C++ drafter: the library applies row updates, but the aligner that "
                                "computes them runs with Python's drafter; use --drafter-runtime python")
        if evospec_config is not None:
            raise SettingsError("--evospec-config with the C++ drafter: it runs EvoSpec's built-in settings "
                                "(DrafterOptions::evospec in C++); use --drafter-runtime python for a settings file")
        if device != "cpu":
            raise SettingsError(f"the C++ drafter runs on the CPU; the target is on {device}: use --drafter-runtime python")
        from evospec.runtime.native_drafter import NativeDrafter

        native = NativeDrafter(bundle, vocab=policy, frequencies=frequencies, router=router, target_dir=target_dir,
                               threads=threads)  # a bad bundle or policy fails before the (slow) target load
        generator = cls(load_target(target_dir, device=device, dtype=dtype))
        generator.target = _tapped(generator.target, read_config(Path(bundle) / "drafter").tap_layers)
        generator.native = native
        return generator

    def encode(self, text: str) -> list[int]:
        if self.target.tokenizer is None:
            raise CompatibilityError("the target directory has no tokenizer; pass token ids instead of text")
        return list(self.target.tokenizer.encode(text))

    def decode(self, token_ids: list[int]) -> str | None:
        tok = self.target.tokenizer
        return None if tok is None else tok.decode(token_ids, skip_special_tokens=False)

    def stream(self, prompt_ids: list[int], settings: DecodeSettings | None = None) -> TokenStream:
        """Stream new token ids; ``stream.result`` holds the full result once iteration ends."""
        settings = settings or DecodeSettings()
        if not prompt_ids:
            raise CompatibilityError("the prompt is empty: speculative decoding needs at least one prompt token")
        bad = [t for t in prompt_ids if not 0 <= t < self.target.vocab_size]
        if bad:
            raise CompatibilityError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.target.vocab_size})")
        limit = getattr(self.target.model.config, "max_position_embeddings", None)
        if limit is not None and len(prompt_ids) + settings.max_new_tokens > limit:
            logger.warning("prompt (%d tokens) + max_new_tokens (%d) exceeds the target's context length (%d "
                           "positions): tokens past it come from positions the target was not trained on",
                           len(prompt_ids), settings.max_new_tokens, limit)
        stats = DecodeStats(prompt_tokens=len(prompt_ids))
        start = time.perf_counter()

        def finish(tokens: list[int]) -> GenerationResult:
            stats.new_tokens = len(tokens)
            stats.wall_time_s = time.perf_counter() - start
            return GenerationResult(token_ids=tokens, text=self.decode(tokens), stats=stats)

        return TokenStream(self._decode(list(prompt_ids), settings, stats), finish)

    def generate(self, prompt_ids: list[int], settings: DecodeSettings | None = None) -> GenerationResult:
        stream = self.stream(prompt_ids, settings)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def _sync(self) -> None:
        # the device as _decode found it: asking the model (HF walks its parameters) took ~50 us a call, several
        # calls a step on the decoding thread
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    @torch.no_grad()
    def _decode(self, prompt: list[int], s: DecodeSettings, stats: DecodeStats) -> Iterator[int]:
        target, drafter, device = self.target, self.drafter, self.target.device
        self._device = device  # for the per-step helpers (_draft, _sync)
        generator = torch.Generator().manual_seed(s.seed)
        eos = target.eos_token_ids if s.stop_on_eos else set()
        native = self.native if s.use_draft else None
        use_draft = s.use_draft and (drafter is not None or native is not None)
        auto = use_draft and s.draft_budget == "auto"
        # auto on a tree also weighs the chain each step (shape_choice.py); the C++ drafter drafts no sampled chain
        choose_shape = auto and s.draft_tree == "tree" and not (native is not None and s.temperature > 0)
        # auto on a chain with siblings: each step drafts the plain chain or the chain with siblings (the "tree"
        # shape: it holds the chain, so its steps say what the chain would have emitted), no value rule
        siblings_choice = auto and s.draft_tree == "chain" and s.draft_siblings > 0
        choose_shape = choose_shape or siblings_choice
        gate = self.gate if use_draft and s.plain_fallback else None
        if native is not None and s.temperature > 0 and s.tree_width == 1:
            if not native.samples_chains:
                raise SettingsError("this build of the C++ drafter library drafts no sampled chain (temperature > 0, "
                                    "--draft-tree chain): rebuild it with `make cpp`, or use the Python drafter")
            if auto:
                raise SettingsError("--draft-budget auto with a sampled chain from the C++ drafter: the library keeps "
                                    "every draw; use --draft-budget fixed or the Python drafter")
        if native is not None and s.temperature > 0 and s.tree_width > 1:  # the library's trees are top-k
            if s.tree_children == "sampled":
                raise SettingsError("the C++ drafter drafts top-k trees; a tree with sampled children (--tree-children "
                                    "sampled) draws from Python's generator: use --tree-children topk (or auto) or the "
                                    "Python drafter")
            if s.tree_children == "auto" and not self._warned_topk_tree:
                self._warned_topk_tree = True  # once per generator: a bench makes one call per prompt
                logger.warning("the C++ drafter drafts top-k trees at temperature > 0 (--tree-children auto): their "
                               "children are verified as point masses and rarely accepted where the target's law "
                               "is flat (README, stop 40: 0.41-0.52x plain on the medium pair at T = 1). --draft-tree "
                               "chain drafts a sampled chain in the library; Python's drafter drafts sampled trees")
        # plain steps get the same verifier as speculative ones (a plain bench row is verified as its speculative row)
        verifier = self._native_verifier() if s.sampled_verifier(self.native is not None) == "native" else None
        policy = self.policy if use_draft else None
        if policy is not None:
            if hasattr(policy, "decoding"):  # a policy whose set depends on greedy or sampled decoding
                policy.decoding(s.greedy)
            policy.reset(prompt)
            if self._laid_out_for is not policy:  # its first set laid out in its own order: its core in front
                drafter.lay_out_next()
                self._laid_out_for = policy
        tcache = target.new_cache()

        t0 = time.perf_counter()
        out = target.forward(torch.tensor([prompt], device=device), torch.arange(len(prompt), device=device)[None], tcache)
        root = self._pick(out.logits[-1], s, generator)
        self._sync()
        stats.prefill_time_s = time.perf_counter() - t0
        yield root
        emitted = 1
        if root in eos or emitted >= s.max_new_tokens:
            return
        if native is not None:
            native.start(prompt, greedy=s.greedy)
            native_siblings = s.draft_siblings
            native.set_siblings(native_siblings, s.draft_sibling_ratio)
        elif use_draft:
            capacity = len(prompt) + s.max_new_tokens + 1 + s.draft_depth * s.tree_width
            if getattr(drafter, "static_past", False):
                # CUDA graphs read the cache in place: keep one cache (rounded up, reused while it is large
                # enough; stale slots are masked) so their signatures hold from call to call
                if self._static_cache is None or self._static_cache.keys.shape[2] < capacity:
                    self._static_cache = DrafterKVCache(drafter.config, -(-capacity // 512) * 512, device, drafter.dtype)
                dcache = self._static_cache
                dcache.length = 0  # a new sequence: kept for its shape, not its contents (old slots are masked)
            else:
                dcache = DrafterKVCache(drafter.config, capacity, device, drafter.dtype)
        pairs_hidden, pairs_tokens = out.features, prompt[1:] + [root]
        aligner = self.aligner if use_draft else None
        pending_logits = out.logits[1:]  # the target's logits for what the next root call's rows propose
        routed = policy is not None and hasattr(policy, "route")
        start_retrieval = getattr(policy, "start_pending", None)
        if policy is not None:
            policy.observe([root])
        if routed:  # the set is chosen from this cycle's fresh root state, between trunk and head
            drafter.on_root_state = lambda state: self._route(policy, state, stats)
        trunk = TrunkClock(trunk_module(drafter) if use_draft and native is None else None)
        stats.draft_split = trunk.timed or not use_draft
        # plain_fallback: whether this step drafts (the first always does: the drafter takes the prompt there), and
        # what plain steps committed that the policy has not observed yet (it observes before the next draft only)
        speculate = gate is None or gate.speculate(first=True)
        unobserved: list[int] = []
        unobserved_top: list[torch.Tensor] = []
        no_draft = DraftTree.empty()  # a plain step's tree, made once (three tensors a step cost ~50 us here)
        try:
            while True:
                t0 = time.perf_counter()
                tree = no_draft
                root_s = tree_s = 0.0
                shape = self.shapes.next() if choose_shape and speculate else s.draft_tree
                width = 1 if shape == CHAIN else s.tree_width
                siblings = 0 if siblings_choice and shape == CHAIN else s.draft_siblings
                if policy is not None and not routed and speculate:
                    r0 = time.perf_counter()
                    active = policy.active_ids()
                    stats.retrieval_time_s += time.perf_counter() - r0
                    self._set_active(active, stats)
                if use_draft and speculate:
                    d0 = time.perf_counter()
                    before = stats.retrieval_time_s + stats.plan_time_s  # routing inside the draft call
                    if siblings_choice or (choose_shape and shape == CHAIN):  # a whole chain: fixed, no value rule
                        budget, costs = s.draft_depth, None
                    elif auto:
                        budget, costs = self.step_costs.plan(s.tree_budget, width)
                        if costs is not None and s.draft_spine and width > 1:  # the tree holds the chain
                            costs = dataclasses.replace(costs, spine=s.draft_depth)
                    else:
                        budget, costs = s.tree_budget, None
                    if native is not None:
                        if siblings != native_siblings:
                            native_siblings = siblings
                            native.set_siblings(siblings, s.draft_sibling_ratio)
                        tree, root_s, tree_s = self._draft_native(native, pairs_hidden, root, s, stats, width, budget,
                                                                  costs, generator)
                    else:
                        with trunk:
                            tree, root_s, tree_s = self._draft(dcache, pairs_hidden, pairs_tokens, s, generator,
                                                               width, budget, costs, siblings)
                        stats.trunk_time_s = trunk.seconds
                    self._sync()
                    stats.draft_time_s += time.perf_counter() - d0 - (stats.retrieval_time_s + stats.plan_time_s - before)
                t1 = time.perf_counter()
                past = tcache.get_seq_length()
                ids = torch.tensor([[root] + tree.tokens.tolist()], device=device)  # [1, 1+N]
                positions = (past + torch.cat((torch.zeros(1, dtype=torch.long), tree.depths))).to(device)[None]
                started_s = 0.0  # starting the policy's job: retrieval's time on this thread, not the target's
                if start_retrieval is not None:
                    r0 = time.perf_counter()
                    start_retrieval()  # the worker's Python runs while the forward holds no GIL
                    started_s = time.perf_counter() - r0
                    stats.retrieval_time_s += started_s
                out = target.forward(ids, positions, tcache, tree.attention_mask())
                t2 = time.perf_counter()
                if s.greedy:
                    verdict = verify_greedy(tree, out.logits)
                elif verifier is not None:
                    verdict = verifier.verify(tree, out.logits, s.temperature, s.top_p, generator)
                else:
                    verdict = verify_sampling(tree, out.logits, s.temperature, s.top_p, generator)
                t3 = time.perf_counter()
                accepted = verdict.accepted_nodes
                # rows: the root's and the accepted nodes' rows of this pass (their features feed the next draft)
                if accepted == list(range(len(accepted))):  # node i's parent is node i - 1: the slots are a prefix
                    rows = slice(0, 1 + len(accepted))  # a view, no index tensor (every chain step)
                    keep_cache_prefix(tcache, past + 1 + len(accepted))
                else:
                    index = torch.tensor([0] + [i + 1 for i in accepted])
                    keep_cache_slots(tcache, torch.cat((torch.arange(past), past + index)))
                    rows = index.to(device)
                self._sync()
                t4 = time.perf_counter()
                stats.target_time_s += t2 - t1 - started_s
                stats.verdict_time_s += t3 - t2
                stats.cache_time_s += t4 - t3
                stats.verify_time_s += t4 - t1 - started_s
                stats.steps += 1
                stats.accepted_lengths.append(len(verdict.accepted_nodes))
                stats.draft_tokens_proposed += tree.size
                if auto and speculate and width == s.tree_width and not siblings_choice:  # the cost model prices the
                    # configured shape's nodes (a chain with siblings is chosen whole, not priced)
                    self.step_costs.observe(StepTiming(
                        rows=1 + tree.size, verify_ms=(t4 - t1) * 1e3, root_ms=root_s * 1e3, tree_ms=tree_s * 1e3,
                        level_rows=tree.level_rows, width=width, edges=tried_edges(tree, verdict.accepted_nodes)))

                new_tokens = [int(tree.tokens[i]) for i in verdict.accepted_nodes] + [verdict.bonus]
                if native is not None:  # the tokens after the root it takes features of at its next call
                    native.commit(new_tokens[:-1] if speculate else [root])
                emit = new_tokens[: self._emittable(new_tokens, emitted, eos, s.max_new_tokens)]
                stats.step_tokens.append(len(emit))
                last = len(emit) < len(new_tokens) or emit[-1] in eos or emitted + len(emit) >= s.max_new_tokens
                next_speculate = gate is None or last or gate.speculate()
                if aligner is not None and not speculate:  # the next root call's new rows: this step's root row
                    pending_logits = torch.cat((pending_logits, out.logits[:1]))
                elif aligner is not None:  # root-call row j proposes the token whose target logits are row j here
                    a0 = time.perf_counter()
                    targets = torch.cat((pending_logits, out.logits[:1])).cpu()
                    changes = aligner.feedback(CycleFeedback(
                        drafter.root_normed, targets, len(verdict.accepted_nodes), drafter.active_ids, features=pairs_hidden,
                        tokens=torch.as_tensor(pairs_tokens), new_context=stats.steps == 1, sampled=not s.greedy))
                    if changes:
                        apply_changes(drafter, changes)
                    pending_logits = out.logits[rows][1:]
                    stats.align_time_s += time.perf_counter() - a0
                if policy is not None:
                    if len(emit) == len(new_tokens) and self._rejected(tree, verdict):
                        stats.rejected_choice_total += 1
                        stats.rejected_choice_hits += int(bool((drafter.active_ids.cpu() == verdict.bonus).any()))
                    r0 = time.perf_counter()
                    state = getattr(drafter, "context_state", None)
                    feedback = getattr(policy, "target_top", 0)  # the target's likeliest ids where it verified
                    if feedback:
                        unobserved_top.append(
                            out.logits[rows].topk(min(feedback, out.logits.shape[-1]), dim=-1).indices.cpu())
                    unobserved += new_tokens
                    if next_speculate:  # one observation of everything since the last draft, as the C++ library's
                        if feedback:
                            policy.observe(unobserved, state, torch.cat(unobserved_top))
                        else:
                            policy.observe(unobserved, state)
                        unobserved, unobserved_top = [], []
                    stats.retrieval_time_s += time.perf_counter() - r0
                step_s = time.perf_counter() - t0
                stats.step_time_s += step_s
                if gate is not None:
                    if stats.steps > 1:  # the first step's drafter call takes the whole prompt: not a step's cost
                        gate.observe(speculate, len(emit), step_s * 1e3)
                    stats.plain_steps += not speculate
                if choose_shape and speculate:  # a greedy tree holding the chain says what the chain would have emitted
                    paired = siblings_choice or (shape == TREE and s.greedy and costs is not None
                                                 and costs.spine >= s.draft_depth)
                    self.shapes.observe(shape, len(emit), step_s * 1e3,
                                        chain_tokens(tree, verdict.accepted_nodes, len(emit)) if paired else None)
                for token in emit:
                    yield token
                emitted += len(emit)
                if last:
                    return
                if speculate:
                    pairs_hidden, pairs_tokens = out.features[rows], new_tokens
                else:  # nothing drafted: the drafter takes these positions with the next speculative step's
                    pairs_hidden = torch.cat((pairs_hidden, out.features[rows]))
                    pairs_tokens = pairs_tokens + new_tokens
                root = verdict.bonus
                speculate = next_speculate
        finally:
            if routed:
                drafter.on_root_state = None

    @staticmethod
    def _emittable(new_tokens: list[int], emitted: int, eos: set[int], max_new_tokens: int) -> int:
        """How many of a step's tokens the caller gets: up to and including the first EOS, within the budget."""
        n = min(len(new_tokens), max_new_tokens - emitted)
        stop = next((i + 1 for i, t in enumerate(new_tokens[:n]) if t in eos), n)
        return stop

    @staticmethod
    def _rejected(tree: DraftTree, verdict) -> bool:
        """Whether the step rejected a draft token: the last accepted node (or the root) had children,
        so the target's token there (``verdict.bonus``) is one the drafter should have proposed."""
        last = verdict.accepted_nodes[-1] if verdict.accepted_nodes else -1
        return bool((tree.parents == last).any())

    def _native_verifier(self):
        """The C++ library's sampling verifier (the drafting library's own when the library drafts), made once."""
        if self._verifier is None:
            from evospec.runtime.native_verify import NativeVerifier

            self._verifier = NativeVerifier(self.native.library if self.native is not None else None)
        return self._verifier

    def _set_active(self, active: torch.Tensor, stats: DecodeStats) -> None:
        p0 = time.perf_counter()
        self.drafter.set_active(active)
        stats.plan_time_s += time.perf_counter() - p0
        stats.active_rows_moved += self.drafter.moved_rows
        stats.active_size_sum += self.drafter.plan.size

    def _route(self, policy, state: torch.Tensor, stats: DecodeStats) -> None:
        r0 = time.perf_counter()
        active = policy.route(state)
        stats.retrieval_time_s += time.perf_counter() - r0
        self._set_active(active, stats)

    def _pick(self, logits: torch.Tensor, s: DecodeSettings, generator: torch.Generator) -> int:
        if s.greedy:
            return int(logits.argmax())
        return TargetRow(logits.cpu(), s.temperature, s.top_p).draw(generator)  # the nucleus only if a draw needs it

    @staticmethod
    def _draft_native(native, pairs_hidden: torch.Tensor, root: int, s: DecodeSettings, stats: DecodeStats, width: int,
                      budget: int, costs: StepCosts | None, generator: torch.Generator
                      ) -> tuple[DraftTree, float, float]:
        """The C++ library's tree (with ``costs``: its value-based budget, Python's rule), and the seconds of its
        root call and of drafting past it as the library times them; its policy's choice and row moves happen
        inside ``propose``. A sampled chain is drawn by the library with this generator's numbers, one a level, as
        Python's drafter draws them, and comes with each node's law over the active ids."""
        if s.temperature > 0 and width == 1:
            # one call: the same numbers as one torch.rand(1) a level, as Python's drafter draws them
            uniforms = torch.rand(s.draft_depth, generator=generator, dtype=torch.float64).tolist()
            drafted = native.propose_sampled_chain(pairs_hidden, root, s.draft_depth, s.temperature, uniforms)
        else:
            drafted = native.propose(pairs_hidden, root, s.draft_depth, width, budget, costs)
        if native.policy is not None:
            # the library's time in the policy and the plan, inside its propose: shown as those parts, not as drafting
            policy_s, plan_s = native.policy_seconds()
            stats.retrieval_time_s += policy_s
            stats.plan_time_s += plan_s
            active, moved = (drafted.columns, drafted.moved) if drafted.columns is not None else native.active()
            stats.active_rows_moved += moved
            stats.active_size_sum += len(active)
        tree = DraftTree(tokens=torch.tensor(drafted.tokens, dtype=torch.long),
                         parents=torch.tensor(drafted.parents, dtype=torch.long),
                         depths=torch.tensor(drafted.depths, dtype=torch.long),
                         scores=torch.tensor(drafted.scores) if drafted.tokens and len(drafted.scores) == len(drafted.tokens) else None,
                         level_rows=drafted.level_rows)
        if drafted.laws is not None:
            tree.proposals, tree.proposal_ids = torch.from_numpy(drafted.laws), torch.from_numpy(drafted.columns)
        return tree, drafted.root_ms / 1e3, drafted.tree_ms / 1e3

    def _draft(
        self,
        cache: DrafterKVCache,
        pairs_hidden: torch.Tensor,  # [T, 3*d] target states of newly committed positions
        pairs_tokens: list[int],  # [T] the token after each of them
        s: DecodeSettings,
        generator: torch.Generator,
        width: int,
        budget: int,
        costs: StepCosts | None,
        siblings: int = 0,
    ) -> tuple[DraftTree, float, float]:
        """The step's tree (a chain with ``siblings`` second choices), and the seconds of the drafter's root call
        and of drafting past it."""
        drafter, device = self.drafter, self._device
        r0 = time.perf_counter()
        start, t = cache.length, len(pairs_tokens)
        mask = torch.ones(t, start + t, dtype=torch.bool, device=device).tril(diagonal=start)
        positions = torch.arange(start, start + t, device=device)[None]
        hidden, logits = drafter(
            pairs_hidden[None].to(drafter.dtype),
            torch.tensor([pairs_tokens], device=device),
            positions,
            cache,
            start,
            mask,
            logit_rows=1,  # the drafting starts from the last committed position alone
        )
        cache.length += t
        if s.draft_budget == "auto":
            self._sync()  # a value-based budget times the two parts apart
        r1 = time.perf_counter()
        request = DraftRequest(
            hidden=hidden[0, -1:],
            logits=logits[0, -1],
            committed=cache.length,
            width=width,
            depth=s.draft_depth,
            budget=budget,
            temperature=s.temperature,
            costs=costs,
            siblings=siblings,
            sibling_ratio=s.draft_sibling_ratio,
        )
        if s.temperature > 0 and width > 1 and s.tree_children != "topk":  # Python's drafter samples its children
            tree = draft_sampled_tree(drafter, cache, request, generator)
        else:
            tree = draft_tree(drafter, cache, request, generator)
        if s.draft_budget == "auto":
            self._sync()  # the caller syncs after drafting anyway; only the auto budget's timing needs it here
        return tree, r1 - r0, time.perf_counter() - r1


def _tapped(target: TargetModel, tap_layers: tuple[int, ...] | None) -> TargetModel:
    """The target set to hand out the drafter's three tapped hidden states (EAGLE's default when unset)."""
    taps = tap_layers or default_tap_layers(target.num_layers)
    bad = [i for i in taps if not 0 <= i <= target.num_layers]
    if len(taps) != 3 or bad:
        raise CompatibilityError(
            f"drafter taps target hidden states {taps}, but the target has {target.num_layers} layers "
            f"(valid indices 0..{target.num_layers}, three of them)"
        )
    return target.with_taps(tuple(taps))
