"""Alignment methods by name: what `profile align --methods` and Python users pick from.

``none``; ``osd`` (standard online distillation of the drafter as it is: fc, decoder layer, norm and
its own draft-vocabulary head rows, distributions over that vocabulary, dense Adam); ``osd-reservoir``
(the same over every reservoir row, full-vocabulary distributions); ``evospec`` (sparse
head rows, curriculum, rollback, on a worker thread); ``evospec-nocurriculum``; ``evospec-norm``
(also the final norm weight); ``evospec-sync`` (updates on the decoding thread). ``NAME:LR`` sets
the learning rate.
"""

from __future__ import annotations

import torch

from evospec.core.errors import SettingsError
from evospec.runtime.align.background import BackgroundAligner
from evospec.runtime.align.head_aligner import AlignSettings, HeadAligner
from evospec.runtime.align.online_distill import OnlineDistiller

METHODS = ("none", "osd", "osd-reservoir", "evospec", "evospec-nocurriculum", "evospec-norm", "evospec-sync")


def parse_method(method: str) -> tuple[str, float | None]:
    """``name`` or ``name:LR`` (a learning rate for that run, e.g. ``osd:1e-4``)."""
    name, _, lr = method.partition(":")
    if name not in METHODS or (lr and name == "none"):
        raise SettingsError(f"unknown alignment method {method!r}; known: {', '.join(METHODS)} (optionally NAME:LR)")
    try:
        return name, float(lr) if lr else None
    except ValueError:
        raise SettingsError(f"alignment method {method!r}: the learning rate after ':' must be a number") from None


def make_aligner(method: str, drafter):
    name, lr = parse_method(method)
    if name == "none":
        return None
    if name in ("osd", "osd-reservoir"):
        return OnlineDistiller(drafter, head="draft" if name == "osd" else "reservoir",
                               **({} if lr is None else {"lr": lr}))
    # the evospec variants (parse_method has refused any other name)
    # profile align's sessions are greedy: "evospec" keeps its curriculum there (curriculum_greedy), so that the
    # method and "evospec-nocurriculum" differ by the curriculum as their names say
    settings = AlignSettings(curriculum=name != "evospec-nocurriculum", curriculum_greedy=True,
                             norm=name == "evospec-norm", background=name != "evospec-sync",
                             **({} if lr is None else {"lr": lr}))
    norm = drafter.trunk_weights()["norm.weight"] if settings.norm else None
    aligner = HeadAligner(drafter.reservoir, settings, norm_weight=norm)
    return BackgroundAligner(aligner) if settings.background else aligner


def make_evospec_aligner(drafter, settings):
    """The aligner of EvoSpec's combined method (``evospec:K+align``) from an ``EvoSpecSettings``:
    sparse head-row alignment with ``settings.align``, on ``settings.align_rows`` (``retrieved``:
    only rows outside the drafter's own trained vocabulary)."""
    trainable = None
    if settings.align_rows == "retrieved":
        trainable = torch.ones(drafter.reservoir.shape[0], dtype=torch.bool)
        trainable[drafter.draft_vocab_ids.cpu()] = False
    norm = drafter.trunk_weights()["norm.weight"] if settings.align.norm else None
    aligner = HeadAligner(drafter.reservoir, settings.align, norm_weight=norm, trainable=trainable)
    return BackgroundAligner(aligner) if settings.align.background else aligner
