"""Proxy speed: what coalmine's routing proxy adds over calling the app directly, next to
nginx doing the same job.

    python -m bench.proxy_speed [--seconds 20] [--shadow-seconds 15] [--out bench/out]

Three paths to the same upstream (``bench/proxy_upstream.py``, one process listening on
two ports, one per arm), all on loopback:

- ``direct``: client -> upstream;
- ``nginx``: client -> Debian's nginx (one worker process) -> upstream, with
  ``split_clients`` on ``x-user-id`` between the two ports, keep-alive upstream
  connections and ``proxy_buffering off``; ``mirror`` to a staging upstream only where
  a table says so;
- ``coalmine``: client -> ``coalmine proxy`` (one process) -> upstream, the same 50/50
  split on ``x-user-id``.

Measured: (a) added latency over direct, p50 and p99, at a constant 200 and 500
requests/s (an open-loop generator in this process, latency from each request's
scheduled send time); (b) maximum throughput with ``wrk -t1 -c32 -d10s``; (c) time to
the first event of an SSE stream; (d) the proxy's RSS growth while a client reads a
200 MiB response slowly; (e) primary latency at 200 requests/s with every request
mirrored to a staging upstream that is 10x slower, or down.

The result is a Markdown table (stdout and ``<out>/proxy_speed.md``, with the command)
and ``<out>/proxy_speed.json``. Needs ``nginx`` and ``wrk`` (``scripts/bench-deps.sh``).
Without a ``coalmine proxy`` command, the coalmine path is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.proxy_upstream import SMALL

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
RATES = (200, 500)
WARMUP_S = 3.0
POOL_LIMIT = 256
PREOPEN = 16
REQUEST_TIMEOUT_S = 10.0
USERS = 1000
WRK_CONNECTIONS = 32
WRK_SECONDS = 10
SSE_STREAMS = 200
SSE_EVENTS = 10
SSE_GAP_MS = 2
SSE_TIMEOUT_S = 2.0
SSE_BUDGET_S = 60.0
BIG_MIB = 200
READ_MIB_PER_S = 50
SHADOW_RATE = 200
PRIMARY_DELAY_MS = 20.0
STAGING_SLOWDOWN = 10
RELEASE = "proxy-bench"
POST_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "Where is my order 12345?"},
        ],
    }
).encode()

GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 3.0
GOAL_THROUGHPUT_SHARE = 0.8
GOAL_TTFB_MS = 2.0
GOAL_RSS_MB = 20.0
GOAL_SHADOW_SHARE = 0.05

T = TypeVar("T")
Launched = AbstractContextManager[subprocess.Popen[bytes]]


# --- processes -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers(port: int, path: str = "/small") -> bool:
    """Whether ``GET path`` on the port answers 200 within a second."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nx-user-id: ready\r\nConnection: close\r\n\r\n"
    )
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(request.encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def launched(args: Sequence[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process that serves on ``port``; stopped (terminate, then wait) on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{shlex.join(args)} did not start:\n{tail}")
            time.sleep(0.05)
        yield process
    finally:
        _stop(process)


def upstream(tmp: Path, ports: Sequence[int], delay_ms: float = 0.0) -> Launched:
    args = [sys.executable, "-m", "bench.proxy_upstream", "--delay-ms", str(delay_ms)]
    for port in ports:
        args += ["--port", str(port)]
    return launched(args, ports[0], tmp / f"upstream-{ports[0]}.log")


def nginx_binary() -> str:
    """nginx on PATH, or Debian's, which is in /usr/sbin (not on every user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin") or "nginx"


def nginx_config(tmp: Path, port: int, arms: Sequence[int], staging: int | None) -> str:
    """nginx as the split (and, with ``staging``, mirror) in front of the two arms."""
    keep = 'proxy_http_version 1.1;\n        proxy_set_header Connection "";'
    mirror = "mirror /_mirror;\n            mirror_request_body on;" if staging else ""
    staging_block = (
        f"upstream staging {{ server {HOST}:{staging}; keepalive 64; keepalive_requests 1000000; }}"
        if staging
        else ""
    )
    mirror_location = (
        f"""location = /_mirror {{
            internal;
            proxy_pass http://staging$request_uri;
            {keep}
            proxy_set_header x-coalmine-shadow 1;
        }}"""
        if staging
        else ""
    )
    temps = "\n    ".join(
        f"{kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {temps}
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream stable {{ server {HOST}:{arms[0]}; keepalive 64; keepalive_requests 1000000; }}
    upstream canary {{ server {HOST}:{arms[1]}; keepalive 64; keepalive_requests 1000000; }}
    {staging_block}
    split_clients "${{http_x_user_id}}" $arm {{
        50% stable;
        *   canary;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://$arm;
            {keep}
            proxy_buffering off;
            {mirror}
        }}
        {mirror_location}
    }}
}}
"""


def nginx(tmp: Path, port: int, arms: Sequence[int], staging: int | None = None) -> Launched:
    folder = tmp / f"nginx-{port}"
    folder.mkdir()
    folder.chmod(0o755)
    config = folder / "nginx.conf"
    config.write_text(nginx_config(folder, port, arms, staging))
    args = [nginx_binary(), "-p", str(folder), "-e", str(folder / "nginx-error.log")]
    args += ["-c", str(config), "-g", "daemon off;"]
    return launched(args, port, folder / "nginx.log")


def policy_yaml(arms: Sequence[int], shadow: str | None) -> str:
    """A release of two upstream arms split on ``x-user-id``; optionally mirrored."""
    shadow_block = (
        f"""
shadow:
  upstream: "{shadow}"
  percent: 100
  methods: [GET, POST]
"""
        if shadow
        else ""
    )
    return f"""apiVersion: coalmine/v1
kind: Release
name: {RELEASE}

target:
  upstreams:
    stable: "http://{HOST}:{arms[0]}"
    canary: "http://{HOST}:{arms[1]}"

routing:
  stickiness: {{header: x-user-id}}
{shadow_block}
steps:
  - {{weight: 5, minDuration: 15m}}
  - {{weight: 25, minDuration: 15m}}
  - {{weight: 50, minDuration: 30m, maxDuration: 4h}}

analysis:
  interval: 1m
  alpha: 0.05
  minSamples: 50
  metrics:
    - name: errors
      source: error_rate
      tolerance: 0.01
      critical: true
    - name: latency
      source: latency
      quantile: 0.95
      tolerancePercent: 20
"""


def coalmine_command() -> list[str] | None:
    """``coalmine proxy`` and its fixed options, or None when there is no such command."""
    binary = Path(sys.executable).with_name("coalmine")
    if not binary.exists():
        return None
    help_run = subprocess.run(
        [str(binary), "proxy", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    if help_run.returncode != 0:
        return None
    command = [str(binary), "proxy", "--no-spans"]
    if "--workers" in help_run.stdout:
        command += ["--workers", "1"]
    return command


def coalmine(
    tmp: Path, base: list[str], port: int, arms: Sequence[int], shadow: str | None = None
) -> Launched:
    policy = tmp / f"policy-{port}.yaml"
    policy.write_text(policy_yaml(arms, shadow))
    args = [*base, "--policy", str(policy), "--listen", f"{HOST}:{port}"]
    args += ["--metrics-listen", f"{HOST}:{_free_port()}", "--weight", f"{RELEASE}=50"]
    return launched(args, port, tmp / f"coalmine-{port}.log")


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parent = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(stat.parent.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children = _children()
    tree = [pid]
    for member in tree:
        tree.extend(children.get(member, []))
    return tree


def rss_mb(pids: Sequence[int]) -> float:
    """Summed VmRSS of the processes, in MiB."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


# --- HTTP client -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    pid: int
    processes: int


def _request(target: Target, method: str, path: str, user: int, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{target.port}\r\nx-user-id: user-{user}\r\n"
    if body:
        head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    """Status and (lower-case) headers of a response."""
    lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


def reusable(headers: dict[bytes, bytes]) -> bool:
    framed = b"content-length" in headers or _chunked(headers)
    return framed and headers.get(b"connection", b"").lower() != b"close"


def _chunked(headers: dict[bytes, bytes]) -> bool:
    return b"chunked" in headers.get(b"transfer-encoding", b"").lower()


async def body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> AsyncIterator[bytes]:
    """The response body as it arrives (chunked, sized, or up to the end)."""
    if _chunked(headers):
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            yield (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
    elif b"content-length" in headers:
        remaining = int(headers[b"content-length"])
        while remaining:
            data = await reader.read(min(remaining, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(data)
            yield data
    else:
        while data := await reader.read(65536):
            yield data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status of a whole response, and whether its connection can be reused."""
    status, headers = await read_head(reader)
    async for _ in body(reader, headers):
        pass
    return status, reusable(headers)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    """Keep-alive connections to one port, up to a limit; a waiting request waits here."""

    def __init__(self, port: int, limit: int) -> None:
        self.port = port
        self.idle: deque[Connection] = deque()
        self.slots = asyncio.Semaphore(limit)

    async def fill(self, count: int) -> None:
        for _ in range(count):
            self.idle.append(await asyncio.open_connection(HOST, self.port))

    async def acquire(self) -> Connection:
        await self.slots.acquire()
        try:
            if self.idle:
                return self.idle.popleft()
            return await asyncio.open_connection(HOST, self.port)
        except BaseException:
            self.slots.release()
            raise

    def release(self, connection: Connection, keep: bool) -> None:
        if keep:
            self.idle.append(connection)
        else:
            connection[1].close()
        self.slots.release()

    def close(self) -> None:
        while self.idle:
            self.idle.popleft()[1].close()


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on a select()-based loop: its timeouts have microsecond, not millisecond, steps,
    so requests leave on their timetable."""
    with asyncio.Runner(
        loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())
    ) as runner:
        return runner.run(coroutine)


# --- (a, e) open-loop latency ----------------------------------------------------------


@dataclass
class Load:
    """Requests sent on a fixed timetable; latency counts from the scheduled send time."""

    path: str
    label: str
    rate: float
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    timer_lag_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def _timed_request(pool: Pool, raw: bytes, scheduled: float, load: Load) -> None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            connection = await pool.acquire()
            keep = False
            try:
                load.send_lag_ms.append((loop.time() - scheduled) * 1000)
                connection[1].write(raw)
                status, keep = await read_response(connection[0])
            finally:
                pool.release(connection, keep)
    except TimeoutError:
        load.errors += 1
        load.latencies_ms.append((loop.time() - scheduled) * 1000)
        return
    except (OSError, ValueError, asyncio.IncompleteReadError):
        load.errors += 1
        return
    if status != 200:
        load.errors += 1
        return
    load.latencies_ms.append((loop.time() - scheduled) * 1000)


async def _open_loop(
    target: Target, rate: float, seconds: float, *, method: str, path: str, label: str
) -> Load:
    loop = asyncio.get_running_loop()
    load = Load(target.name, label, rate, seconds)
    body_bytes = POST_BODY if method == "POST" else b""
    requests = [_request(target, method, path, user, body_bytes) for user in range(USERS)]
    pool = Pool(target.port, POOL_LIMIT)
    await pool.fill(PREOPEN)
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time() + 0.01
    try:
        for index in range(int(rate * seconds)):
            scheduled = start + index / rate
            if (wait := scheduled - loop.time()) > 0:
                await asyncio.sleep(wait)
            load.timer_lag_ms.append((loop.time() - scheduled) * 1000)
            task = asyncio.create_task(
                _timed_request(pool, requests[index % USERS], scheduled, load)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 5)
            load.errors += len(pending)
    finally:
        pool.close()
    return load


def open_loop(
    target: Target,
    rate: float,
    seconds: float,
    *,
    method: str = "GET",
    path: str = "/small",
    label: str = "",
) -> Load:
    """A warm-up of ``WARMUP_S``, then ``rate`` requests a second for ``seconds``."""
    run_async(_open_loop(target, rate, WARMUP_S, method=method, path=path, label=label))
    return run_async(_open_loop(target, rate, seconds, method=method, path=path, label=label))


# --- (b) throughput --------------------------------------------------------------------

WRK_SCRIPT = f"""
local requests = {{}}
local n = 0
init = function(args)
  for i = 1, {USERS} do
    requests[i] = wrk.format("GET", "/small", {{["x-user-id"] = "user-" .. i}})
  end
end
request = function()
  n = n + 1
  return requests[(n % {USERS}) + 1]
end
"""


@dataclass(frozen=True)
class Throughput:
    path: str
    requests_per_second: float
    requests: int
    bad: int
    latency_avg: str


def wrk(target: Target, script: Path, seconds: int = WRK_SECONDS) -> Throughput:
    """``wrk -t1 -c32`` against ``/small`` (user ids varied by ``script``)."""
    url = f"http://{HOST}:{target.port}/small"
    args = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url]
    run = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    out = run.stdout
    rps = float(_search(r"Requests/sec:\s+([\d.]+)", out))
    total = int(_search(r"(\d+) requests in", out))
    bad = int(_search(r"Non-2xx or 3xx responses: (\d+)", out, "0"))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        bad += sum(int(value) for value in errors.groups())
    return Throughput(target.name, rps, total, bad, _search(r"Latency\s+(\S+)", out))


def _search(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match:
        return match.group(1)
    if default is None:
        raise RuntimeError(f"wrk output lacks {pattern!r}:\n{text}")
    return default


# --- (c) SSE ---------------------------------------------------------------------------


@dataclass
class Streams:
    path: str
    first_event_ms: list[float] = field(default_factory=list)
    whole_ms: list[float] = field(default_factory=list)
    incomplete: int = 0


async def _one_stream(connection: Connection, raw: bytes) -> tuple[float, float, bool]:
    """Seconds to the first event and to the end; whether the connection is reusable.
    Raises ValueError for a stream that is not a whole 200 SSE answer."""
    loop = asyncio.get_running_loop()
    reader, writer = connection
    started = loop.time()
    writer.write(raw)
    status, headers = await read_head(reader)
    first, done = None, False
    async for data in body(reader, headers):
        if first is None and b"data:" in data:
            first = loop.time()
        done = done or b"[DONE]" in data
    if status != 200 or first is None or not done:
        raise ValueError(f"bad stream: status {status}")
    return first - started, loop.time() - started, reusable(headers)


async def _sse(target: Target, streams: int) -> Streams:
    loop = asyncio.get_running_loop()
    result = Streams(target.name)
    path = f"/sse?events={SSE_EVENTS}&gap_ms={SSE_GAP_MS}"
    deadline = loop.time() + SSE_BUDGET_S
    connection: Connection | None = None
    try:
        for index in range(streams):
            if loop.time() > deadline:
                result.incomplete += streams - index
                break
            keep = False
            try:
                async with asyncio.timeout(SSE_TIMEOUT_S):
                    if connection is None:
                        connection = await asyncio.open_connection(HOST, target.port)
                    raw = _request(target, "GET", path, index)
                    first, whole, keep = await _one_stream(connection, raw)
                result.first_event_ms.append(first * 1000)
                result.whole_ms.append(whole * 1000)
            except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
                result.incomplete += 1
            if not keep and connection is not None:
                connection[1].close()
                connection = None
    finally:
        if connection is not None:
            connection[1].close()
    return result


def sse(target: Target, streams: int = SSE_STREAMS) -> Streams:
    """``streams`` SSE streams one after the other on a keep-alive connection."""
    run_async(_sse(target, 10))
    return run_async(_sse(target, streams))


# --- (d) memory while streaming --------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    path: str
    mib: int
    received: int
    seconds: float
    before_mb: float
    peak_mb: float
    after_mb: float

    @property
    def complete(self) -> bool:
        return self.received == self.mib * 1024 * 1024

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.before_mb


async def _warm_up(target: Target) -> None:
    """A few small answers and a 1 MiB stream, so that first-use costs are paid."""
    reader, writer = await asyncio.open_connection(HOST, target.port)
    try:
        for index in range(50):
            writer.write(_request(target, "GET", "/small", index))
            await read_response(reader)
        writer.write(_request(target, "GET", "/big?mb=1", 0))
        await read_response(reader)
    finally:
        writer.close()


async def _stream_big(target: Target, mib: int, mib_per_s: float) -> Memory:
    loop = asyncio.get_running_loop()
    await _warm_up(target)
    pids = process_tree(target.pid)
    before = peak = rss_mb(pids)
    received, sampled = 0, 0.0
    started = loop.time()
    reader, writer = await asyncio.open_connection(HOST, target.port)
    try:
        writer.write(_request(target, "GET", f"/big?mb={mib}", 1))
        async with asyncio.timeout(mib / mib_per_s * 2 + 30):
            _, headers = await read_head(reader)
            async for data in body(reader, headers):
                received += len(data)
                now = loop.time()
                if now - sampled > 0.02:
                    peak, sampled = max(peak, rss_mb(pids)), now
                due = started + received / (mib_per_s * 1024 * 1024)
                if due > now:
                    await asyncio.sleep(due - now)
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
    seconds = loop.time() - started
    await asyncio.sleep(0.2)
    return Memory(target.name, mib, received, seconds, before, peak, rss_mb(pids))


def stream_big(target: Target, mib: int = BIG_MIB, mib_per_s: float = READ_MIB_PER_S) -> Memory:
    """RSS of the proxy (and its children) before and at peak while ``mib`` MiB stream
    through it to a client that reads ``mib_per_s`` MiB a second."""
    return run_async(_stream_big(target, mib, mib_per_s))


# --- the run ---------------------------------------------------------------------------


@dataclass
class Results:
    targets: list[Target]
    latency: list[Load]
    throughput: list[Throughput]
    streams: list[Streams]
    memory: list[Memory]
    shadow: list[Load]
    staging_copies: dict[str, int]
    coalmine: bool
    wall_seconds: float = 0.0
    busy_before: float = 0.0


def _target(name: str, port: int, process: subprocess.Popen[bytes]) -> Target:
    return Target(name, port, process.pid, len(process_tree(process.pid)))


@contextmanager
def proxies(
    tmp: Path, arms: Sequence[int], base: list[str] | None
) -> Iterator[list[tuple[str, int, subprocess.Popen[bytes]]]]:
    """Fresh nginx and coalmine processes in front of ``arms``: name, port, process."""
    with ExitStack() as stack:
        started = []
        for name in ["nginx"] + (["coalmine"] if base is not None else []):
            port, proxy = _proxy(name, tmp, arms, None, base)
            started.append((name, port, stack.enter_context(proxy)))
        yield started


def main_paths(tmp: Path, seconds: float, coalmine_base: list[str] | None) -> Results:
    """(a) to (d): the three paths to one fast upstream; new proxy processes for each
    figure, so that none inherits what an earlier one left behind."""
    arms = (_free_port(), _free_port())
    script = tmp / "users.lua"
    script.write_text(WRK_SCRIPT)
    results = Results([], [], [], [], [], [], {}, coalmine_base is not None)
    with upstream(tmp, arms) as direct_process:
        direct = _target("direct", arms[0], direct_process)
        for figure in (*RATES, "throughput", "sse", "memory"):
            with proxies(tmp, arms, coalmine_base) as started:
                targets = [direct] + [_target(*item) for item in started]
                results.targets = targets
                if isinstance(figure, int):
                    results.latency += [open_loop(t, figure, seconds) for t in targets]
                elif figure == "throughput":
                    results.throughput = [wrk(target, script) for target in targets]
                elif figure == "sse":
                    results.streams = [sse(target) for target in targets]
                else:
                    results.memory = [stream_big(target) for target in targets[1:]]
    return results


def _staging_count(port: int) -> int:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(f"GET /stats HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return int(json.loads(data.split(b"\r\n\r\n", 1)[1])["requests"])


def _proxy(
    name: str, tmp: Path, arms: Sequence[int], staging: int | None, base: list[str] | None
) -> tuple[int, Launched]:
    """A fresh proxy of the kind ``name`` in front of ``arms``, mirroring to ``staging``."""
    port = _free_port()
    if name == "nginx":
        return port, nginx(tmp, port, arms, staging)
    assert base is not None
    url = None if staging is None else f"http://{HOST}:{staging}"
    return port, coalmine(tmp, base, port, arms, url)


def shadow_runs(
    tmp: Path, seconds: float, coalmine_base: list[str] | None
) -> tuple[list[Load], dict[str, int]]:
    """(e): primary latency with no mirror, a 10x slower staging, and staging down."""
    arms = (_free_port(), _free_port())
    staging_port, closed_port = _free_port(), _free_port()
    cases = (
        ("no shadow", None),
        ("staging 10x slower", staging_port),
        ("staging down", closed_port),
    )
    names = ["nginx"] + (["coalmine"] if coalmine_base is not None else [])
    loads: list[Load] = []
    copies: dict[str, int] = {}
    with ExitStack() as stack:
        stack.enter_context(upstream(tmp, arms, PRIMARY_DELAY_MS))
        stack.enter_context(upstream(tmp, [staging_port], PRIMARY_DELAY_MS * STAGING_SLOWDOWN))
        for name in names:
            for label, staging in cases:
                before = _staging_count(staging_port)
                port, proxy = _proxy(name, tmp, arms, staging, coalmine_base)
                with proxy as process:
                    target = _target(name, port, process)
                    loads.append(
                        open_loop(target, SHADOW_RATE, seconds, method="POST", label=label)
                    )
                copies[f"{name}: {label}"] = _staging_count(staging_port) - before
    return loads, copies


def _cpu_times() -> tuple[int, int]:
    fields = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def busy_cpu_share(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (other work on the machine skews results)."""
    busy, total = _cpu_times()
    time.sleep(seconds)
    busy_after, total_after = _cpu_times()
    return (busy_after - busy) / max(total_after - total, 1)


def run(seconds: float, shadow_seconds: float) -> Results:
    started = time.monotonic()
    busy = busy_cpu_share()
    coalmine_base = coalmine_command()
    with tempfile.TemporaryDirectory(prefix="proxy-speed-") as folder:
        tmp = Path(folder)
        tmp.chmod(0o755)
        results = main_paths(tmp, seconds, coalmine_base)
        results.shadow, results.staging_copies = shadow_runs(tmp, shadow_seconds, coalmine_base)
    results.wall_seconds = time.monotonic() - started
    results.busy_before = busy
    return results


# --- report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    goal: str
    measured: str
    met: bool | None


def _load_of(loads: Sequence[Load], path: str, rate: float, label: str = "") -> Load | None:
    for load in loads:
        if load.path == path and load.rate == rate and load.label == label:
            return load
    return None


def _by_path(items: Sequence[T], path: str) -> T | None:
    for item in items:
        if getattr(item, "path", None) == path:
            return item
    return None


def goals(results: Results) -> list[Goal]:
    """The goals for coalmine's proxy, with what was measured (None: not measured)."""
    if not results.coalmine:
        return [Goal(text, "coalmine proxy not available", None) for text in GOAL_TEXTS]
    direct = _load_of(results.latency, "direct", 500)
    ours = _load_of(results.latency, "coalmine", 500)
    assert direct is not None and ours is not None
    added50, added99 = ours.p(0.5) - direct.p(0.5), ours.p(0.99) - direct.p(0.99)
    nginx_rps = _by_path(results.throughput, "nginx")
    our_rps = _by_path(results.throughput, "coalmine")
    assert nginx_rps is not None and our_rps is not None
    share = our_rps.requests_per_second / nginx_rps.requests_per_second
    direct_sse, our_sse = _by_path(results.streams, "direct"), _by_path(results.streams, "coalmine")
    assert direct_sse is not None and our_sse is not None
    ttfb = percentile(our_sse.first_event_ms, 0.5) - percentile(direct_sse.first_event_ms, 0.5)
    memory = _by_path(results.memory, "coalmine")
    assert memory is not None
    base = _load_of(results.shadow, "coalmine", SHADOW_RATE, "no shadow")
    slow = _load_of(results.shadow, "coalmine", SHADOW_RATE, "staging 10x slower")
    down = _load_of(results.shadow, "coalmine", SHADOW_RATE, "staging down")
    assert base is not None and slow is not None and down is not None
    slow_share = slow.p(0.99) / base.p(0.99) - 1
    down_share = down.p(0.99) / base.p(0.99) - 1
    return [
        Goal(GOAL_TEXTS[0], f"+{added50:.2f} ms", added50 <= GOAL_ADDED_P50_MS),
        Goal(GOAL_TEXTS[1], f"+{added99:.2f} ms", added99 <= GOAL_ADDED_P99_MS),
        Goal(
            GOAL_TEXTS[2],
            f"{our_rps.requests_per_second:,.0f} / {nginx_rps.requests_per_second:,.0f} "
            f"req/s = {share:.0%}",
            share >= GOAL_THROUGHPUT_SHARE and our_rps.bad == 0,
        ),
        Goal(GOAL_TEXTS[3], f"{ttfb:+.2f} ms", ttfb <= GOAL_TTFB_MS and our_sse.incomplete == 0),
        Goal(
            GOAL_TEXTS[4],
            f"{memory.growth_mb:.1f} MB" + ("" if memory.complete else " (stream cut short)"),
            memory.growth_mb < GOAL_RSS_MB and memory.complete,
        ),
        Goal(
            GOAL_TEXTS[5],
            f"{slow_share:+.1%} ({slow.p(0.99):.2f} vs {base.p(0.99):.2f} ms)",
            slow_share <= GOAL_SHADOW_SHARE and slow.errors == 0,
        ),
        Goal(
            GOAL_TEXTS[6],
            f"{down_share:+.1%} ({down.p(0.99):.2f} vs {base.p(0.99):.2f} ms)",
            down_share <= GOAL_SHADOW_SHARE and down.errors == 0,
        ),
    ]


GOAL_TEXTS = (
    f"added latency at 500 req/s, p50 <= {GOAL_ADDED_P50_MS:.0f} ms",
    f"added latency at 500 req/s, p99 <= {GOAL_ADDED_P99_MS:.0f} ms",
    f"max throughput >= {GOAL_THROUGHPUT_SHARE:.0%} of nginx's",
    f"SSE time to first event within {GOAL_TTFB_MS:.0f} ms of direct (median)",
    f"RSS growth < {GOAL_RSS_MB:.0f} MB while streaming {BIG_MIB} MiB",
    f"primary p99 with 100% shadow to a 10x slower staging within "
    f"{GOAL_SHADOW_SHARE:.0%} of no shadow",
    f"primary p99 with 100% shadow to a staging that is down within "
    f"{GOAL_SHADOW_SHARE:.0%} of no shadow",
)


def _met(goal: Goal) -> str:
    return "–" if goal.met is None else ("pass" if goal.met else "miss")


def _processes(target: Target) -> str:
    if target.name == "nginx":
        return "1 worker (+ master)"
    return f"{target.processes} process" + ("es" if target.processes > 1 else "")


def _coalmine_processes(results: Results) -> str:
    for target in results.targets:
        if target.name == "coalmine":
            return _processes(target)
    return "not run"


def _versions() -> str:
    nginx_version = subprocess.run(
        ["nginx", "-v"], check=False, capture_output=True, text=True
    ).stderr
    return nginx_version.strip().split(":", 1)[-1].strip()


def latency_table(results: Results) -> list[str]:
    lines = [
        "| path | processes | req/s | requests | p50 ms | p99 ms | added p50 ms | "
        "added p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    procs = {target.name: _processes(target) for target in results.targets}
    for load in results.latency:
        direct = _load_of(results.latency, "direct", load.rate)
        assert direct is not None
        added = (
            ("", "")
            if load.path == "direct"
            else (
                f"{load.p(0.5) - direct.p(0.5):+.2f}",
                f"{load.p(0.99) - direct.p(0.99):+.2f}",
            )
        )
        lines.append(
            f"| {load.path} | {procs[load.path]} | {load.rate:.0f} | {len(load.latencies_ms):,} | "
            f"{load.p(0.5):.2f} | {load.p(0.99):.2f} | {added[0]} | {added[1]} | {load.errors} |"
        )
    return lines


def throughput_table(results: Results) -> list[str]:
    nginx_rps = _by_path(results.throughput, "nginx")
    lines = [
        "| path | req/s | requests | errors | mean latency | x nginx |",
        "|---|---|---|---|---|---|",
    ]
    for item in results.throughput:
        ratio = item.requests_per_second / nginx_rps.requests_per_second if nginx_rps else 0
        lines.append(
            f"| {item.path} | {item.requests_per_second:,.0f} | {item.requests:,} | {item.bad} | "
            f"{item.latency_avg} | {ratio:.2f} |"
        )
    return lines


def sse_table(results: Results) -> list[str]:
    direct = _by_path(results.streams, "direct")
    assert direct is not None
    lines = [
        "| path | streams | first event p50 ms | p99 ms | vs direct (p50) ms | "
        "whole stream p50 ms | incomplete |",
        "|---|---|---|---|---|---|---|",
    ]
    base = percentile(direct.first_event_ms, 0.5)
    for item in results.streams:
        median = percentile(item.first_event_ms, 0.5)
        lines.append(
            f"| {item.path} | {len(item.first_event_ms)} | {median:.2f} | "
            f"{percentile(item.first_event_ms, 0.99):.2f} | {median - base:+.2f} | "
            f"{percentile(item.whole_ms, 0.5):.1f} | {item.incomplete} |"
        )
    return lines


def memory_table(results: Results) -> list[str]:
    lines = [
        "| path | MiB received | seconds | RSS before MB | peak MB | after MB | growth MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in results.memory:
        lines.append(
            f"| {item.path} | {item.received / 1024 / 1024:.0f} of {item.mib} | "
            f"{item.seconds:.1f} | {item.before_mb:.1f} | "
            f"{item.peak_mb:.1f} | {item.after_mb:.1f} | {item.growth_mb:+.1f} |"
        )
    return lines


def shadow_table(results: Results) -> list[str]:
    lines = [
        "| proxy | shadow | requests | p50 ms | p99 ms | p99 vs no shadow | errors | "
        "copies staging got |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for load in results.shadow:
        base = _load_of(results.shadow, load.path, load.rate, "no shadow")
        assert base is not None
        change = "" if load is base else f"{load.p(0.99) / base.p(0.99) - 1:+.1%}"
        copies = results.staging_copies.get(f"{load.path}: {load.label}", 0)
        shown = "–" if load.label != "staging 10x slower" else f"{copies:,}"
        lines.append(
            f"| {load.path} | {load.label} | {len(load.latencies_ms):,} | {load.p(0.5):.2f} | "
            f"{load.p(0.99):.2f} | {change} | {load.errors} | {shown} |"
        )
    return lines


def markdown(command: str, results: Results, seconds: float, shadow_seconds: float) -> str:
    lags = [lag for load in results.latency if load.path == "direct" for lag in load.timer_lag_ms]
    missing = (
        ""
        if results.coalmine
        else " **The coalmine path is not measured: there is no `coalmine proxy` command.**"
    )
    lines = [
        "# Proxy speed",
        "",
        f"Command: `{command}` (wall time {results.wall_seconds:.0f} s)",
        "",
        "All on loopback, one machine: Python "
        f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"{_versions()}; {results.busy_before:.0%} of the CPU time was busy with "
        "other work in the second before the run. The upstream "
        "(`bench/proxy_upstream.py`: plain asyncio, one process, one thread) listens on "
        "two ports, one per arm; `direct` calls one of them. nginx runs "
        "`worker_processes 1` with `split_clients` on `x-user-id`, keep-alive upstream "
        "connections (`keepalive 64`, HTTP/1.1) and `proxy_buffering off`; coalmine runs "
        f"`coalmine proxy --no-spans` ({_coalmine_processes(results)}) with the same "
        "50/50 split on `x-user-id`, "
        f"pinned with `--weight {RELEASE}=50`. Each table below has its own freshly "
        f"started nginx and coalmine processes.{missing}",
        "",
        "## Added latency (open loop)",
        "",
        f"`GET /small` (a {len(SMALL)}-byte JSON answer) at a constant rate for "
        f"{seconds:.0f} s after a {WARMUP_S:.0f} s warm-up, user ids cycling over "
        f"{USERS}. wrk keeps a fixed number of requests in flight (closed loop): when an "
        "answer is late it sends less, which hides the very delays a p99 should show. The "
        "generator here is open loop instead: requests are due on a fixed timetable and "
        "sent over keep-alive connections (a new one when all are busy, up to "
        f"{POOL_LIMIT}), and latency counts from the time a request was due, so a request "
        "held up behind a slow one counts the wait; one that times out "
        f"({REQUEST_TIMEOUT_S:.0f} s) counts as an error and with its time so far. "
        "(wrk's Lua `delay()` can pace each connection, but a connection still waits "
        "for its answer before it sends again, "
        "and latency still counts from the actual send.) The generator runs on a "
        "`select()` event loop, whose timeouts are not rounded up to whole milliseconds "
        "as epoll's are: in the direct runs it woke "
        f"{percentile(lags, 0.5):.3f} ms after a request's due time at the median and "
        f"{percentile(lags, 0.99):.3f} ms at p99, a delay every path's figures share. "
        "Added latency is the path's percentile minus direct's at the same rate.",
        "",
        *latency_table(results),
        "",
        "## Maximum throughput",
        "",
        f"`wrk -t1 -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s`, `GET /small`, user ids cycling "
        f"over {USERS} (a Lua script). wrk, the proxy and the upstream share the "
        f"{os.cpu_count()} CPUs.",
        "",
        *throughput_table(results),
        "",
        "## SSE: time to the first event",
        "",
        f"{SSE_STREAMS} streams one after the other on one keep-alive connection, each "
        f"{SSE_EVENTS} OpenAI-style `data:` chunks {SSE_GAP_MS} ms apart and "
        "`data: [DONE]`; time from writing the request to the first body bytes with an "
        "event in them, and to the end of the stream.",
        "",
        *sse_table(results),
        "",
        "## Memory while streaming a large response",
        "",
        f"One `GET /big?mb={BIG_MIB}` ({BIG_MIB} MiB from the upstream in 64 KiB writes, as "
        f"fast as it can) read by a client at {READ_MIB_PER_S} MiB/s, so a proxy that "
        "buffered instead of applying back pressure would grow by most of the response. "
        "RSS is VmRSS from /proc summed over the proxy's processes, sampled every 20 ms.",
        "",
        *memory_table(results),
        "",
        "## Shadow traffic and primary latency",
        "",
        f"`POST /small` ({len(POST_BODY)}-byte JSON body) at {SHADOW_RATE} req/s for "
        f"{shadow_seconds:.0f} s after the warm-up. Here the primary upstream answers "
        f"after {PRIMARY_DELAY_MS:.0f} ms, like a fast model call, and staging after "
        f"{PRIMARY_DELAY_MS * STAGING_SLOWDOWN:.0f} ms ({STAGING_SLOWDOWN}x slower; "
        f"{SHADOW_RATE * PRIMARY_DELAY_MS * STAGING_SLOWDOWN / 1000:.0f} copies in flight); "
        "'staging down' is a closed port. Every request is mirrored (coalmine: "
        "`shadow: {percent: 100, methods: [GET, POST]}`; nginx: `mirror` with "
        "`mirror_request_body on`). 'copies staging got' includes the warm-up. nginx "
        "reads the next request on a keep-alive client connection only once the mirror "
        "subrequests of the previous one have finished, so with nginx a slow staging "
        "holds up primary requests that reuse a connection.",
        "",
        *shadow_table(results),
        "",
        "## Goals (coalmine)",
        "",
        "| goal | measured | result |",
        "|---|---|---|",
    ]
    lines += [f"| {goal.goal} | {goal.measured} | {_met(goal)} |" for goal in goals(results)]
    return "\n".join(lines)


def to_json(command: str, results: Results, seconds: float, shadow_seconds: float) -> Any:
    def load_row(load: Load) -> dict[str, Any]:
        return {
            "path": load.path,
            "shadow": load.label or None,
            "rate": load.rate,
            "seconds": load.seconds,
            "requests": len(load.latencies_ms),
            "errors": load.errors,
            "p50_ms": load.p(0.5),
            "p90_ms": load.p(0.9),
            "p99_ms": load.p(0.99),
            "max_ms": max(load.latencies_ms, default=float("nan")),
            "timer_lag_p50_ms": percentile(load.timer_lag_ms, 0.5),
            "timer_lag_p99_ms": percentile(load.timer_lag_ms, 0.99),
            "send_lag_p50_ms": percentile(load.send_lag_ms, 0.5),
            "send_lag_p99_ms": percentile(load.send_lag_ms, 0.99),
        }

    return {
        "command": command,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "nginx": _versions(),
        "wall_seconds": results.wall_seconds,
        "busy_cpu_share_before": results.busy_before,
        "coalmine_measured": results.coalmine,
        "seconds": seconds,
        "shadow_seconds": shadow_seconds,
        "warmup_seconds": WARMUP_S,
        "processes": {target.name: target.processes for target in results.targets},
        "latency": [load_row(load) for load in results.latency],
        "throughput": [asdict(item) for item in results.throughput],
        "sse": [
            {
                "path": item.path,
                "streams": len(item.first_event_ms),
                "incomplete": item.incomplete,
                "first_event_p50_ms": percentile(item.first_event_ms, 0.5),
                "first_event_p99_ms": percentile(item.first_event_ms, 0.99),
                "whole_p50_ms": percentile(item.whole_ms, 0.5),
            }
            for item in results.streams
        ],
        "memory": [
            {**asdict(item), "growth_mb": item.growth_mb, "complete": item.complete}
            for item in results.memory
        ],
        "shadow": [load_row(load) for load in results.shadow],
        "staging_copies": results.staging_copies,
        "goals": [asdict(goal) for goal in goals(results)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="per open-loop run")
    parser.add_argument("--shadow-seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    command = "python -m bench.proxy_speed " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    command = command.strip()
    for tool, found in (("nginx", nginx_binary()), ("wrk", "wrk")):
        if shutil.which(found) is None:
            parser.error(f"{tool} not found (scripts/bench-deps.sh installs it)")
    results = run(args.seconds, args.shadow_seconds)
    text = markdown(command, results, args.seconds, args.shadow_seconds)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy_speed.md").write_text(text + "\n", encoding="utf-8")
    data = to_json(command, results, args.seconds, args.shadow_seconds)
    (args.out / "proxy_speed.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
