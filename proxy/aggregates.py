"""The proxy's own counts of every request it forwards, per release, arm and minute.

``record`` runs on the request path, on the event loop (one thread: no lock): it finds
the cell of the request's release, arm and arrival minute and adds to it; a cell that
exists costs no allocation. In the background the flusher writes the cells that changed
through the store (SQLite or a ConfigMap) in a thread, so the loop never waits on it. A
write replaces the stored totals of a cell, so a write that failed is simply made again
at the next flush with the totals by then; cells are kept for the retention, after which
one never written is dropped and counted. Shadow copies are not counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import re
import socket
import time
from collections.abc import Callable

from coalmine.shared.aggregates.model import (
    DEFAULT_RETENTION_SECONDS,
    MinuteCell,
    oldest_minute,
)
from coalmine.shared.aggregates.store import AggregateWriter
from policies.domain import Arm
from policies.latency_bins import sketch_bin
from proxy.metrics import ProxyMetrics
from proxy.outcome import Failure, RequestOutcome
from proxy.settings import ProxySettings

log = logging.getLogger("coalmine.proxy.aggregates")

_NS_PER_MINUTE = 60_000_000_000
_UPSTREAM_FAILURES = frozenset({Failure.CONNECT, Failure.TIMEOUT, Failure.UPSTREAM})
"""``RequestOutcome.is_error``'s failures, held once: that property builds its tuple of
enum members at each call, a third of ``record``'s time."""
_WORKER = re.compile(r"-worker-(\d+)$")
"""The name ``coalmine proxy --workers`` gives each worker process."""


def proxy_id(settings: ProxySettings) -> str:
    """Who writes the counts: the pod's name in cluster mode (``COALMINE_POD_NAME``,
    else ``HOSTNAME``), elsewhere the host and the process id; a worker of ``--workers``
    adds its number in cluster mode, where its pod is shared."""
    if not settings.cluster:
        return f"{socket.gethostname()}-{os.getpid()}"
    worker = _WORKER.search(multiprocessing.current_process().name)
    return settings.identity() + (f"-w{worker.group(1)}" if worker else "")


class _Counts:
    """The running totals of one cell; ``dirty``: changed since last written."""

    __slots__ = (
        "bins",
        "completion_tokens",
        "cost_n",
        "cost_sum",
        "cost_sumsq",
        "dirty",
        "errors",
        "prompt_tokens",
        "requests",
        "sampled",
        "usage",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.bins: dict[int, int] = {}
        self.dirty = True
        self.sampled = 0
        self.usage = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_n = 0
        self.cost_sum = 0.0
        self.cost_sumsq = 0.0

    def cell(self, release: str, arm: Arm, minute: int) -> MinuteCell:
        """The totals as the record of (release, arm, minute)."""
        return MinuteCell(
            release,
            arm,
            minute,
            self.requests,
            self.errors,
            dict(self.bins),
            self.sampled,
            self.usage,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_n,
            self.cost_sum,
            self.cost_sumsq,
        )


class AggregateRecorder:
    """Counts requests into minute cells and writes them through ``store`` every
    ``interval`` seconds (and once more when stopped)."""

    def __init__(
        self,
        store: AggregateWriter,
        metrics: ProxyMetrics,
        *,
        interval: float,
        retention_seconds: int = DEFAULT_RETENTION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.interval = interval
        self.retention_seconds = retention_seconds
        self.clock = clock
        self._cells: dict[str, dict[Arm, dict[int, _Counts]]] = {}
        """release → arm → minute → totals."""
        self._lock = asyncio.Lock()
        """One write at a time, in order: a later total never lands before an earlier."""
        self._task: asyncio.Task[None] | None = None

    def record(self, outcome: RequestOutcome) -> None:
        """Count one forwarded request (not a shadow copy)."""
        by_arm = self._cells.get(outcome.release)
        if by_arm is None:
            by_arm = self._cells[outcome.release] = {}
        by_minute = by_arm.get(outcome.arm)
        if by_minute is None:
            by_minute = by_arm[outcome.arm] = {}
        start_ns = outcome.start_ns
        minute = start_ns // _NS_PER_MINUTE * 60
        cell = by_minute.get(minute)
        if cell is None:
            cell = by_minute[minute] = _Counts()
        cell.requests += 1
        failure = outcome.failure
        if outcome.status >= 500 or (failure is not None and failure in _UPSTREAM_FAILURES):
            cell.errors += 1
        index = sketch_bin((outcome.end_ns - start_ns) / 1e6)
        bins = cell.bins
        bins[index] = bins.get(index, 0) + 1
        cell.dirty = True
        if outcome.sampled:
            cell.sampled += 1
        usage = outcome.usage
        if usage is not None:
            cell.usage += 1
            cell.prompt_tokens += usage.prompt_tokens
            cell.completion_tokens += usage.completion_tokens
            cost = usage.cost_usd
            if cost is not None:
                cell.cost_n += 1
                cell.cost_sum += cost
                cell.cost_sumsq += cost * cost

    def cells(self) -> list[MinuteCell]:
        """Every cell held now, as records."""
        return [
            counts.cell(release, arm, minute)
            for release, by_arm in self._cells.items()
            for arm, by_minute in by_arm.items()
            for minute, counts in by_minute.items()
        ]

    def _take(self, now: float) -> tuple[list[MinuteCell], list[_Counts]]:
        """The cells changed since last written, marked clean; cells past the retention
        are forgotten, and counted as dropped when they were never written."""
        oldest = oldest_minute(now, self.retention_seconds)
        batch: list[MinuteCell] = []
        taken: list[_Counts] = []
        dropped = 0
        for release, by_arm in self._cells.items():
            for arm, by_minute in by_arm.items():
                for minute in [minute for minute in by_minute if minute < oldest]:
                    dropped += by_minute.pop(minute).dirty
                for minute, counts in by_minute.items():
                    if counts.dirty:
                        counts.dirty = False
                        taken.append(counts)
                        batch.append(counts.cell(release, arm, minute))
        if dropped:
            log.warning("%d proxy count cells past the retention dropped unwritten", dropped)
            self.metrics.aggregate_cells_dropped.inc(dropped)
        return batch, taken

    async def refresh_once(self) -> None:
        """Write the cells that changed, off the event loop; a failed write leaves them
        to the next."""
        async with self._lock:
            now = self.clock()
            batch, taken = self._take(now)
            if not batch:
                return
            try:
                left_out = await asyncio.to_thread(self.store.write, batch, now)
            except Exception as error:  # the store is outside the process: try again later
                for counts in taken:
                    counts.dirty = True
                self.metrics.aggregate_writes.labels("failed").inc()
                log.warning("proxy counts not written (kept for the next try): %s", error)
                return
            self.metrics.aggregate_writes.labels("ok").inc()
            if left_out:
                self.metrics.aggregate_cells_dropped.inc(left_out)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # a write under way finishes even when the flusher is stopped meanwhile
            await asyncio.shield(asyncio.ensure_future(self.refresh_once()))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop the flusher and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.refresh_once()
        await asyncio.to_thread(self.store.close)
