"""Compile passes (``evospec.passes``): split, reservoir, gather plans, export. Filled by the compile work."""
