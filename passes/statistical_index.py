"""Pass: the statistical index (token frequencies and corpus successors) copied into the bundle.

``evospec vocab frequencies --successors S`` counts it from a corpus; compiling with
``--frequencies FILE`` checks it against the target's vocabulary and carries it in the bundle
(fingerprinted like every artefact), so ``frspec:K`` and ``evospec:K`` need no extra file at run
time and a bundle cannot be paired with counts made for another tokenizer.
"""

from __future__ import annotations

from evospec.core.errors import CompileError, SettingsError
from evospec.passes.base import CompileContext, CompilePass, PassResult, ensure_artefacts
from evospec.runtime.vocab.frequencies import TokenFrequencies

FREQUENCIES_FILE = "index/frequencies.json"


class CopyStatisticalIndex(CompilePass):
    name = "statistical_index"
    reads = ('drafter',)

    def ensures(self, ctx: CompileContext) -> None:
        if ctx.settings.frequencies is not None:
            ensure_artefacts(ctx, ["statistical_index"])

    def call(self, ctx: CompileContext) -> PassResult:
        if ctx.settings.frequencies is None:
            return PassResult(False, "no --frequencies: frspec:K and evospec:K will need --frequencies at run time")
        try:
            table = TokenFrequencies.load(ctx.settings.frequencies)
        except SettingsError as exc:
            raise CompileError(str(exc)) from None
        vocab = ctx.drafter.config.vocab_size
        if table.vocab_size != vocab:
            raise CompileError(f"{ctx.settings.frequencies} counts {table.vocab_size} token ids but the target has "
                               f"{vocab}; count with the target's own tokenizer")
        (ctx.work / "index").mkdir(exist_ok=True)
        table.save(ctx.work / FREQUENCIES_FILE)
        ctx.files["statistical_index"] = FREQUENCIES_FILE
        successors = None if table.successors is None else max((len(s) for s in table.successors.values()), default=0)
        ctx.manifest["statistical_index"] = {"source": table.source, "documents": table.documents,
                                             "tokens": int(table.counts.sum()), "successors_per_token": successors,
                                             "file": FREQUENCIES_FILE}
        return PassResult(True, f"{int(table.counts.sum())} tokens counted, "
                                f"{'no' if successors is None else successors} successors per token")
