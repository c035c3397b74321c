"""``evospec loadtest``: the real ``openai`` client streaming against ``vllm serve`` with each drafter.

For each method (no speculation, or a drafter directory: static EAGLE-3, an FR-Spec export, the
EvoSpec living vocabulary) one server is started on a free localhost port, warmed up with one request,
and for each concurrency the same prompts are streamed (``/v1/completions``, token-id prompts, T=0,
``ignore_eos`` so every request decodes ``max_tokens``). Per cell: completion tokens per second of
wall time, p50/p99 request latency and time to first token, and acceptance per draft position from
the server's own ``/metrics`` counters (read before and after the cell). Exactness: every response's
token ids are compared with the target's greedy output (a plain transformers forward loop, the
project's reference), and with the no-speculation server's when that method ran.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evospec.core.atomic import write_text_atomic
from evospec.core.errors import SettingsError
from evospec.core.text_table import text_table
from evospec.serving.process import ServerProcess
from evospec.serving.server import ServeSettings

DRAFTS = "vllm:spec_decode_num_drafts_total"
ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$')


@dataclass(frozen=True)
class LoadSettings:
    """Attributes:
        concurrency: requests in flight at once, one cell each.
        requests: requests per cell (the same prompts in every cell).
        max_tokens: tokens each request decodes (``ignore_eos``).
        request_timeout_s: a request slower than this fails the cell.
    """

    concurrency: tuple[int, ...] = (1, 4, 16)
    requests: int = 32
    max_tokens: int = 64
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1 or self.requests < 1 or self.max_tokens < 1:
            raise SettingsError("--concurrency values, --requests and --max-tokens must be >= 1")


@dataclass
class RequestResult:
    token_ids: list[int]
    text: str
    first_token_s: float
    latency_s: float


@dataclass
class CellRow:
    method: str
    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_second: float
    p50_latency_s: float
    p99_latency_s: float
    p50_first_token_s: float
    identical_to_target: int  # responses equal to the target's greedy output, of `requests`
    identical_to_plain: int | None  # ... to the no-speculation server's (None: not run)
    drafts: int
    acceptance_per_position: list[float] = field(default_factory=list)
    tau: float | None = None  # 1 + accepted draft tokens per draft (vLLM's counters)


def speculation_counters(metrics: str) -> tuple[float, dict[int, float]]:
    """Drafts and accepted tokens per position from Prometheus text, summed over engines (replicas)."""
    drafts, per_position = 0.0, {}
    for line in metrics.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None or line.startswith("#"):
            continue
        name, value = match["name"], float(match["value"])
        if name == DRAFTS:
            drafts += value
        elif name == ACCEPTED_PER_POS:
            position = int(re.search(r'position="(\d+)"', match["labels"] or "")[1])
            per_position[position] = per_position.get(position, 0.0) + value
    return drafts, per_position


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def stream_one(client, model: str, prompt: list[int], settings: LoadSettings, temperature: float = 0.0) -> RequestResult:
    """One streamed completion (T=0 unless asked); token ids from vLLM's ``return_token_ids``."""
    start = time.perf_counter()
    first, ids, text = None, [], []
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=settings.max_tokens, temperature=temperature,
                                       stream=True, timeout=settings.request_timeout_s,
                                       extra_body={"return_token_ids": True, "ignore_eos": True})
    for chunk in stream:
        for choice in chunk.choices:
            delta = (choice.model_extra or {}).get("token_ids") or []
            if (delta or choice.text) and first is None:
                first = time.perf_counter() - start
            ids += delta
            text.append(choice.text or "")
    latency = time.perf_counter() - start
    return RequestResult(ids, "".join(text), first if first is not None else latency, latency)


def run_cell(base_url: str, model: str, prompts: list[list[int]], concurrency: int,
             settings: LoadSettings) -> tuple[list[RequestResult], float]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda p: stream_one(client, model, p, settings), prompts))
    return results, time.perf_counter() - start


