"""A ``vllm serve`` process held for a test or a load test: started, awaited until healthy, stopped.

The server's output goes to a log file (vLLM logs a lot; a pipe nobody reads would block it). A server
that exits or stays unhealthy past the deadline is an error that quotes the log's tail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from evospec.core.errors import SettingsError
from evospec.serving.server import ServeSettings, check_inputs, environment, serve_command, vllm_executable

HEALTH_POLL_S = 0.5


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class ServerProcess:
    """``with ServerProcess(settings, log) as server: server.base_url ...``

    Args:
        settings: what to serve (port, drafter, ...).
        log: file that receives the server's stdout and stderr.
        startup_timeout_s: how long vLLM may take to answer /health.
        cwd: working directory of the server (default the log's folder: a checkout's stale
            ``*.egg-info`` in the current directory would hide the plugin's entry point).
    """

    def __init__(self, settings: ServeSettings, log: Path, startup_timeout_s: float = 300.0,
                 cwd: Path | None = None) -> None:
        self.settings, self.log = settings, Path(log)
        self.startup_timeout_s = startup_timeout_s
        self.cwd = cwd or self.log.parent
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self) -> Self:
        check_inputs(self.settings)
        argv = serve_command(self.settings, vllm_executable())
        self.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                                            env={**os.environ, **environment(self.settings)}, start_new_session=True)
        deadline = started + self.startup_timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise SettingsError(f"vLLM exited with code {self.process.returncode} while starting; "
                                    f"log {self.log}:\n{log_tail(self.log)}")
            if self.healthy():
                self.startup_s = time.perf_counter() - started
                return self
            time.sleep(HEALTH_POLL_S)
        self.stop()
        raise SettingsError(f"vLLM did not answer /health within {self.startup_timeout_s:.0f} s; log {self.log}:\n"
                            f"{log_tail(self.log)}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def rss_bytes(self) -> int:
        """Resident memory of the server's whole process tree (it runs in its own session)."""
        return session_rss_bytes(self.process.pid) if self.process is not None else 0

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT to the server's process group (vLLM shuts its engine down), SIGKILL after ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def session_rss_bytes(session_id: int) -> int:
    """Resident memory of every process in a session (the server, its engine core and workers), from /proc."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != session_id:  # after the command name: state, ppid, pgrp, session
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):  # a process that ended while we read it
            continue
    return total
