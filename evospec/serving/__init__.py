"""Serving EvoSpec inside vLLM: the living-vocabulary drafter as a vLLM plugin, ``evospec serve``.

Nothing here imports vLLM at package import time: ``vllm_plugin`` (the entry point vLLM calls)
registers the architecture by name, and vLLM imports ``vllm_model`` only when it builds a drafter.
``resident_rows`` and ``shared_vocabulary`` are plain torch, tested without vLLM.
"""
