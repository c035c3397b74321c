"""Exception types that carry enough context to act on.

Every error a user can cause (a bad path, a checkpoint of the wrong kind, bad settings)
is an :class:`EvoSpecError`; the CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations


class EvoSpecError(Exception):
    """Base class of every error that is the user's input, not a bug."""


class CheckpointError(EvoSpecError):
    """A model directory or weight file is missing, malformed or of the wrong kind."""


class CompatibilityError(EvoSpecError):
    """Target and drafter do not fit together (hidden size, vocabulary, tapped layers)."""


class SettingsError(EvoSpecError):
    """A decoding or CLI setting is out of range or inconsistent."""


class CompileError(EvoSpecError):
    """A compile pass failed; the message names the pass and the passes that had run."""


class BundleError(EvoSpecError):
    """A compiled bundle is missing, truncated, of another format, or does not match its inputs."""
