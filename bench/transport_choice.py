"""The proxy's upstream transport: coalmine's ``PooledTransport`` (``proxy/transport.py``)
against the HTTP clients that could replace it, measured in the same run.

    python -m bench.transport_choice [--seconds 5] [--concurrency 1,32] [--repeats 2]
        [--contenders a,b] [--kinds a,b] [--out bench/out]

Contenders, each called the way the proxy would call it (response bodies read chunk by
chunk as they arrive, raw, no decoding):

- ``coalmine``: ``PooledTransport.handle_async_request``, as ``proxy/app.py`` calls it;
- ``httpx-transport``: ``httpx.AsyncHTTPTransport.handle_async_request``, the transport
  the proxy called before (httpx's pool: httpcore underneath);
- ``httpx-client``: ``httpx.AsyncClient.stream`` (the same pool behind httpx's client);
- ``httpcore``: ``httpcore.AsyncConnectionPool.stream`` directly;
- ``aiohttp``: ``aiohttp.ClientSession.request`` (no cookie jar, no decompression).

Every pool may keep as many connections open as there are tasks, and reuse them. The upstream is
``bench/proxy_upstream.py`` (plain asyncio, one thread) in a process of its own. Request
kinds: ``get`` (``GET /small``, a 311-byte JSON answer), ``post`` (``POST /small`` with a
4 KiB JSON body), ``stream`` (``GET /sse?events=100``: 100 SSE events and ``[DONE]``, 101
chunks of chunked transfer encoding). Each (concurrency, kind, contender) runs in a fresh
process on uvloop (as the proxy does): that many tasks send requests one after another
for ``--seconds`` after a second of warm-up. Reported: requests/s, the client process's CPU
time per request (``time.process_time``, all its threads), latency from the call to the
end of the body (p50, p99), and the upstream's CPU share; each cell is the run with the
most requests/s of ``--repeats`` (contenders in turn, so drift hits them alike).

Results: Markdown (stdout and ``<out>/transport_choice.md``, with the command and the
verdict) and ``<out>/transport_choice.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.machine import cpu_seconds, free_port
from bench.proxy_speed import percentile, upstream
from bench.proxy_upstream import DONE, EVENT, SMALL

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CONTENDERS = ("coalmine", "httpx-transport", "httpx-client", "httpcore", "aiohttp")
REFERENCE = "coalmine"
KINDS = ("get", "post", "stream")
WARMUP_S = 1.0
EVENTS = 100
POST_BODY = json.dumps({"messages": [{"role": "user", "content": "x" * 4060}]}).encode()
TIMEOUTS = {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}
HEADERS = {
    "x-user-id": "user-1",
    "x-coalmine-release": "bench",
    "x-coalmine-arm": "baseline",
    "x-coalmine-prompt-label": "production",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}
RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Kind:
    method: str
    path: str
    body: bytes
    expected_bytes: int


def _sse_bytes() -> int:
    return EVENTS * len(EVENT) + len(DONE)


KIND = {
    "get": Kind("GET", "/small", b"", len(SMALL)),
    "post": Kind("POST", "/small", POST_BODY, len(SMALL)),
    "stream": Kind("GET", f"/sse?events={EVENTS}&gap_ms=0", b"", _sse_bytes()),
}


class Client(Protocol):
    async def call(self, kind: Kind) -> int:
        """Send the request, read the body as it comes; the body's length."""
        ...

    async def aclose(self) -> None: ...


def _headers(kind: Kind) -> dict[str, str]:
    headers = dict(HEADERS)
    if kind.body:
        headers["content-type"] = "application/json"
    return headers


class TransportClient:
    """An httpx transport called directly, as the proxy calls its transport."""

    def __init__(self, transport: Any, base: str) -> None:
        self.transport = transport
        self.base = base

    async def call(self, kind: Kind) -> int:
        import httpx  # noqa: PLC0415

        request = httpx.Request(
            kind.method,
            self.base + kind.path,
            headers=_headers(kind),
            content=kind.body,
            extensions={"timeout": TIMEOUTS},
        )
        response = await self.transport.handle_async_request(request)
        size = 0
        try:
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}")
            async for chunk in response.stream:
                size += len(chunk)
        finally:
            await response.aclose()
        return size

    async def aclose(self) -> None:
        await self.transport.aclose()


