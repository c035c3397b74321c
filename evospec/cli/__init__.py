"""The ``evospec`` command: the root group (``root.main``) and one module per command group,
registered on it here, explicitly."""

from __future__ import annotations

from evospec.cli import bundle, cpp, data, decode, serve, train
from evospec.cli import eval as measure
from evospec.cli.root import main

COMMANDS = (
    decode.generate, decode.demo,                                    # decoding
    train.build_demo, train.train, train.reference,                 # training the pairs
    data.data, data.tokenizer, data.vocab,                           # text and tokens
    bundle.compile_cmd, bundle.inspect_cmd, bundle.doctor_cmd,       # compiled bundles
    bundle.export_cmd,
    measure.bench, measure.profile_group,                            # measuring
    serve.serve_cmd, serve.loadtest_cmd, serve.soak_cmd,             # serving (vLLM)
    cpp.record_drafts_cmd,                                           # the C++ drafter library (runtime/cpp)
)
for command in COMMANDS:
    main.add_command(command)
measure.profile_group.add_command(cpp.profile_cpp_cmd)  # `evospec profile cpp`

__all__ = ["main"]
