"""Python's drafter before and after stop 50's call shortcuts, interleaved prompt by prompt (issue 18, stop 50).

"after" is the runtime as it is: the drafter's first call of a step (and a prompt's prefill) computes the head over
its last input alone, and each chain level attends without a mask. "before" is the same runtime made to do the work
it did at stop 49: the head over every input of a call (then the last row kept), and an all-ones mask built for
each level. Configurations alternate prompt by prompt, the one going first rotating (stop 49: whole runs on this
host drift by more than these effects). Every output must equal plain decoding's (asserted).

Usage: python docs/issue18-stop50-interleave.py OUT.json ROUNDS DOMAINS (after ``make reference``).
"""
import collections
import json
import statistics
import sys
import time

import torch

from evospec.core.settings import DecodeSettings
from evospec.eval.bench import BenchSettings, domain_prompts
from evospec.runtime.drafter import Eagle3Drafter
from evospec.runtime.generator import SpeculativeGenerator

out_path, rounds, domains = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
pair = "out/reference-medium"
g = SpeculativeGenerator.from_paths(f"{pair}/target", f"{pair}/drafter")
after_forward = Eagle3Drafter.forward


def before_forward(self, hidden, target_ids, positions, cache, start, mask, logit_rows=None):
    if mask is None:
        mask = torch.ones(1, start + 1, dtype=torch.bool, device=hidden.device)
    out, logits = after_forward(self, hidden, target_ids, positions, cache, start, mask)
    return out, logits if logit_rows is None else logits[:, logits.shape[1] - logit_rows:]


sib = DecodeSettings(max_new_tokens=64, draft_tree="chain", draft_siblings=3, draft_sibling_ratio=2)
plain = DecodeSettings(max_new_tokens=64, use_draft=False)
cfgs = {"plain": (plain, after_forward), "before": (sib, before_forward), "after": (sib, after_forward)}
names = list(cfgs)
result = {}
for dom in domains:
    prompts = domain_prompts(g, f"{pair}/corpus", dom, BenchSettings(prompts=8))
    tok, secs, steps = collections.Counter(), collections.defaultdict(float), collections.Counter()
    draft, verify, paired, outputs = collections.defaultdict(float), collections.defaultdict(float), collections.defaultdict(list), {}
    for rnd in range(rounds):
        for i, p in enumerate(prompts):
            k = (i + rnd) % len(names)
            took = {}
            for name in names[k:] + names[:k]:
                s, forward = cfgs[name]
                Eagle3Drafter.forward = forward
                t0 = time.perf_counter(); r = g.generate(p, s); dt = time.perf_counter() - t0
                n = len(r.token_ids); tok[name] += n; secs[name] += dt; took[name] = n / dt
                steps[name] += r.stats.steps; draft[name] += r.stats.draft_time_s; verify[name] += r.stats.verify_time_s
                assert outputs.setdefault(i, r.token_ids) == r.token_ids, (dom, i, name)
            for name in names[1:]:
                paired[name].append(took[name] / took["plain"])
    Eagle3Drafter.forward = after_forward
    row = {name: {"tokens_per_second": tok[name] / secs[name], "tokens_per_step": tok[name] / steps[name],
                  "draft_ms_per_step": 1e3 * draft[name] / steps[name], "verify_ms_per_step": 1e3 * verify[name] / steps[name],
                  "median_per_prompt_over_plain": statistics.median(paired[name]) if name != "plain" else 1.0}
           for name in names}
    result[dom] = row
    print(f"{dom:12s} " + " | ".join(
        f"{n} {row[n]['tokens_per_second']:.1f} tok/s, draft {row[n]['draft_ms_per_step']:.2f} ms" for n in names)
        + f" | after/plain {row['after']['tokens_per_second'] / row['plain']['tokens_per_second']:.3f}", flush=True)
with open(out_path, "w") as f:
    json.dump({"rounds": rounds, "prompts": 8, "max_new_tokens": 64, "shape": "chain 5 + 3 siblings at ratio 2",
               "domains": result}, f, indent=1)