def cell_row(method: str, concurrency: int, results: list[RequestResult], wall: float,
             before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]],
             reference: list[list[int]], plain: list[list[int]] | None) -> CellRow:
    drafts = int(after[0] - before[0])
    accepted = [after[1][p] - before[1].get(p, 0.0) for p in sorted(after[1])]
    tokens = sum(len(r.token_ids) for r in results)
    latencies = [r.latency_s for r in results]
    return CellRow(
        method=method, concurrency=concurrency, requests=len(results), completion_tokens=tokens, wall_s=wall,
        tokens_per_second=tokens / wall if wall > 0 else 0.0,
        p50_latency_s=percentile(latencies, 0.5), p99_latency_s=percentile(latencies, 0.99),
        p50_first_token_s=percentile([r.first_token_s for r in results], 0.5),
        identical_to_target=sum(r.token_ids == ref for r, ref in zip(results, reference)),
        identical_to_plain=None if plain is None else sum(r.token_ids == p for r, p in zip(results, plain)),
        drafts=drafts, acceptance_per_position=[a / drafts for a in accepted] if drafts else [],
        tau=1 + sum(accepted) / drafts if drafts else None)


def run_method(method: str, serve: ServeSettings, prompts: list[list[int]], settings: LoadSettings,
               reference: list[list[int]], plain: list[list[int]] | None, log: Path,
               progress=None) -> tuple[list[CellRow], list[list[int]], float]:
    """Every concurrency against one server; also the outputs of the first cell and the startup time."""
    rows, outputs = [], []
    with ServerProcess(serve, log) as server:
        run_cell(server.base_url, serve.model_name, prompts[:1], 1, settings)  # warm-up, not measured
        for concurrency in settings.concurrency:
            before = speculation_counters(server.metrics_text())
            results, wall = run_cell(server.base_url, serve.model_name, prompts, concurrency, settings)
            after = speculation_counters(server.metrics_text())
            rows.append(cell_row(method, concurrency, results, wall, before, after, reference, plain))
            outputs = outputs or [r.token_ids for r in results]
            if progress is not None:
                progress(rows[-1])
        startup = server.startup_s or 0.0
    return rows, outputs, startup


def greedy_reference(target_dir: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """The target's own greedy continuation of each prompt (transformers, float32, KV cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
            tokens: list[int] = []
            for _ in range(max_tokens):
                tokens.append(int(out.logits[0, -1].argmax()))
                out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
            outputs.append(tokens)
    return outputs


def corpus_prompts(target_dir: Path, corpus: Path, domain: str, count: int, prompt_tokens: int,
                   split: str = "test") -> list[list[int]]:
    """``count`` windows of ``prompt_tokens`` tokens, consecutive within each document, documents in order."""
    from transformers import AutoTokenizer

    from evospec.data.corpus import read_documents

    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    prompts: list[list[int]] = []
    for doc in read_documents(corpus, domain, split):
        ids = tokenizer(doc)["input_ids"]
        for start in range(0, len(ids) - prompt_tokens + 1, prompt_tokens):
            prompts.append(ids[start : start + prompt_tokens])
            if len(prompts) == count:
                return prompts
    raise SettingsError(f"{corpus}/{domain}/{split} holds only {len(prompts)} windows of {prompt_tokens} tokens "
                        f"(asked for {count})")


def rows_table(rows: list[CellRow]) -> str:
    header = ["method", "conc", "tok/s", "p50 s", "p99 s", "p50 TTFT s", "tau", "accept/pos", "=target", "=plain"]
    body = [[r.method, r.concurrency, f"{r.tokens_per_second:.1f}", f"{r.p50_latency_s:.2f}", f"{r.p99_latency_s:.2f}",
             f"{r.p50_first_token_s:.3f}", "-" if r.tau is None else f"{r.tau:.2f}",
             " ".join(f"{a:.2f}" for a in r.acceptance_per_position) or "-", f"{r.identical_to_target}/{r.requests}",
             "-" if r.identical_to_plain is None else f"{r.identical_to_plain}/{r.requests}"] for r in rows]
    return text_table(header, body)


def write_rows(path: Path, rows: list[CellRow], meta: dict) -> None:
    write_text_atomic(Path(path), json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))


def summary_line(rows: list[CellRow]) -> str:
    exact = all(r.identical_to_target == r.requests for r in rows)
    return (f"{len(rows)} cells; every response equal to the target's greedy output: {exact}; "
            f"median tok/s {statistics.median(r.tokens_per_second for r in rows):.1f}")
