"""The subprocesses ``lumbar-ai demo`` starts, how it stops exactly those, and waiting on them.

Each process runs in its own session, so stopping its process group stops it and whatever it spawned,
and nothing else on the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import LumbarAIError


class DemoError(LumbarAIError):
    """The demo could not start or finish; the message says which part and where its log is."""


@dataclass
class Started:
    """What the demo started, to stop exactly that (and nothing else) on exit."""

    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.logs[name] = log_dir / f"{name}.log"
        with open(self.logs[name], "ab") as log:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with status {proc.returncode}; see {self.logs[name]}")

    def stop_all(self, grace_s: float = 15.0) -> None:
        """SIGTERM to each process group we started, newest first; SIGKILL what is left after the grace."""
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                signal_group(proc, signal.SIGTERM)
        deadline = time.time() + grace_s
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                proc.wait(5)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group id is the pid: start_new_session made it its leader
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check, timeout_s: float, started: Started, interval_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        started.check_alive()
        result = check()
        if result:
            return result
        time.sleep(interval_s)
    raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")