class HttpxClient:
    def __init__(self, client: Any, base: str) -> None:
        self.client = client
        self.base = base

    async def call(self, kind: Kind) -> int:
        size = 0
        async with self.client.stream(
            kind.method, self.base + kind.path, headers=_headers(kind), content=kind.body
        ) as response:
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}")
            async for chunk in response.aiter_raw():
                size += len(chunk)
        return size

    async def aclose(self) -> None:
        await self.client.aclose()


class HttpcoreClient:
    def __init__(self, pool: Any, base: str) -> None:
        self.pool = pool
        self.base = base

    async def call(self, kind: Kind) -> int:
        size = 0
        headers = list(_headers(kind).items())
        async with self.pool.stream(
            kind.method,
            self.base + kind.path,
            headers=headers,
            content=kind.body,
            extensions={"timeout": TIMEOUTS},
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            async for chunk in response.aiter_stream():
                size += len(chunk)
        return size

    async def aclose(self) -> None:
        await self.pool.aclose()


class AiohttpClient:
    def __init__(self, session: Any, base: str) -> None:
        self.session = session
        self.base = base

    async def call(self, kind: Kind) -> int:
        size = 0
        async with self.session.request(
            kind.method,
            self.base + kind.path,
            headers=_headers(kind),
            data=kind.body or None,
            allow_redirects=False,
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")
            async for chunk in response.content.iter_any():
                size += len(chunk)
        return size

    async def aclose(self) -> None:
        await self.session.close()


BASELINE = "coalmine-baseline"
"""Another version of ``proxy/transport.py`` (``--baseline FILE``, e.g. the last commit's:
``git show HEAD:proxy/transport.py``), to see what a change to it costs."""


def _baseline_transport(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("transport_baseline", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--baseline: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PooledTransport(max_idle_per_host=512, idle_timeout=30.0)


def make_client(name: str, port: int, concurrency: int, baseline: Path | None = None) -> Client:
    """The contender ``name`` with a pool of ``concurrency`` reusable connections."""
    base = f"http://{HOST}:{port}"
    if name == "coalmine":
        from proxy.server import upstream_transport  # noqa: PLC0415

        return TransportClient(upstream_transport(), base)
    if name == BASELINE and baseline is not None:
        return TransportClient(_baseline_transport(baseline), base)
    import httpx  # noqa: PLC0415

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if name == "httpx-transport":
        return TransportClient(httpx.AsyncHTTPTransport(limits=limits), base)
    if name == "httpx-client":
        timeout = httpx.Timeout(5.0, read=30.0, write=30.0, pool=30.0)
        return HttpxClient(httpx.AsyncClient(limits=limits, timeout=timeout), base)
    if name == "httpcore":
        import httpcore  # noqa: PLC0415

        pool = httpcore.AsyncConnectionPool(
            max_connections=concurrency, max_keepalive_connections=concurrency
        )
        return HttpcoreClient(pool, base)
    if name == "aiohttp":
        import aiohttp  # noqa: PLC0415

        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # a proxy adds no headers of its own
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(sock_connect=5.0, sock_read=30.0),
        )
        return AiohttpClient(session, base)
    raise ValueError(f"unknown contender {name!r}")


# --- one run, in a process of its own ----------------------------------------------------


@dataclass
class RunResult:
    contender: str
    kind: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    cpu_s: float
    latencies_ms: list[float]
    upstream_cpu_s: float = 0.0

    @property
    def per_second(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")


async def _drive(client: Client, kind: Kind, concurrency: int, until: float) -> RunResult:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    done = 0

    async def worker() -> None:
        nonlocal errors, done
        while loop.time() < until:
            started = time.perf_counter()
            try:
                size = await client.call(kind)
            except Exception:  # every failure is counted, none stops the run
                errors += 1
                continue
            if size != kind.expected_bytes:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return RunResult("", "", concurrency, done, errors, 0.0, 0.0, latencies)


async def _one(
    name: str, kind_name: str, port: int, concurrency: int, seconds: float, baseline: Path | None
) -> RunResult:
    kind = KIND[kind_name]
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        client = make_client(name, port, concurrency, baseline)
        stack.push_async_callback(client.aclose)
        await _drive(client, kind, concurrency, loop.time() + WARMUP_S)
        cpu, wall = time.process_time(), time.perf_counter()
        result = await _drive(client, kind, concurrency, loop.time() + seconds)
        result.cpu_s = time.process_time() - cpu
        result.wall_s = time.perf_counter() - wall
    result.contender, result.kind = name, kind_name
    return result


def run_one(
    name: str, kind: str, port: int, concurrency: int, seconds: float, baseline: Path | None
) -> RunResult:
    import uvloop  # noqa: PLC0415

    return uvloop.run(_one(name, kind, port, concurrency, seconds, baseline))


def _spawn(
    name: str, kind: str, concurrency: int, port: int, upstream_pid: int, args: argparse.Namespace
) -> RunResult:
    command = [sys.executable, "-m", "bench.transport_choice", "--one", name, "--kind", kind]
    command += ["--port", str(port), "--concurrency", str(concurrency)]
    command += ["--seconds", str(args.seconds)]
    if args.baseline is not None:
        command += ["--baseline", str(args.baseline.resolve())]
    before = cpu_seconds(upstream_pid)
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    result = RunResult(**data)
    # the upstream's CPU over the whole child (warm-up included), per measured request
    result.upstream_cpu_s = cpu_seconds(upstream_pid) - before
    return result


# --- the run and the report -------------------------------------------------------------


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Report:
    command: str
    results: list[RunResult]
    load_before: str
    load_after: str
    wall_s: float
    versions: dict[str, str]


def versions() -> dict[str, str]:
    from importlib.metadata import version  # noqa: PLC0415

    return {
        name: version(name)
        for name in ("httpx", "httpcore", "h11", "aiohttp", "httptools", "uvloop")
    }


def best(
    results: Sequence[RunResult], contender: str, kind: str, concurrency: int
) -> RunResult | None:
    runs = [
        r
        for r in results
        if r.contender == contender and r.kind == kind and r.concurrency == concurrency
    ]
    return max(runs, key=lambda r: r.per_second, default=None)


def _cases(report: Report, kinds: Sequence[str]) -> list[tuple[int, str]]:
    levels = sorted({r.concurrency for r in report.results})
    return [(level, kind) for level in levels for kind in kinds]


def table(report: Report, contenders: Sequence[str], kinds: Sequence[str]) -> list[str]:
    lines = [
        "| tasks | kind | contender | req/s | x coalmine | CPU µs/req | x coalmine | p50 ms "
        "| p99 ms | errors | upstream CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, kind in _cases(report, kinds):
        reference = best(report.results, REFERENCE, kind, level)
        for contender in contenders:
            run = best(report.results, contender, kind, level)
            if run is None:
                continue
            rps_ratio = run.per_second / reference.per_second if reference else float("nan")
            cpu_ratio = run.cpu_us / reference.cpu_us if reference else float("nan")
            upstream_share = run.upstream_cpu_s / (run.wall_s + WARMUP_S)
            lines.append(
                f"| {level} | {kind} | {contender} | {run.per_second:,.0f} | {rps_ratio:.2f} | "
                f"{run.cpu_us:,.0f} | {cpu_ratio:.2f} | "
                f"{percentile(run.latencies_ms, 0.5):.2f} | "
                f"{percentile(run.latencies_ms, 0.99):.2f} | {run.errors} | "
                f"{upstream_share:.0%} |"
            )
    return lines


SAME_WITHIN = 1.10
"""The run-to-run spread of CPU a request on this machine: closer than this is a tie."""


def cpu_ratios(
    report: Report, contenders: Sequence[str], kinds: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each library's CPU a request over coalmine's, by case (``kind xTASKS``)."""
    ratios: dict[str, dict[str, float]] = {}
    for level, kind in _cases(report, kinds):
        ours = best(report.results, REFERENCE, kind, level)
        if ours is None:
            continue
        for contender in contenders:
            run = best(report.results, contender, kind, level)
            if contender != REFERENCE and run is not None:
                ratios.setdefault(contender, {})[f"{kind} x{level}"] = run.cpu_us / ours.cpu_us
    return ratios


def _httpx_note(report: Report, ratios: dict[str, dict[str, float]]) -> str:
    cases = ratios.get("httpx-transport")
    if not cases:
        return ""
    levels = sorted({r.concurrency for r in report.results})
    spread = ", ".join(
        f"{cases[f'get x{level}']:.1f}x with {level} task(s)"
        for level in levels
        if f"get x{level}" in cases
    )
    top = levels[-1]
    before = best(report.results, "httpx-transport", "get", top)
    after = best(report.results, REFERENCE, "get", top)
    claim = ""
    if before is not None and after is not None:
        claim = (
            f" The commit that brought the transport in claimed 450 -> 7,100 requests/s; here "
            f"{before.per_second:,.0f} -> {after.per_second:,.0f} (`get`, {top} tasks)."
        )
    return (
        f" httpx's pool, which the proxy used before, costs on `get` {spread} coalmine's CPU "
        "a request: on each request httpcore's pool takes an anyio lock and asks the socket "
        "of every pooled connection whether it has become readable (encode/httpx#3215), so "
        f"its cost grows with the connections it holds.{claim}"
    )


def verdict(report: Report, contenders: Sequence[str], kinds: Sequence[str]) -> str:
    """Which transport the proxy should use, by the rule the text states."""
    ratios = cpu_ratios(report, contenders, kinds)
    versions = ratios.pop(BASELINE, None)
    if not ratios:
        return "Not enough runs for a verdict."
    worst = {name: max(cases.items(), key=lambda item: item[1]) for name, cases in ratios.items()}
    rule = (
        "The rule: the proxy is CPU-bound on one event loop (see the capacity figures), so "
        "CPU a request is its capacity. A library replaces the hand-written transport if its "
        f"CPU a request is at most {SAME_WITHIN:.2f}x coalmine's in every case (closer than "
        "the run-to-run spread is a tie, and at a tie 800 lines of HTTP/1.1 buy nothing); "
        "otherwise coalmine's stays. Each library's worst case: "
        + ", ".join(f"{name} {ratio:.2f}x ({case})" for name, (case, ratio) in worst.items())
        + "."
    )
    fit = [name for name, (_, ratio) in worst.items() if ratio <= SAME_WITHIN]
    if fit:
        choice = min(fit, key=lambda name: worst[name][1])
        head = f"**Replace coalmine's transport with {choice}.** "
        tail = (
            " Replacing it means an adapter under the proxy's httpx-shaped calls (requests, "
            "responses and the error kinds that become 502 and 504) that keeps what the proxy "
            "promises upstreams: no header of its own, no redirect followed, no cookie kept, "
            "bodies streamed both ways with back pressure, and per-phase timeouts (aiohttp "
            "has no write timeout); `tests/proxy/test_transport.py` is the bar it must pass."
        )
    else:
        name = min(worst, key=lambda key: worst[key][1])
        case, ratio = worst[name]
        head = "**Keep coalmine's transport.** "
        tail = (
            f" The closest library, {name}, costs {ratio:.2f}x its CPU a request in its worst "
            f"case ({case}): that much less capacity for every proxy process."
        )
    return head + rule + tail + _httpx_note(report, ratios) + _baseline_note(versions)


def _baseline_note(cases: dict[str, float] | None) -> str:
    if not cases:
        return ""
    spread = ", ".join(f"{case} {1 / ratio:.2f}x" for case, ratio in cases.items())
    return (
        f" The transport as it is now costs, against the version run as `{BASELINE}`, "
        f"this much CPU a request: {spread}."
    )


def markdown(report: Report, contenders: Sequence[str], kinds: Sequence[str]) -> str:
    levels = " or ".join(str(level) for level in sorted({r.concurrency for r in report.results}))
    seconds = report.results[0].wall_s if report.results else 0.0
    lines = [
        "# Upstream transport: coalmine's PooledTransport against httpx, httpcore, aiohttp",
        "",
        f"Command: `{report.command}` (wall time {report.wall_s:.0f} s)",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} "
        f"CPU(s); {', '.join(f'{k} {v}' for k, v in report.versions.items())}. Load "
        f"average (1, 5, 15 min) before: {report.load_before}, after: {report.load_after}. "
        "The upstream is `bench/proxy_upstream.py` in a process of its own; each cell is a "
        f"fresh client process on uvloop with {levels} tasks (`tasks`) sending one request "
        f"after another for about {seconds:.1f} s after a 1 s warm-up, every pool allowed "
        "as many keep-alive connections as there are tasks. `coalmine` and "
        "`httpx-transport` are given an `httpx.Request` and return an `httpx.Response`, as "
        "the proxy calls its transport. `get`: `GET /small` "
        f"({len(SMALL)}-byte answer); `post`: `POST /small` with a "
        f"{len(POST_BODY):,}-byte JSON body; "
        f"`stream`: `GET /sse?events={EVENTS}`, {EVENTS} SSE events and `[DONE]` in "
        f"{EVENTS + 1} chunks ({_sse_bytes():,} bytes), read chunk by chunk. CPU µs/req: "
        "the client process's CPU time (all threads) over the measured requests. "
        "Latency: from the call to the last byte of the body. Upstream CPU: the upstream "
        "process's CPU time over the run's wall time (near 100% means the upstream, not "
        "the client, set the pace). Ratios are against coalmine's transport measured in "
        "the same run."
        + (
            f" `{BASELINE}` is another version of `proxy/transport.py` (`--baseline`), "
            "run to see what a change to it costs."
            if BASELINE in contenders
            else ""
        ),
        "",
        *table(report, contenders, kinds),
        "",
        "## Verdict",
        "",
        verdict(report, contenders, kinds),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, command: str) -> Report:
    contenders = args.contenders.split(",")
    kinds = args.kinds.split(",")
    levels = [int(level) for level in args.concurrency.split(",")]
    started = time.monotonic()
    load_before = load_average()
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="transport-choice-") as folder:
        port = free_port()
        with upstream(Path(folder), [port]) as process:
            for _ in range(args.repeats):
                for level, kind, contender in itertools.product(levels, kinds, contenders):
                    result = _spawn(contender, kind, level, port, process.pid, args)
                    results.append(result)
                    print(
                        f"x{level:<3} {kind:7} {contender:16} {result.per_second:8,.0f} req/s "
                        f"{result.cpu_us:6,.0f} µs CPU/req errors {result.errors}",
                        file=sys.stderr,
                    )
    return Report(
        command, results, load_before, load_average(), time.monotonic() - started, versions()
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,32", help="tasks, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument(
        "--baseline", type=Path, help=f"another proxy/transport.py, run as {BASELINE}"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(
            args.one, args.kind, args.port, int(args.concurrency), args.seconds, args.baseline
        )
        print(json.dumps(asdict(result)))
        return 0
    if args.baseline is not None and BASELINE not in args.contenders:
        args.contenders += f",{BASELINE}"
    for name in args.contenders.split(","):
        if name not in CONTENDERS and not (name == BASELINE and args.baseline is not None):
            parser.error(f"--contenders: {name!r} is not one of {', '.join(CONTENDERS)}")
    for name in args.kinds.split(","):
        if name not in KINDS:
            parser.error(f"--kinds: {name!r} is not one of {', '.join(KINDS)}")
    command = "python -m bench.transport_choice " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    report = run(args, command.strip())
    text = markdown(report, args.contenders.split(","), args.kinds.split(","))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transport_choice.md").write_text(text + "\n", encoding="utf-8")
    data = {
        "command": report.command,
        "load_before": report.load_before,
        "load_after": report.load_after,
        "wall_seconds": report.wall_s,
        "versions": report.versions,
        "runs": [
            {
                **{k: v for k, v in asdict(r).items() if k != "latencies_ms"},
                "per_second": r.per_second,
                "cpu_us_per_request": r.cpu_us,
                "p50_ms": percentile(r.latencies_ms, 0.5),
                "p99_ms": percentile(r.latencies_ms, 0.99),
            }
            for r in report.results
        ],
    }
    (args.out / "transport_choice.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
