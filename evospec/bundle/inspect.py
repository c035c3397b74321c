"""`evospec inspect`: a bundle's manifest as readable text."""

from __future__ import annotations

from evospec.core.text_table import text_table


def manifest_report(m: dict) -> str:
    parts = [f"bundle format {m['format']} · backend {m['backend']} · precision {m['precision']}",
             "packages: " + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())]
    for role, info in m.get("inputs", {}).items():
        parts.append(f"{role}: {info['path']} ({len(info['files'])} files hashed)")
    parts.append("shapes: " + ", ".join(f"{k}={v}" for k, v in m.get("shapes", {}).items()))
    if "reservoir" in m:
        parts.append("reservoir: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in m["reservoir"].items()))
    if "gather" in m:
        parts.append(f"head buckets: {m['gather']['buckets']} (drafter's own {m['gather']['default_active']} rows "
                     f"use bucket {m['gather']['default_bucket']})")
    parts += ["", "passes", text_table(("pass", "changed", "seconds", "summary"),
                                   [(p["name"], p["changed"], f"{p['seconds']:.2f}", p["summary"]) for p in m["passes"]])]
    for stage, graph in m.get("graphs", {}).items():
        ins = ", ".join(f"{k}{v}" for k, v in graph["inputs"].items())
        parts.append(f"{stage}: {graph['nodes']} nodes, opset {graph['opset']}; inputs {ins}")
    parity = m.get("parity", {})
    if parity.get("stages"):
        parts += ["", f"parity vs torch (atol {parity['atol']}, rtol {parity['rtol']})",
                  text_table(("stage", "output", "max abs error", "bound", "ok"),
                         [(s, o, f"{r['max_abs_error']:.2e}", f"{r['bound']:.2e}", r["ok"])
                          for s, outs in parity["stages"].items() for o, r in outs.items()])]
    elif parity:
        parts.append(f"parity: {parity.get('note', '')}")
    files = m.get("files", {})
    parts += ["", f"files ({sum(f['bytes'] for f in files.values()) / 2**20:.1f} MiB)",
              text_table(("file", "bytes"), [(name, f["bytes"]) for name, f in sorted(files.items())])]
    return "\n".join(parts)
