"""Proxy work per request in instructions: ``coalmine proxy`` under valgrind's callgrind,
which counts the instructions the process executes, the same from run to run whatever
else the machine is doing, where CPU seconds on a shared machine vary by a fifth.

    python -m bench.proxy_instructions [--requests 2000] [--baseline DIR] [--out bench/out]

The proxy (``--no-spans``, the two-arm policy of ``bench/proxy_speed.py`` pinned at 50%)
runs under ``valgrind --tool=callgrind --instr-atstart=no`` in front of
``bench/proxy_upstream.py``. One keep-alive client sends 200 ``GET /small`` to warm up;
counting is switched on (``callgrind_control -i on``) for ``--requests`` more, one after
another, each with its own ``x-user-id``, then off. The figure is the instructions
counted over those requests, per request: user space of the proxy process (the kernel's
share, the system calls, is not counted). ``--baseline DIR`` measures another coalmine
source tree the same way (``bench/proxy_capacity.py`` explains how it is run). Needs
valgrind (Debian's ``valgrind``). Results: Markdown on stdout and
``<out>/proxy_instructions.md``, and ``<out>/proxy_instructions.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.proxy_capacity import BASELINE, baseline_command
from bench.proxy_speed import HOST, RELEASE, _free_port, coalmine_command, policy_yaml, upstream

WARMUP = 200
START_S = 300.0
"""How long a proxy under valgrind may take to answer its first request."""


@dataclass
class Counted:
    path: str
    requests: int
    instructions: int
    statuses: dict[str, int]

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


class _Client:
    """One keep-alive connection, one request at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=60)

    def get(self, user: int) -> str:
        request = f"GET /small HTTP/1.1\r\nHost: {HOST}\r\nx-user-id: user-{user}\r\n\r\n"
        self.sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += self._recv()
        return lines[0].split(b" ")[1].decode()

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def _wait_for(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_S
    while True:
        try:
            client = _Client(port)
            client.get(0)
            client.close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the proxy under valgrind did not start:\n{tail}") from None
            time.sleep(1)


def count(
    name: str, command: list[str], tmp: Path, arms: tuple[int, int], requests: int
) -> Counted:
    port = _free_port()
    policy = tmp / f"policy-{port}.yaml"
    policy.write_text(policy_yaml(arms, None))
    out = tmp / f"callgrind-{port}.out"
    log = tmp / f"proxy-{port}.log"
    args = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *command,
        "--policy",
        str(policy),
        "--listen",
        f"{HOST}:{port}",
        "--metrics-listen",
        f"{HOST}:{_free_port()}",
        "--weight",
        f"{RELEASE}=50",
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    statuses: Counter[str] = Counter()
    try:
        _wait_for(port, process, log)
        client = _Client(port)
        for user in range(WARMUP):
            client.get(user)
        control = ["callgrind_control", "-i"]
        subprocess.run([*control, "on", str(process.pid)], check=True, capture_output=True)
        for user in range(requests):
            statuses[client.get(user % 1000)] += 1
        subprocess.run([*control, "off", str(process.pid)], check=True, capture_output=True)
        client.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    totals = [line for line in out.read_text().splitlines() if line.startswith("totals:")]
    return Counted(name, requests, int(totals[0].split()[1]), dict(statuses))


def markdown(command: str, results: list[Counted], wall_s: float) -> str:
    reference = next((r.per_request for r in results if r.path == "coalmine"), None)
    lines = [
        "# Proxy instructions per request",
        "",
        f"Command: `{command}` (wall time {wall_s:.0f} s)",
        "",
        f"Python {platform.python_version()} on {platform.machine()}; "
        f"{_version(['valgrind', '--version'])}. `coalmine proxy --no-spans` under callgrind, "
        "one keep-alive client sending `GET /small` one after another (each with its own "
        f"`x-user-id`) to `bench/proxy_upstream.py`; counted after {WARMUP} warm-up "
        "requests: the proxy process's user-space instructions, per request.",
        "",
        "| path | requests | answers | instructions per request | x coalmine |",
        "|---|---|---|---|---|",
    ]
    for item in results:
        answers = ", ".join(f"{n} x {status}" for status, n in sorted(item.statuses.items()))
        ratio = f"{item.per_request / reference:.2f}" if reference else ""
        lines.append(
            f"| {item.path} | {item.requests:,} | {answers} | {item.per_request:,.0f} | {ratio} |"
        )
    return "\n".join(lines)


def _version(args: list[str]) -> str:
    run = subprocess.run(args, capture_output=True, text=True, check=False)
    return run.stdout.strip() or run.stderr.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--baseline", type=Path, help="another coalmine source tree")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("valgrind not found (Debian's valgrind package)")
    base = coalmine_command()
    if base is None:
        parser.error("no `coalmine proxy` command next to this Python")
    if args.baseline is not None and not (args.baseline / "proxy" / "app.py").is_file():
        parser.error(f"--baseline: {args.baseline} is not a coalmine source tree")
    command = "python -m bench.proxy_instructions " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    variants = [("coalmine", base)]
    if args.baseline is not None:
        variants.append((BASELINE, baseline_command(args.baseline)))
    started = time.monotonic()
    results: list[Counted] = []
    with tempfile.TemporaryDirectory(prefix="proxy-instructions-") as folder:
        tmp = Path(folder)
        arms = (_free_port(), _free_port())
        with upstream(tmp, arms):
            for name, proxy in variants:
                results.append(count(name, proxy, tmp, arms, args.requests))
    text = markdown(command.strip(), results, time.monotonic() - started)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy_instructions.md").write_text(text + "\n", encoding="utf-8")
    data: dict[str, Any] = {
        "command": command.strip(),
        "results": [asdict(item) | {"per_request": item.per_request} for item in results],
    }
    (args.out / "proxy_instructions.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
