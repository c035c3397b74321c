"""The medium pair's drafters, configurations interleaved prompt by prompt (issue 18, stop 49).

Why not whole bench runs: on this 2-core host a run's speed drifted by up to 15% from one run to the next (the
chain alone, the same code, came out 0.87-1.17x of itself in alternating runs), far more than the effects measured.
Here every prompt is decoded by each configuration in turn, the one going first rotating, so drift falls on all alike.

Configurations: plain decoding; the greedy chain of 5 and the chain with 3 siblings at ratio 2 (the main job's
shape), each with the greedy choice by torch (log_softmax + max / topk(2), as before stop 49) and by the library
(``evospec_greedy_choice``). With RUNTIME ``cpp``: the C++ drafter over the torch bundle (the main job's
``bench-static``), plain, the chain and the chain with siblings. Every output must equal plain decoding's (asserted).

Usage: python docs/issue18-stop49-interleave.py OUT.json ROUNDS DOMAINS [RUNTIME] (e.g. 2 code,general,law,...
python) after ``make reference`` and ``make cpp``.
"""
import collections
import json
import statistics
import sys
import time

from evospec.core.settings import DecodeSettings
from evospec.eval.bench import BenchSettings, domain_prompts
from evospec.runtime import tree
from evospec.runtime.generator import SpeculativeGenerator

out_path, rounds = sys.argv[1], int(sys.argv[2])
domains = sys.argv[3].split(",")
runtime = sys.argv[4] if len(sys.argv) > 4 else "python"
native_chooser = tree.greedy_chooser
pair = "out/reference-medium"
if runtime == "cpp":
    g = SpeculativeGenerator.from_bundle(f"{pair}/bundle-torch", f"{pair}/target", drafter_runtime="cpp")
else:
    g = SpeculativeGenerator.from_paths(f"{pair}/target", f"{pair}/drafter")
chain = DecodeSettings(max_new_tokens=64, draft_tree="chain")
sib = DecodeSettings(max_new_tokens=64, draft_tree="chain", draft_siblings=3, draft_sibling_ratio=2)
plain = DecodeSettings(max_new_tokens=64, use_draft=False)
cfgs = {"plain": (plain, True), "chain-torch": (chain, False), "chain-lib": (chain, True),
        "sib-torch": (sib, False), "sib-lib": (sib, True)}
if runtime == "cpp":  # the library picks inside its own chain: no torch choice to compare
    cfgs = {"plain": (plain, True), "chain-lib": (chain, True), "sib-lib": (sib, True)}
names = list(cfgs)
result = {}
for dom in domains:
    prompts = domain_prompts(g, f"{pair}/corpus", dom, BenchSettings(prompts=8))
    tok = collections.Counter(); secs = collections.defaultdict(float); tau = collections.defaultdict(list)
    paired = collections.defaultdict(list); outputs = {}
    for rnd in range(rounds):
        for i, p in enumerate(prompts):
            order = names[(i + rnd) % len(names):] + names[:(i + rnd) % len(names)]  # rotate who goes first
            took = {}
            for name in order:
                s, lib = cfgs[name]
                tree.greedy_chooser = native_chooser if lib else (lambda x: None)
                t0 = time.perf_counter(); r = g.generate(p, s); dt = time.perf_counter() - t0
                n = len(r.token_ids); tok[name] += n; secs[name] += dt; took[name] = n / dt
                if name != "plain":
                    tau[name].extend(r.stats.accepted_lengths)
                outputs.setdefault((i, "all"), r.token_ids)
                assert outputs[(i, "all")] == r.token_ids, (dom, i, name)  # every configuration: plain's tokens
            for name in names[1:]:
                paired[name].append(took[name] / took["plain"])
    row = {name: {"tokens_per_second": tok[name] / secs[name],
                  "tau": (1 + statistics.mean(tau[name])) if name != "plain" else 1.0,
                  "median_per_prompt_over_plain": statistics.median(paired[name]) if name != "plain" else 1.0}
           for name in names}
    result[dom] = row
    print(f"{dom:12s} " + " | ".join(f"{n} {row[n]['tokens_per_second']:.1f} ({row[n]['tau']:.2f})" for n in names), flush=True)
with open(out_path, "w") as f:
    json.dump({"runtime": runtime, "rounds": rounds, "prompts": 8, "max_new_tokens": 64, "domains": result}, f, indent=1)
