"""The demo's processes: started on free loopback ports, waited for, and all stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StartError(Exception):
    """A demo process did not come up."""


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    """Every process the demo started, so that all of them are stopped."""

    logs: Path
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Started:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        started = Started(name, process, log)
        self.started.append(started)
        return started

    def wait_http(self, started: Started, url: str, *, within: float = 30.0) -> None:
        """Wait until ``url`` answers (any status below 500)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if started.process.poll() is not None:
                raise StartError(
                    f"{started.name} exited with {started.process.returncode}: {_tail(started.log)}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise StartError(f"{started.name} did not answer {url} within {within:g} s")

    def pids(self) -> list[int]:
        return [started.process.pid for started in self.started]

    def stop_all(self, *, grace: float = 10.0) -> None:
        """SIGTERM every process group, then SIGKILL what is left after ``grace``."""
        for started in reversed(self.started):
            if started.process.poll() is None:
                _signal_group(started.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for started in self.started:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                started.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(started.process, signal.SIGKILL)
                started.process.wait(timeout=5)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def python() -> str:
    return sys.executable
