"""``coalmine proxy --workers N``: N proxy processes that share the listening port.

Each worker is a whole proxy (``build_app`` behind uvicorn) in a process of its own,
started with multiprocessing's ``spawn``. Each binds the ``--listen`` address with
``SO_REUSEPORT`` and the kernel hands every new connection to one of them, chosen by a
hash of the connection's addresses: a client that keeps few connections open may reach
only some of the workers. Before starting them the supervisor binds the address once
without ``SO_REUSEPORT``, so that a port already served (even by another coalmine) is an
error instead of a share of its traffic.

Each worker follows the policy files and the routing tables itself (its own poll or
ConfigMap watch), reports its own request spans (a queue and a connection to Langfuse of
its own) and bounds its own shadow copies, so the bounds of one process hold per worker.

Metrics: each worker serves its registry on a loopback port of its own; the supervisor's
metrics endpoint reads them all at scrape time and exports one sum (``merge``), plus a
few series per worker. A worker that cannot be read is exported as it was last read.

A worker that ends stops the proxy: the supervisor stops the others and exits 1, and the
process manager (Kubernetes) starts it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from policies.model import Policy
from policies.policy_files import PolicyFiles
from proxy.errors import WorkerError
from proxy.routes import PolicyFeed
from proxy.server import build_app, serve, split_address
from proxy.settings import ProxySettings

log = logging.getLogger("coalmine.proxy.workers")

MAX_WORKERS = 64
START_SECONDS = 60.0
"""How long the workers have to load their policies and bind the port."""
SCRAPE_SECONDS = 2.0
"""How long the supervisor waits for one worker's metrics at scrape time."""
STOP_MARGIN_SECONDS = 5.0
"""After SIGTERM, how much longer than the graceful period a worker gets before SIGKILL."""

LEAST_OF_WORKERS = frozenset(
    {
        "coalmine_build_info",
        "coalmine_proxy_canary_weight_ratio",
        "coalmine_proxy_routing_table_version",
        "coalmine_proxy_routed_releases",
    }
)
"""Gauges of the state a worker applies: exported as the least over the workers (the one
that lags shows), the way the dashboard takes the least over replicas; and the build
info, 1 in every worker. Every other series is a count or an amount and is summed."""

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker is started with (sent to it pickled)."""

    settings: ProxySettings
    policies: tuple[Policy, ...]
    policy_paths: tuple[Path, ...]
    pins: dict[str, float]
    log_level: str


@dataclass(frozen=True)
class _Ready:
    pid: int
    metrics_port: int


@dataclass(frozen=True)
class _Failed:
    reason: str


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening; OSError when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def check_port_free(host: str, port: int) -> None:
    """OSError when something already listens on ``host:port``, with or without
    ``SO_REUSEPORT``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies, so that no worker outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(1)


def _worker_main(index: int, spec: WorkerSpec, channel: Connection, parent: int) -> None:
    """One worker: build the proxy, say where its metrics are, serve until SIGTERM."""
    _die_with_parent(parent)
    # its own process group: a terminal's Ctrl-C reaches the supervisor, which stops it
    os.setpgrp()
    logging.basicConfig(
        level=spec.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
    )
    settings = spec.settings.model_copy(update={"metrics_listen": None})
    try:
        watched = PolicyFiles(list(spec.policy_paths))
        app = build_app(
            settings,
            spec.policies,
            spec.pins,
            policy_feed=PolicyFeed(watched.reload, watched.kept_out),
        )
        metrics_server, _ = start_http_server(0, "127.0.0.1", registry=app.metrics.registry)
        host, port = split_address(settings.listen, "--listen")
        sock = listening_socket(host, port, reuse_port=True)
    except (ValueError, OSError) as error:
        channel.send(_Failed(str(error)))
        raise SystemExit(2) from None
    channel.send(_Ready(os.getpid(), metrics_server.server_port))
    channel.close()
    serve(app, settings, sockets=[sock])


@dataclass
class Worker:
    """One worker process as the supervisor sees it."""

    index: int
    process: BaseProcess
    channel: Connection
    pid: int = 0
    metrics_port: int = 0
    families: list[Metric] = field(default_factory=list)
    """Its metrics as last read."""
    readable: bool = False
    """Whether the last scrape of its metrics succeeded."""


