"""Foundations every other part stands on: errors, typed settings, atomic writes, tables, plots, progress, determinism."""
