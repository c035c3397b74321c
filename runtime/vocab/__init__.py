"""Vocabulary policies, chosen by name: ``full``, ``eagle3``, ``frspec:K``."""

from __future__ import annotations

from pathlib import Path

from evospec.errors import SettingsError
from evospec.runtime.vocab.base import PolicyInputs, StaticPolicy, VocabPolicy

POLICY_NAMES = ("full", "eagle3", "frspec:K")


def make_policy(spec: str, inputs: PolicyInputs, frequencies: str | Path | None = None) -> VocabPolicy:
    """A policy from its name; ``frspec:K`` needs a frequency file (``evospec vocab frequencies``)."""
    from evospec.runtime.vocab.static import eagle3_policy, frspec_policy, full_policy

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
        from evospec.runtime.vocab.frequencies import TokenFrequencies

        return frspec_policy(inputs, int(arg), TokenFrequencies.load(frequencies))
    raise SettingsError(f"unknown vocabulary policy {spec!r}; known: {', '.join(POLICY_NAMES)}")


__all__ = ["POLICY_NAMES", "PolicyInputs", "StaticPolicy", "VocabPolicy", "make_policy"]