class WorkerPool:
    """Starts, watches and stops the workers; reads their metrics."""

    def __init__(self, spec: WorkerSpec, count: int) -> None:
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"--workers: {count} is not from 1 to {MAX_WORKERS}")
        self.spec = spec
        self.count = count
        self.workers: list[Worker] = []

    def start(self, within: float = START_SECONDS) -> None:
        """Start every worker and wait until each serves; WorkerError (the others
        stopped) when one fails, OSError when the port is taken."""
        host, port = split_address(self.spec.settings.listen, "--listen")
        if port == 0:
            raise ValueError("--listen: workers share one port: give it, not 0")
        try:
            check_port_free(host, port)
        except OSError as error:
            raise OSError(f"--listen: {host}:{port}: {error.strerror or error}") from None
        context = multiprocessing.get_context("spawn")
        for index in range(self.count):
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main,
                args=(index, self.spec, sending, os.getpid()),
                name=f"coalmine-proxy-worker-{index}",
            )
            process.start()
            sending.close()
            self.workers.append(Worker(index, process, receiving))
        try:
            self._wait_ready(time.monotonic() + within)
        except BaseException:
            self.stop(0.0)
            raise

    def _wait_ready(self, deadline: float) -> None:
        waiting = {worker.channel: worker for worker in self.workers}
        while waiting:
            ready = wait(list(waiting), max(0.0, deadline - time.monotonic()))
            if not ready:
                raise WorkerError(f"{len(waiting)} proxy worker(s) did not start within time")
            for channel in ready:
                worker = waiting.pop(channel)  # type: ignore[call-overload]
                try:
                    message = worker.channel.recv()
                except EOFError:
                    message = _Failed(f"exited with {worker.process.exitcode} while starting")
                worker.channel.close()
                if isinstance(message, _Failed):
                    raise WorkerError(f"proxy worker {worker.index}: {message.reason}")
                worker.pid, worker.metrics_port = message.pid, message.metrics_port

    def first_ended(self, timeout: float | None) -> Worker | None:
        """The first worker found ended, waiting up to ``timeout`` seconds for one."""
        sentinels = {worker.process.sentinel: worker for worker in self.workers}
        ended = wait(list(sentinels), timeout)
        return sentinels[ended[0]] if ended else None  # type: ignore[index]

    def alive(self) -> int:
        return sum(worker.process.is_alive() for worker in self.workers)

    def stop(self, grace: float) -> None:
        """SIGTERM to every worker; SIGKILL to those still running ``grace`` seconds on."""
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + grace
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("proxy worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                worker.process.join()

    def scrape(self, timeout: float = SCRAPE_SECONDS) -> None:
        """Read every worker's metrics at once; one that cannot be read within ``timeout``
        keeps its last ones."""
        with ThreadPoolExecutor(max_workers=min(len(self.workers), 16) or 1) as pool:
            list(pool.map(lambda worker: _scrape(worker, timeout), self.workers))


def _scrape(worker: Worker, timeout: float) -> None:
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read().decode("utf-8")
        worker.families = list(text_string_to_metric_families(text))
        worker.readable = True
    except (OSError, ValueError):
        worker.readable = False


def merge(scrapes: Iterable[Sequence[Metric]]) -> list[Metric]:
    """The workers' metric families as one: each series summed over the workers, or the
    least of them for the gauges in ``LEAST_OF_WORKERS``."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for scrape in scrapes:
        for family in scrape:
            if family.name not in families:
                families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            table = values.setdefault(family.name, {})
            least = family.name in LEAST_OF_WORKERS
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = table.get(key)
                if seen is None:
                    table[key] = sample.value
                else:
                    table[key] = min(seen, sample.value) if least else seen + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


def _requests(families: Sequence[Metric]) -> float:
    return sum(
        sample.value
        for family in families
        if family.name == "coalmine_proxy_requests"
        for sample in family.samples
        if sample.name == "coalmine_proxy_requests_total"
    )


class WorkerMetrics(Collector):
    """The metrics of every worker, read at scrape time and merged."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self.pool.scrape()
            workers = list(self.pool.workers)
        yield from merge(worker.families for worker in workers)
        running = GaugeMetricFamily("coalmine_proxy_workers", "Proxy worker processes running now.")
        running.add_metric([], self.pool.alive())
        yield running
        readable = GaugeMetricFamily(
            "coalmine_proxy_worker_up",
            "Whether the worker's metrics could be read at this scrape (0: its last ones are "
            "exported).",
            labels=["worker"],
        )
        requests = CounterMetricFamily(
            "coalmine_proxy_worker_requests",
            "Requests answered, by worker (the sum over workers is coalmine_proxy_requests).",
            labels=["worker"],
        )
        info = GaugeMetricFamily(
            "coalmine_proxy_worker_info", "The process id of each worker.", labels=["worker", "pid"]
        )
        for worker in workers:
            index = str(worker.index)
            readable.add_metric([index], float(worker.readable))
            requests.add_metric([index], _requests(worker.families))
            info.add_metric([index, str(worker.pid)], 1.0)
        yield from (readable, requests, info)


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def run_workers(spec: WorkerSpec, count: int) -> int:
    """Serve with ``count`` workers until SIGTERM or SIGINT (0) or until a worker ends (1).
    WorkerError or OSError when they cannot start."""
    stopping = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    pool = WorkerPool(spec, count)
    grace = spec.settings.graceful_shutdown_seconds + STOP_MARGIN_SECONDS
    try:
        pool.start()
        metrics_listen = spec.settings.metrics_listen
        if metrics_listen is not None:
            registry = CollectorRegistry()
            registry.register(WorkerMetrics(pool))
            host, port = split_address(metrics_listen, "--metrics-listen")
            try:
                start_http_server(port, host, registry=registry)
            except OSError as error:
                reason = error.strerror or error
                raise OSError(f"--metrics-listen: {metrics_listen}: {reason}") from None
        log.info(
            "%d proxy workers on http://%s (pids %s)",
            count,
            spec.settings.listen,
            ", ".join(str(worker.pid) for worker in pool.workers),
        )
        while not stopping.is_set():
            ended = pool.first_ended(0.25)
            if ended is not None and not stopping.is_set():
                ended.process.join(1.0)
                log.error(
                    "proxy worker %d (pid %d) %s: stopping the proxy",
                    ended.index,
                    ended.pid,
                    _how_it_ended(ended.process.exitcode),
                )
                return 1
        return 0
    finally:
        pool.stop(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
