"""``evospec soak``: many mixed requests against one ``vllm serve`` with the real ``openai`` client.

Requests are drawn from a seeded generator: lengths (``max_tokens``), temperatures (0 and sampled with
top-p), some cancelled mid-stream (the client closes the stream after a few chunks), some malformed
(negative ``max_tokens``, an unknown model, a token id outside the vocabulary, no prompt) that must get
an OpenAI-style 4xx error. Checked: every well-formed request that was not cancelled completes with
exactly ``max_tokens`` tokens (``ignore_eos``; none lost); every T=0 one equals the target's greedy
continuation; every malformed one gets a 4xx; the server still answers /health at the end; the
resident memory of the server's process tree stays within a band around its post-warm-up level.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evospec.core.atomic import write_text_atomic
from evospec.core.errors import SettingsError
from evospec.eval.loadtest import LoadSettings, stream_one
from evospec.serving.process import ServerProcess
from evospec.serving.server import ServeSettings

MALFORMED = ("negative-max-tokens", "unknown-model", "token-outside-vocabulary", "no-prompt")


@dataclass(frozen=True)
class SoakSettings:
    """Attributes:
        requests: requests after warm-up.
        warmup: requests before the memory baseline is taken.
        concurrency: requests in flight at once.
        max_tokens: the longest request (each draws 1..max_tokens).
        cancel_share, malformed_share, sampled_share: shares of cancelled, malformed and T>0 requests.
        rss_band: allowed relative change of resident memory after warm-up (0.05: within +-5%).
        seed: the request mix's seed.
    """

    requests: int = 1000
    warmup: int = 50
    concurrency: int = 8
    max_tokens: int = 96
    cancel_share: float = 0.1
    malformed_share: float = 0.05
    sampled_share: float = 0.3
    rss_band: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests < 1 or self.warmup < 0 or self.concurrency < 1 or self.max_tokens < 1:
            raise SettingsError("--requests, --concurrency and --max-tokens must be >= 1, --warmup >= 0")
        if not all(0 <= s < 1 for s in (self.cancel_share, self.malformed_share, self.sampled_share)):
            raise SettingsError("request shares must be in [0, 1)")


@dataclass(frozen=True)
class SoakRequest:
    index: int
    prompt: int  # index into the prompt pool
    max_tokens: int
    temperature: float
    cancel_after: int | None  # chunks read before closing the stream
    malformed: str | None


@dataclass
class SoakReport:
    requests: int
    completed: int = 0
    exact_greedy: int = 0  # T=0 completions equal to the target's greedy continuation
    greedy: int = 0
    cancelled: int = 0
    malformed_4xx: int = 0
    malformed: int = 0
    lost: list[str] = field(default_factory=list)  # well-formed requests that failed or came back short
    wrong_status: list[str] = field(default_factory=list)  # malformed requests answered other than 4xx
    rss_baseline_mb: float = 0.0
    rss_samples_mb: list[float] = field(default_factory=list)
    rss_max_change: float = 0.0
    healthy_at_end: bool = False
    wall_s: float = 0.0

    def passed(self, band: float) -> bool:
        return (not self.lost and not self.wrong_status and self.exact_greedy == self.greedy and self.healthy_at_end
                and self.rss_max_change <= band)


def request_mix(settings: SoakSettings, prompts: int, count: int, first: int = 0) -> list[SoakRequest]:
    rng = random.Random(settings.seed + first)
    mix = []
    for i in range(first, first + count):
        kind = rng.random()
        malformed = rng.choice(MALFORMED) if kind < settings.malformed_share else None
        cancel = rng.randint(1, 4) if malformed is None and kind < settings.malformed_share + settings.cancel_share \
            else None
        sampled = malformed is None and rng.random() < settings.sampled_share
        mix.append(SoakRequest(i, rng.randrange(prompts), rng.randint(1, settings.max_tokens),
                               round(rng.uniform(0.5, 1.2), 2) if sampled else 0.0, cancel, malformed))
    return mix


def post_status(base: str, body: dict) -> int:
    request = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def malformed_body(kind: str, model: str, prompt: list[int], vocab_size: int) -> dict:
    return {"negative-max-tokens": {"model": model, "prompt": prompt, "max_tokens": -1},
            "unknown-model": {"model": model + "-nope", "prompt": prompt, "max_tokens": 4},
            "token-outside-vocabulary": {"model": model, "prompt": prompt + [vocab_size + 7], "max_tokens": 4},
            "no-prompt": {"model": model, "max_tokens": 4}}[kind]


def one_request(client, base: str, model: str, request: SoakRequest, prompts: list[list[int]],
                reference: list[list[int]], vocab_size: int, report: SoakReport) -> None:
    prompt = prompts[request.prompt]
    name = f"#{request.index}"
    if request.malformed is not None:
        status = post_status(base, malformed_body(request.malformed, model, prompt, vocab_size))
        report.malformed += 1
        if 400 <= status < 500:
            report.malformed_4xx += 1
        else:
            report.wrong_status.append(f"{name} {request.malformed}: HTTP {status}")
        return
    try:
        if request.cancel_after is not None:
            stream = client.completions.create(model=model, prompt=prompt, max_tokens=request.max_tokens,
                                               temperature=request.temperature, stream=True,
                                               extra_body={"ignore_eos": True})
            for read, _ in enumerate(stream, start=1):
                if read >= request.cancel_after:
                    break
            stream.close()  # the client goes away mid-stream: the server must abort the request
            report.cancelled += 1
            return
        result = stream_one(client, model, prompt, LoadSettings(max_tokens=request.max_tokens),
                            temperature=request.temperature)
    except Exception as exc:  # noqa: BLE001 - any failure of a well-formed request is a lost request, reported
        report.lost.append(f"{name}: {type(exc).__name__}: {exc}")
        return
    if len(result.token_ids) != request.max_tokens:
        report.lost.append(f"{name}: {len(result.token_ids)} of {request.max_tokens} tokens")
        return
    report.completed += 1
    if request.temperature == 0.0:
        report.greedy += 1
        report.exact_greedy += result.token_ids == reference[request.prompt][: request.max_tokens]


def run_soak(serve: ServeSettings, settings: SoakSettings, prompts: list[list[int]], reference: list[list[int]],
             vocab_size: int, log: Path, progress=None) -> SoakReport:
    from openai import OpenAI

    report = SoakReport(requests=settings.requests)
    with ServerProcess(serve, log) as server:
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
        warm = SoakReport(requests=settings.warmup)

        def batch(requests: list[SoakRequest], into: SoakReport) -> None:
            with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
                list(pool.map(lambda r: one_request(client, server.base_url, serve.model_name, r, prompts, reference,
                                                    vocab_size, into), requests))

        batch(request_mix(settings, len(prompts), settings.warmup), warm)
        time.sleep(1.0)
        report.rss_baseline_mb = server.rss_bytes() / 2**20
        start = time.perf_counter()
        chunk = max(1, settings.requests // 10)
        for first in range(0, settings.requests, chunk):
            count = min(chunk, settings.requests - first)
            batch(request_mix(settings, len(prompts), count, settings.warmup + first), report)
            report.rss_samples_mb.append(server.rss_bytes() / 2**20)
            if progress is not None:
                progress(first + count, report)
        report.wall_s = time.perf_counter() - start
        report.healthy_at_end = server.healthy()
    base = report.rss_baseline_mb
    report.rss_max_change = max(abs(s - base) / base for s in report.rss_samples_mb) if base else 1.0
    return report


def write_report(path: Path, report: SoakReport, settings: SoakSettings, meta: dict) -> None:
    write_text_atomic(Path(path), json.dumps({"meta": meta, "settings": asdict(settings), "report": asdict(report),
                                              "passed": report.passed(settings.rss_band)}, indent=2))
