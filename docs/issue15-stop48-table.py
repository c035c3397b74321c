"""Issue 15's result tables from `profile vocab` JSON (stop 48): share of the full head's tau per policy, K and
domain; EvoSpec against the best baseline in each cell; tau over FR-Spec's list; the smallest K at 99%.

    python docs/issue15-stop48-table.py docs/issue15-stop48-test-t0.json \
        docs/issue15-stop48-test-t1.json,docs/issue15-stop48-test-t1-frspec-align.json

A comma joins runs of one temperature: the later runs' policies are added to the first run's table, their share
taken against the first run's full head (their own full rows are not used).

The baselines are FR-Spec with either list, FR-Spec with EvoSpec's alignment where the run has it (alignment
alone), and DynaSpec with EvoSpec's alignment. A tie is a tau equal to two decimals (|difference| < 0.005), as in the README's earlier tables.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

DOMAINS = ("code", "general", "law", "medicine", "multilingual", "switch")
BASELINES = ("frspec:K", "frspec:K@general", "frspec:K+align", "dynaspec:K:512+align")
OURS = ("evospec:K", "evospec:K+align")


def family(policy: str, size: int) -> str:
    return policy.replace(f":{size}", ":K", 1)


def header(lead: tuple[str, ...], columns: list[str]) -> None:
    """A markdown table's header: the ``lead`` columns, then one per ``columns``."""
    print("| " + " | ".join(lead + tuple(columns)) + " |")
    print("|" + "---|" * (len(lead) + len(columns)))


def load(path: str) -> tuple[float, dict]:
    """Temperature and {(family, K, domain): (tau, share)} of one run; K = 0 for the full head."""
    rows = json.loads(Path(path).read_text())
    cells = {}
    for r in rows:
        k = 0 if r["policy"] == "full" else int(r["active_size"])
        cells[(family(r["policy"], k) if k else "full", k, r["domain"])] = (r["mean_accepted_length"],
                                                                            r["share_of_full"])
    return rows[0]["temperature"], cells


def tables(paths: str) -> None:
    path, *extra = paths.split(",")
    temperature, cells = load(path)
    for more in extra:
        for (f, k, d), (tau, _) in load(more)[1].items():
            if k:
                cells[(f, k, d)] = (tau, tau / cells[("full", 0, d)][0])
    sizes = sorted({k for (_, k, _) in cells if k})
    families = [f for f in BASELINES + OURS if any((f, k, d) in cells for k in sizes for d in DOMAINS)]
    domains = [d for d in DOMAINS if ("full", 0, d) in cells]
    print(f"\n#### T = {temperature:g}: share of the full head's tau (tau)\n")
    header(("policy", "K"), [*domains, "mean share"])
    print("| full head | 151,851 | " + " | ".join(f"({cells[('full', 0, d)][0]:.2f})" for d in domains) + " | |")
    for k in sizes:
        for f in families:
            got = [cells.get((f, k, d)) for d in domains]
            if not all(got):
                continue
            mean = sum(s for _, s in got) / len(got)
            name = f"**`{f}`**" if f == "evospec:K+align" else f"`{f}`"
            print(f"| {name} | {k} | " + " | ".join(f"{s:.0%} ({t:.2f})" for t, s in got) + f" | {mean:.1%} |")
    for ours in (f for f in OURS if f in families):
        print(f"\n`{ours}` against the best baseline in each cell (tau; W / T / L):\n")
        header(("K",), [*domains, "W / T / L"])
        for k in sizes:
            marks, tally = [], defaultdict(int)
            for d in domains:
                mine = cells[(ours, k, d)][0]
                best_f = max((f for f in BASELINES if (f, k, d) in cells), key=lambda f: cells[(f, k, d)][0])
                best = cells[(best_f, k, d)][0]
                verdict = "T" if abs(mine - best) < 0.005 else ("W" if mine > best else "L")
                tally[verdict] += 1
                short = {"frspec:K": "FR", "frspec:K@general": "FR-gen", "frspec:K+align": "FR+al", "dynaspec:K:512+align": "Dyn"}[best_f]
                marks.append(f"{'**' if verdict == 'W' else ''}{mine:.2f}{'**' if verdict == 'W' else ''}"
                             f" / {best:.2f} {short} {verdict}")
            print(f"| {k} | " + " | ".join(marks) + f" | {tally['W']} / {tally['T']} / {tally['L']} |")
    print("\nHead to head over every cell (domains x K): W / T / L of EvoSpec against each baseline alone:\n")
    header(("",), [f"`{b}`" for b in BASELINES if b in families])
    for ours in (f for f in OURS if f in families):
        counts = []
        for b in (b for b in BASELINES if b in families):
            diffs = [cells[(ours, k, d)][0] - cells[(b, k, d)][0] for k in sizes for d in domains]
            counts.append(f"{sum(x >= 0.005 for x in diffs)} / {sum(abs(x) < 0.005 for x in diffs)} / "
                          f"{sum(x <= -0.005 for x in diffs)}")
        print(f"| `{ours}` | " + " | ".join(counts) + " |")
    print("\nTau over FR-Spec's all-domain list (`frspec:K`), the paper's reference is 1.13x:\n")
    header(("policy", "K"), domains)
    for k in sizes:
        for f in ("frspec:K+align", "dynaspec:K:512+align") + OURS:
            if all((f, k, d) in cells for d in domains):
                print(f"| `{f}` | {k} | " + " | ".join(
                    f"{cells[(f, k, d)][0] / cells[('frspec:K', k, d)][0]:.2f}x" for d in domains) + " |")
    projection([path] + extra, sizes, domains)
    print("\nSmallest K (of the sizes run) at 99% of the full head's tau; - = none:\n")
    header(("policy",), domains)
    for f in families:
        smallest = [next((str(k) for k in sizes if cells[(f, k, d)][1] >= 0.99), "-") for d in domains]
        print(f"| `{f}` | " + " | ".join(smallest) + " |")


def projection(paths: list[str], sizes: list[int], domains: list[str]) -> None:
    """`profile vocab --stages`'s projection, applied to the run's rows: measured tau and host time, stage latencies
    of `docs/profile-llama3-8b-ort.json` (32 target layers, a chain of 5). A PROJECTION, not a measurement."""
    from evospec.eval.profile_vocab import StageCosts, VocabRow, project_speedups

    rows = [VocabRow(**r) for path in paths for r in json.loads(Path(path).read_text())]
    project_speedups(rows, StageCosts.load("docs/profile-llama3-8b-ort.json"), 32, 5)
    x = {(family(r.policy, int(r.active_size)), int(r.active_size), r.domain): r.projected_speedup for r in rows
         if r.policy != "full"}
    print("\nPROJECTED speed-up over plain decoding at the Llama-3-8B shape (not measured), and over FR-Spec's list:\n")
    header(("policy", "K"), domains)
    for k in sizes:
        for f in ("frspec:K", "dynaspec:K:512+align") + OURS:
            if all((f, k, d) in x for d in domains):
                cells = [f"{x[(f, k, d)]:.2f}x" + ("" if f == "frspec:K" else f" ({x[(f, k, d)] / x[('frspec:K', k, d)]:.2f})")
                         for d in domains]
                print(f"| `{f}` | {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        tables(p)
