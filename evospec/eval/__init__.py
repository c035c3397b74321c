"""Measuring: bench, the profile commands (stages, device, vocab, align), timing helpers."""
