"""Stop 47's record of every sibling (README, issue 18, "Stop 47"): a chain of 5 with the drafter's second choice at
all 5 levels, the C++ drafter over the medium pair's torch bundle, 8 prompts x 64 tokens a domain of the valid
split. For each sibling: its level, the drafter's probability of the level's first (p1) and second (p2) choice,
whether its parent was accepted, whether it was. Then, for siblings at the first 3 or 5 levels kept only where
p1 / p2 < r: verified rows a step and tokens a step they add.

    .venv/bin/python docs/issue18-stop47-sibling-levels.py [valid|test]   (from the project root, after make cpp)
"""
import json
import math
import sys

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.eval.bench import BenchSettings, domain_prompts
from evospec.runtime import generator as generator_module

R = "out/reference-medium"
split = sys.argv[1] if len(sys.argv) > 1 else "valid"
gen = SpeculativeGenerator.from_bundle(f"{R}/bundle-torch", f"{R}/target", drafter_runtime="cpp")
records = []
verify = generator_module.verify_greedy


def recording(tree, logits):
    verdict = verify(tree, logits)
    records.append((tree, verdict))
    return verdict


generator_module.verify_greedy = recording
s = DecodeSettings(max_new_tokens=64, draft_tree="chain", draft_depth=5, draft_siblings=5)
out = {}
for domain in ("code", "general", "law", "medicine", "multilingual"):
    records.clear()
    for prompt in domain_prompts(gen, f"{R}/corpus", domain, BenchSettings(prompts=8, split=split)):
        gen.generate(prompt, s)
    rows = []
    for tree, verdict in records:
        parents, scores = tree.parents.tolist(), tree.scores.tolist()
        n = next((i for i, p in enumerate(parents) if p != i - 1), len(parents))  # the chain's nodes
        accepted = set(verdict.accepted_nodes)
        for k in range(n, len(parents)):
            level = k - n
            before = scores[level - 1] if level else 0.0
            p1, p2 = math.exp(scores[level] - before), math.exp(scores[k] - before)
            rows.append((level, p1, p2, level == 0 or (level - 1) in accepted, k in accepted))
    out[domain] = {"rows": rows, "steps": len(records)}
json.dump(out, open(f"docs/issue18-stop47-sibling-levels-{split}.json", "w"))
for levels in (3, 5):
    print(f"siblings at the first {levels} levels, kept where p1 / p2 < r: verified rows / tokens a step")
    for domain, o in out.items():
        rows, steps = [r for r in o["rows"] if r[0] < levels], o["steps"]
        cells = []
        for r in (1.5, 2, 3, 4, math.inf):
            kept = [x for x in rows if x[1] / x[2] < r]
            cells.append(f"r<{r:g}: {len(kept) / steps:.2f} / {sum(x[4] for x in kept) / steps:.3f}")
        print(f"  {domain:12s} " + " | ".join(cells))
