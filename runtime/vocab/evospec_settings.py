"""EvoSpec's settings: how the living vocabulary spends its budget and how online alignment trains
the rows it brings in, with named variants (the ablations) in one TOML file.

The chosen settings are the dataclasses' defaults and the variants (the ablations, each an
override of them) are ``VARIANTS`` below, in code, so an installed package has them;
``configs/evospec.toml`` mirrors both (a test checks) and is the template for a user's own file
(``--evospec-config``). ``evospec:K:NAME`` in a policy list runs variant NAME, ``evospec:K+align``
adds online alignment, ``evospec:K:NAME+align`` both. Each switch changes one thing
(``tests/test_evospec_settings.py`` checks that it does what it claims). The settings were chosen
on the valid split, never on test text (README, "EvoSpec's settings").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evospec.core.errors import SettingsError
from evospec.core.settings import check_field_types, read_toml
from evospec.runtime.align.head_aligner import AlignSettings

RESERVED_VARIANTS = ("sync",)  # a mode (retrieval on the decoding thread), not a settings variant


@dataclass(frozen=True)
class DriftSettings:
    """Topic-switch detection.

    Attributes:
        enabled: False: never drop old evidence (ageing by recency alone).
        fast, slow: smoothing of the short- and long-run miss rates (exponential moving averages).
        jump: drift when fast > slow + jump.
        warmup: steps before drift can fire.
        keep_steps: stamps from this many steps before the drift survive it (0: only the new step's).
        boost: the semantic query after a drift asks for ``boost`` x ``semantic_count`` rows.
    """

    enabled: bool = True
    fast: float = 0.5
    slow: float = 0.05
    jump: float = 0.2
    warmup: int = 8
    keep_steps: int = 1
    boost: int = 8

    def __post_init__(self) -> None:
        check_field_types(self)
        if not (0 < self.fast <= 1 and 0 < self.slow <= 1 and self.jump > 0 and self.warmup >= 0
                and self.keep_steps >= 0 and self.boost >= 1):
            raise SettingsError(f"drift settings out of range: {self}")


@dataclass(frozen=True)
class PolicySettings:
    """How ``evospec:K`` fills its K rows.

    Attributes:
        core_share: share of K held by the most frequent corpus tokens (the rest is the tail).
        context: stamp every prompt and committed token (identifiers and defined terms recur).
        corpus_successors: stamp what followed the newest token in the corpus (the statistical index).
        session_successors: stamp what followed the newest token earlier in this session.
        semantic_count: rows the semantic index adds per cycle (0: no semantic retrieval).
        max_age: evidence older than this many steps leaves the tail (0: only recency ranks it).
        target_top: verification feedback: the target's ``target_top`` most likely tokens at each verified
            position are stamped (0: none). The target scored its whole vocabulary there anyway; the tokens it
            found plausible in this context are likely plausible again a few positions on.
        route_semantic: rows the semantic index adds to each cycle's set from that cycle's own root state,
            between the drafter's trunk and head (as DynaSpec routes; the drafter's likeliest rows then
            stay in its set); 0: off. Needs a bundle with a semantic index.
        mass_fill: the tail budget the evidence leaves unused goes to the clusters holding the most of the
            drafter's estimated mass at each cycle's root state (``mass_fill.py``; routed between the drafter's
            trunk and head), not to the next most frequent tokens. Needs a bundle with a mass index.
        mass_unseen_last: the mass fill takes rows of tokens the frequency file never counted only after the
            counted rows of every cluster (most such rows are synthesised by the ridge map, and where a
            synthesised row draws the drafter's mass, that mass is spent on a token the target rarely writes).
        mass_synthesised_last: the same for rows the drafter was not trained with (the reservoir's ridge map
            synthesised them; its held-out fit error is 0.33 on the medium pair, so the mass it gives them is a guess).
        mass_sticky: hysteresis of the mass fill: a cluster it chose last cycle is kept while it still ranks
            within the clusters holding (1 + mass_sticky) times the rows the fill needs (0: off). Fewer rows
            then move per cycle (the plan update and row copies on the decoding thread), for a little mass.
        mass_prior: the mass fill ranks clusters by the drafter's estimated mass plus ``mass_prior`` x the log of
            the mean corpus count of their rows (``mass_fill.frequency_prior``; 0: the drafter's mass alone).
        mass_rank: what the fill ranks clusters by: ``mass``, the drafter's estimated mass in each, or ``max``,
            the expected largest logit among its rows (what greedy drafting proposes; ``MassIndex.max_terms``).
        fill_source: whose clusters and scores the fill ranks: ``mass``, the bundle's mass index (the drafter's own
            mass, no training), or ``router``, a DynaSpec router trained on the corpus to predict the clusters of
            the *target's* next tokens (``--router FILE``, the one ``dynaspec:K:C`` uses); ``auto``: the router for
            greedy requests when one is given (greedy drafting needs the target's next token in the set), the mass
            index otherwise (sampling accepts by the drafter's mass held in the set; ``mass_index.py``).
        fresh: when retrieval runs a cycle ahead on a worker (``PipelinedPolicy``), patch the set it hands
            out on the decoding thread with the newest committed tokens and their corpus successors, the
            evidence the worker's set is a cycle too old to hold (a few ids: the lag at almost no cost).
        semantic_greedy: greedy requests query the semantic index too (False: sampled ones only). At T = 0 the query
            is worth nothing on the valid split, and on a small host it slows the target's pass beside it (README,
            issue 15, stop 46).
        refresh_gap: a greedy request's routed set (the fill) is chosen again only after the target committed a
            token outside the set the drafter used, or after this many cycles; in between the last set stays, at no
            cost on the decoding thread (``refresh_gate.py``; 1: every cycle). Sampled requests route every cycle.
        refresh_hold: with ``refresh_gap`` > 1, a set is kept only once this many cycles in a row committed no token
            outside their sets (0: from the cycle after a route).
        drift: topic-switch detection.
    """

    core_share: float = 0.5
    context: bool = True
    corpus_successors: bool = True
    session_successors: bool = True
    semantic_count: int = 64
    max_age: int = 0
    target_top: int = 0
    route_semantic: int = 0
    mass_fill: bool = True  # chosen on the valid split (README, stop 33)
    mass_unseen_last: bool = False
    mass_synthesised_last: bool = False
    mass_sticky: float = 0.25  # chosen on the valid split (README, stop 34): tau level, half the rows moved
    mass_prior: float = 0.0
    mass_rank: str = "mass"
    fill_source: str = "auto"  # chosen on the valid split (README, stop 39): router at T = 0, mass at T = 1
    fresh: bool = True  # chosen on the valid split (README, stop 31)
    semantic_greedy: bool = False  # chosen on the valid split (README, issue 15, stop 46)
    refresh_gap: int = 16  # chosen on the valid split (README, issue 15, stop 46): tau level, half the policy time
    refresh_hold: int = 4
    drift: DriftSettings = field(default_factory=DriftSettings)

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0.0 < self.core_share <= 1.0:
            raise SettingsError(f"core_share must be in (0, 1] (got {self.core_share})")
        if self.mass_sticky < 0 or self.mass_prior < 0:
            raise SettingsError(f"mass_sticky and mass_prior must be >= 0 (got {self.mass_sticky}, {self.mass_prior})")
        if self.fill_source not in ("mass", "router", "auto"):
            raise SettingsError(f"fill_source must be 'mass', 'router' or 'auto' (got {self.fill_source!r})")
        if self.mass_rank not in ("mass", "max"):
            raise SettingsError(f"mass_rank must be 'mass' or 'max' (got {self.mass_rank!r})")
        if self.refresh_gap < 1 or self.refresh_hold < 0:
            raise SettingsError(f"refresh_gap must be >= 1 cycle and refresh_hold >= 0 (got {self.refresh_gap}, "
                                f"{self.refresh_hold})")
        if min(self.semantic_count, self.max_age, self.target_top, self.route_semantic) < 0:
            raise SettingsError(f"semantic_count, max_age, target_top and route_semantic must be >= 0 (got "
                                f"{self.semantic_count}, {self.max_age}, {self.target_top}, {self.route_semantic})")


@dataclass(frozen=True)
class EvoSpecSettings:
    """One named EvoSpec configuration: the policy and its online alignment.

    ``align_rows``: which rows alignment may change: ``retrieved`` (rows the drafter was not trained
    with, i.e. the ones retrieval brings in and the reservoir synthesised) or ``all``."""

    policy: PolicySettings = field(default_factory=PolicySettings)
    align: AlignSettings = field(default_factory=AlignSettings)
    align_rows: str = "all"  # chosen on the valid split (README): "retrieved" trained nothing at K=1024

    def __post_init__(self) -> None:
        if self.align_rows not in ("retrieved", "all"):
            raise SettingsError(f"align_rows must be 'retrieved' or 'all' (got {self.align_rows!r})")


def _build(cls, table: Any, where: str, base: Any = None):
    """``cls`` from a TOML table (nested dataclass fields from sub-tables), over ``base``'s values."""
    if not isinstance(table, dict):
        raise SettingsError(f"{where} must be a table, got {type(table).__name__} {table!r}")
    base = base if base is not None else cls()
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in table.items():
        current = getattr(base, name)
        values[name] = _build(type(current), value, f"{where}.{name}", current) \
            if dataclasses.is_dataclass(current) else value
    try:
        built = replace(base, **values)
    except (TypeError, SettingsError) as exc:  # a wrong key's type, or a value out of range: say where
        raise SettingsError(f"{where}: {exc}") from None
    try:
        check_field_types(built)
    except SettingsError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return built


@dataclass(frozen=True)
class EvoSpecConfig:
    """The chosen settings and the named variants (each a full EvoSpecSettings)."""

    chosen: EvoSpecSettings
    variants: dict[str, EvoSpecSettings]
    source: str

    def variant(self, name: str | None) -> EvoSpecSettings:
        if not name:
            return self.chosen
        if name not in self.variants:
            raise SettingsError(f"evospec variant {name!r} is not in {self.source}; known: "
                                f"{', '.join(sorted(self.variants)) or 'none'}")
        return self.variants[name]

    def for_policy(self, name: str) -> EvoSpecSettings:
        """The settings a policy runs (and aligns) with: ``evospec:K:VARIANT`` its variant's, any other
        name (``evospec:K``, ``frspec:K`` aligned without retrieval, ...) the chosen ones."""
        parts = name.split("@")[0].split(":")
        variant = parts[2] if parts[0] == "evospec" and len(parts) > 2 and parts[2] != "sync" else None
        return self.variant(variant)

    @classmethod
    def builtin(cls) -> EvoSpecConfig:
        return cls.from_table({"variants": VARIANTS}, "built-in settings")

    @classmethod
    def load(cls, path: str | Path | None = None) -> EvoSpecConfig:
        """A config file (``configs/evospec.toml`` is the template); None: the built-in settings."""
        if path is None:
            return cls.builtin()
        return cls.from_table(read_toml(path, "evospec config"), str(path))

    @classmethod
    def from_table(cls, table: dict, path: str) -> EvoSpecConfig:
        table = dict(table)
        variants_table = table.pop("variants", {})
        chosen = _build(EvoSpecSettings, table, str(path))
        if not isinstance(variants_table, dict):
            raise SettingsError(f"{path}: [variants] must be a table of tables")
        variants = {}
        for name, override in variants_table.items():
            if name in RESERVED_VARIANTS or not name.replace("-", "").isalnum():
                raise SettingsError(f"{path}: variant name {name!r} is reserved or not of letters, digits and '-'")
            variants[name] = _build(EvoSpecSettings, override, f"{path} [variants.{name}]", chosen)
        return cls(chosen, variants, str(path))


# The ablations: each variant changes one switch of the chosen settings (policy or alignment).
VARIANTS: dict[str, dict] = {
    "core-25": {"policy": {"core_share": 0.25}},
    "core-75": {"policy": {"core_share": 0.75}},
    "frequency-only": {"policy": {"core_share": 1.0}},
    "no-context": {"policy": {"context": False}},
    "no-corpus-successors": {"policy": {"corpus_successors": False}},
    "no-session-successors": {"policy": {"session_successors": False}},
    "no-semantic": {"policy": {"semantic_count": 0}},
    "semantic-256": {"policy": {"semantic_count": 256}},
    "target-top-256": {"policy": {"target_top": 256}},
    "no-fresh": {"policy": {"fresh": False}},
    "route-semantic-1024": {"policy": {"route_semantic": 1024, "mass_fill": False}},  # one router per set
    "frequency-fill": {"policy": {"mass_fill": False}},
    "unseen-last": {"policy": {"mass_unseen_last": True}},
    "synthesised-last": {"policy": {"mass_synthesised_last": True}},
    "no-sticky": {"policy": {"mass_sticky": 0.0}},
    "prior-half": {"policy": {"mass_prior": 0.5}},
    "prior-1": {"policy": {"mass_prior": 1.0}},
    "rank-max": {"policy": {"mass_rank": "max"}},
    "router-fill": {"policy": {"fill_source": "router"}},
    "mass-fill": {"policy": {"fill_source": "mass"}},
    "age-64": {"policy": {"max_age": 64}},
    "semantic-greedy": {"policy": {"semantic_greedy": True}},
    "no-refresh-gate": {"policy": {"refresh_gap": 1}},
    "hold-0": {"policy": {"refresh_hold": 0}},
    "hold-16": {"policy": {"refresh_hold": 16}},
    "refresh-4-hold-0": {"policy": {"refresh_gap": 4, "refresh_hold": 0}},
    "every-cycle": {"policy": {"refresh_gap": 1, "semantic_greedy": True}},  # greedy requests as before stop 46
    "no-drift": {"policy": {"drift": {"enabled": False}}},
    "no-curriculum": {"align": {"curriculum": False}},
    "curriculum-greedy": {"align": {"curriculum_greedy": True}},
    "rest-mass": {"align": {"rest_mass": True}},
    "renormalised-teacher": {"align": {"sampled_rest_mass": False}},
    "align-retrieved-rows": {"align_rows": "retrieved"},
}
