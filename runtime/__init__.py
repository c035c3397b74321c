"""Runtime: the target and drafter models, draft trees, verification and the decoding loop.

Installed as ``evospec.runtime``.
"""
