"""vLLM general plugin (entry point ``vllm.general_plugins`` -> ``evospec = evospec.serving.vllm_plugin:register``).

vLLM calls ``register`` in every process it starts (front end, engine core, workers), possibly more
than once; registering by ``module:class`` string keeps it cheap and import-free (vLLM imports the
class only when a drafter's config names the architecture).
"""

from __future__ import annotations

from evospec.serving.living import ARCHITECTURE

MODEL_CLASS = "evospec.serving.vllm_model:Eagle3EvoSpecLlamaForCausalLM"


def register() -> None:
    """Make ``Eagle3EvoSpecLlamaForCausalLM`` a model architecture vLLM can build (idempotent)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
