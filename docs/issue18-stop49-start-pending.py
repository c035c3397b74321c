"""Where Python's drafter spends retrieval and plan time with the library's policy (evospec:16384, T = 1, chain of 5),
inside the decoding loop, and how long the call that starts the policy's job takes (issue 18, stop 49).

Usage: [EVOSPEC_WORKER_NICE=0] python docs/issue18-stop49-start-pending.py DOMAIN   (after `make reference`, `make cpp`;
the ORT bundle and calibrated target of the issue-15 protocol). Prints ms a step for each wrapped call and the
percentiles of the job start.
"""

import collections
import sys
import time

import numpy as np

from evospec.core.settings import DecodeSettings
from evospec.eval.bench import BenchSettings, domain_prompts
from evospec.runtime import active_rows, compiled_drafter
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.vocab import native_policy

seconds, calls, starts = collections.defaultdict(float), collections.Counter(), []


def timed(owner, name, key, record=None):
    inner = getattr(owner, name)

    def call(*args, **kwargs):
        t0 = time.perf_counter()
        result = inner(*args, **kwargs)
        took = time.perf_counter() - t0
        seconds[key] += took
        calls[key] += 1
        if record is not None:
            record.append(took)
        return result

    setattr(owner, name, call)


timed(compiled_drafter, "plan_update", "plan: plan_update")
timed(active_rows.ActiveRows, "follow", "plan: rows follow")
timed(compiled_drafter.CompiledDrafter, "set_active", "plan: set_active (all)")
timed(native_policy.NativePolicy, "_next", "retrieval: next set")
timed(native_policy.NativePolicy, "observe", "retrieval: observe")
timed(native_policy.NativePolicy, "start_pending", "retrieval: start the job", starts)

pair = "out/reference-medium"
generator = SpeculativeGenerator.from_bundle(f"{pair}/bundle-cal-ort", f"{pair}/target-cal", vocab="evospec:16384",
                                             frequencies=f"{pair}/frequencies.json", policy_runtime="cpp")
settings = DecodeSettings(max_new_tokens=64, draft_tree="chain", temperature=1.0, top_p=0.9, seed=0, verifier="native")
steps = 0
for prompt in domain_prompts(generator, f"{pair}/corpus", sys.argv[1], BenchSettings(prompts=6)):
    steps += generator.generate(prompt, settings).stats.steps
for key in sorted(seconds):
    print(f"{key:28s} {seconds[key] / steps * 1e3:.3f} ms a step ({calls[key] / steps:.2f} calls a step)")
ms = np.array(starts) * 1e3
p10, p50, p90, p99 = np.percentile(ms, [10, 50, 90, 99])
print(f"job start, ms: p10 {p10:.3f} p50 {p50:.3f} p90 {p90:.3f} p99 {p99:.3f} max {ms.max():.3f} mean {ms.mean():.3f}")
