"""Vocabulary policies, chosen by name: ``full``, ``eagle3``, ``frspec:K``, ``dynaspec:K:C``, ``evospec:K``.

``evospec:K`` retrieves on a worker thread one cycle ahead (``PipelinedPolicy``);
``evospec:K:sync`` does the same work on the decoding thread (to measure what that hides, and what the
pipeline's lag costs); ``evospec:K:VARIANT`` runs a named variant of EvoSpec's settings
(``evospec_settings``), ``evospec:K:VARIANT:sync`` that variant on the decoding thread.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evospec.core.errors import SettingsError
from evospec.runtime.vocab.base import PolicyInputs, StaticPolicy, VocabPolicy
from evospec.runtime.vocab.dynaspec import DynaSpecPolicy, Router, RouterClusters
from evospec.runtime.vocab.evospec_policy import EvoSpecPolicy
from evospec.runtime.vocab.evospec_settings import EvoSpecConfig
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.runtime.vocab.mass_fill import MassFill, MassRouted
from evospec.runtime.vocab.pipelined import PipelinedPolicy
from evospec.runtime.vocab.refresh_gate import RefreshGate
from evospec.runtime.vocab.routed_semantic import RoutedSemantic
from evospec.runtime.vocab.static import eagle3_policy, frspec_policy, full_policy

ALIGN = "+align"  # a policy name's suffix: run it with EvoSpec's online alignment (``evospec:K+align``)
POLICY_NAMES = ("full", "eagle3", "frspec:K", "dynaspec:K:C", "evospec:K", "evospec:K:sync", "evospec:K:VARIANT",
                "evospec:K:VARIANT:sync")


def split_align(spec: str) -> tuple[str, bool]:
    """``evospec:1024+align`` -> (``evospec:1024``, True): the policy and whether online alignment runs with it."""
    if spec.endswith(ALIGN):
        return spec[: -len(ALIGN)], True
    if "+" in spec:
        raise SettingsError(f"policy {spec!r}: the only suffix after '+' is 'align' (e.g. evospec:1024+align)")
    return spec, False


def last_in_fill(settings, table: TokenFrequencies, inputs: PolicyInputs) -> torch.Tensor | None:
    """[V] the rows the mass fill takes only after all others (``mass_unseen_last``, ``mass_synthesised_last``)."""
    if not (settings.mass_unseen_last or settings.mass_synthesised_last):
        return None
    last = torch.zeros(inputs.vocab_size, dtype=torch.bool)
    if settings.mass_unseen_last:
        last |= table.counts[: inputs.vocab_size] == 0
    if settings.mass_synthesised_last:
        trained = torch.zeros(inputs.vocab_size, dtype=torch.bool)
        trained[inputs.draft_vocab_ids] = True
        last |= ~trained
    return last


def _router_clusters(router: str | Path, inputs: PolicyInputs) -> RouterClusters:
    """A DynaSpec router file as the fill's cluster index, checked against the bundle's vocabulary."""
    index = RouterClusters(Router.load(router))
    if index.labels.numel() != inputs.vocab_size:
        raise SettingsError(f"router {router} labels {index.labels.numel()} tokens; this bundle's vocabulary has "
                            f"{inputs.vocab_size}")
    return index


def _fill(index, policy: EvoSpecPolicy, settings, table: TokenFrequencies, inputs: PolicyInputs) -> MassFill:
    """The fill of ``policy``'s tail over ``index``'s clusters (the mass index, or a router's)."""
    return MassFill(index, policy.core, table.ranked(inputs.vocab_size, inputs.vocab_size),
                    last_in_fill(settings, table, inputs), settings.mass_sticky, table.counts, settings.mass_prior,
                    settings.mass_rank)


def gated(policy, settings):
    """``policy`` (routed) behind the refresh gate when the settings ask for one (``refresh_gap`` > 1)."""
    return RefreshGate(policy, settings.refresh_gap, settings.refresh_hold) if settings.refresh_gap > 1 else policy


def make_policy(spec: str, inputs: PolicyInputs, frequencies: str | Path | None = None,
                router: str | Path | None = None, evospec: EvoSpecConfig | None = None) -> VocabPolicy:
    """A policy from its name; ``frspec:K`` and ``evospec:K`` need a frequency file (``evospec vocab
    frequencies``), ``dynaspec:K:C`` a router file (``evospec vocab dynaspec``); ``evospec`` holds
    EvoSpec's settings and variants (default: the built-in ones)."""
    name, _, arg = spec.partition(":")
    if name == "full" and not arg:
        return full_policy(inputs)
    if name == "eagle3" and not arg:
        return eagle3_policy(inputs)
    if name == "frspec":
        if not arg.isdigit():
            raise SettingsError(f"policy {spec!r}: expected frspec:K with an integer K, e.g. frspec:16384")
        if frequencies is None:
            raise SettingsError("policy frspec:K needs --frequencies FILE (make one with `evospec vocab frequencies`)")
        return frspec_policy(inputs, int(arg), TokenFrequencies.load(frequencies))
    if name == "evospec":
        arg, _, mode = arg.partition(":")
        if not arg.isdigit():
            raise SettingsError(f"policy {spec!r}: expected evospec:K, evospec:K:sync or evospec:K:VARIANT with an "
                                "integer K, e.g. evospec:16384")
        if frequencies is None:
            raise SettingsError("policy evospec:K needs --frequencies FILE (`evospec vocab frequencies --successors 8`)")
        config = evospec or EvoSpecConfig.builtin()
        settings = config.for_policy(spec).policy
        table = TokenFrequencies.load(frequencies)
        policy = EvoSpecPolicy(int(arg), table, inputs.vocab_size, settings, semantic=inputs.semantic, name=spec,
                               frequency_fill=not settings.mass_fill)  # a mass-routed set fills its own tail
        if not (mode == "sync" or mode.endswith(":sync")):  # sync: retrieval on the decoding thread
            policy = PipelinedPolicy(policy)
        router_fill = None  # the fill over a DynaSpec router's clusters: for every request, or greedy ones (auto)
        if settings.mass_fill and (settings.fill_source == "router" or
                                   (settings.fill_source == "auto" and router is not None)):
            if router is None:
                raise SettingsError(f"policy {spec!r} fills its tail from a DynaSpec router's clusters: give --router "
                                    "FILE (train one with `evospec vocab dynaspec`)")
            router_fill = _fill(_router_clusters(router, inputs), policy, settings, table, inputs)
            if settings.fill_source == "router":
                return gated(MassRouted(policy, router_fill, int(arg)), settings)
        if settings.mass_fill:
            if inputs.mass is None:
                raise SettingsError(f"policy {spec!r} fills its tail by mass, and this bundle has no mass index "
                                    "(compile it with --mass-clusters > 0, or run evospec:K:frequency-fill)")
            if settings.route_semantic:
                raise SettingsError(f"policy {spec!r}: mass_fill and route_semantic both route the set; choose one")
            return gated(MassRouted(policy, _fill(inputs.mass, policy, settings, table, inputs), int(arg), router_fill),
                         settings)
        if settings.route_semantic:
            if inputs.semantic is None:
                raise SettingsError(f"policy {spec!r} routes through the semantic index, and this bundle has none "
                                    "(compile it with --index-dims > 0)")
            return RoutedSemantic(policy, inputs.semantic, settings.route_semantic, int(arg) - policy.core_size)
        return policy
    if name == "dynaspec":
        k, _, c = arg.partition(":")
        if not (k.isdigit() and c.isdigit()):
            raise SettingsError(f"policy {spec!r}: expected dynaspec:K:C with integers K and C, e.g. dynaspec:16384:64")
        if router is None:
            raise SettingsError("policy dynaspec:K:C needs --router FILE (train one with `evospec vocab dynaspec`)")
        return DynaSpecPolicy(int(k), int(c), Router.load(router), inputs.vocab_size)
    raise SettingsError(f"unknown vocabulary policy {spec!r}; known: {', '.join(POLICY_NAMES)}")


__all__ = ["ALIGN", "POLICY_NAMES", "PolicyInputs", "StaticPolicy", "VocabPolicy", "make_policy", "split_align"]
