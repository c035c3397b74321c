"""Compiled bundles from the build side: the compile API, inspect, doctor (the loader lives in the runtime)."""
