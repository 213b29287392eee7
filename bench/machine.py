"""What the machine and this process are doing, read from /proc (Linux), for benchmarks
that report how busy the machine was while they ran."""

from __future__ import annotations

import math
import os
import platform
import resource
import socket
import time
from dataclasses import dataclass
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return math.nan


def rss_mb() -> float:
    """This process's resident set size now (VmRSS), in MB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """The largest resident set size this process has had since it started its program
    (VmHWM), in MB. Not ``ru_maxrss``: Linux carries that over ``execve`` from the parent
    that forked the process."""
    return _status_mb("VmHWM")


def machine_busy() -> float:
    """CPU seconds the machine has been busy, all CPUs (user, nice, system, irq, softirq)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have ended."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def describe() -> str:
    """Python version, machine and CPU count, for a report."""
    return f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s)"


@dataclass
class Load:
    """How busy the machine was over a stretch of wall time, and how much of it was ours."""

    wall_s: float = 0.0
    own_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0

    @property
    def other_share(self) -> float:
        """CPU time of other work, as a share of the machine's CPU time."""
        capacity = self.wall_s * (os.cpu_count() or 1)
        if capacity <= 0:
            return 0.0
        return max(0.0, self.machine_cpu_s - self.own_cpu_s) / capacity


class LoadMeter:
    """Measures a ``Load`` from its creation to ``stop()``; ``extra`` adds the CPU of
    processes of ours that are still running (a server started for the benchmark)."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._own = own_cpu()
        self._busy = machine_busy()

    def stop(self, extra_cpu_s: float = 0.0) -> Load:
        return Load(
            wall_s=time.perf_counter() - self._wall,
            own_cpu_s=own_cpu() - self._own + extra_cpu_s,
            machine_cpu_s=machine_busy() - self._busy,
        )
