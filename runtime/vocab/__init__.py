"""Vocabulary policies, chosen by name: ``full``, ``eagle3``, ``frspec:K``, ``evospec:K``."""

from __future__ import annotations

from pathlib import Path

from evospec.runtime.vocab.base import PolicyInputs, StaticPolicy, VocabPolicy

from evospec.errors import SettingsError

POLICY_NAMES = ("full", "eagle3", "frspec:K", "evospec:K")


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
    if name == "evospec":
        if not arg.isdigit():
            raise SettingsError(f"policy {spec!r}: expected evospec:K with an integer K, e.g. evospec:16384")
        if frequencies is None:
            raise SettingsError("policy evospec:K needs --frequencies FILE (`evospec vocab frequencies --successors 8`)")
        from evospec.runtime.vocab.evospec_policy import EvoSpecPolicy
        from evospec.runtime.vocab.frequencies import TokenFrequencies

        return EvoSpecPolicy(int(arg), TokenFrequencies.load(frequencies), inputs.vocab_size, semantic=inputs.semantic)
    raise SettingsError(f"unknown vocabulary policy {spec!r}; known: {', '.join(POLICY_NAMES)}")


__all__ = ["POLICY_NAMES", "PolicyInputs", "StaticPolicy", "VocabPolicy", "make_policy"]
