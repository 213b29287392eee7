"""Mirrored copies to staging: bounded and fire-and-forget (``proxy.plan`` decides which
requests are in the sample).

A copy is sent only after the client's request body is complete, from a buffer of at most
``maxBodyBytes``; it runs as a task of its own on a client of its own (its own connection
pool), so a staging that is slow or down never holds a connection or a byte the primary
path needs. When ``maxInFlight`` copies are already out, the new copy is dropped and
counted, never queued. Its response is read and thrown away; nothing of it reaches the
client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import httpx

from coalmine.shared.conventions import (
    ARM_HEADER,
    PROMPT_LABEL_HEADER,
    RELEASE_HEADER,
    REQUEST_ID_HEADER,
    SAMPLED_HEADER,
    SHADOW_HEADER,
    SHADOW_OF_HEADER,
    TRACEPARENT_HEADER,
)
from coalmine.shared.routing_tables.table import ShadowRoute
from policies.domain import Arm
from proxy.headers import Headers, new_span_id, new_trace_id
from proxy.metrics import ProxyMetrics, ShadowOutcome
from proxy.outcome import Failure, RequestOutcome
from proxy.spans import SpanReporter

log = logging.getLogger("coalmine.proxy.shadow")


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    """One mirrored request, ready to send."""

    release: str
    route: ShadowRoute
    method: str
    path_and_query: str
    path: str
    headers: Headers
    """The client's headers as forwarded, without the arm headers of the primary."""
    body: bytes
    shadow_of: str
    """Trace id of the primary request."""
    sampled: bool
    """The primary is in the score sample: a pair is always sampled together."""
    request_id: str
    prompt_label: str | None
    timeout: dict[str, float]


class ShadowMirror:
    """Sends mirrored copies in the background within a bound on copies in flight."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        metrics: ProxyMetrics,
        spans: SpanReporter,
    ) -> None:
        self.transport = transport
        self.metrics = metrics
        self.spans = spans
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, copy: ShadowCopy) -> None:
        """Start one copy, or count it dropped when the bound is reached. Never raises."""
        if self.in_flight >= copy.route.max_in_flight:
            self.metrics.shadow_dropped(copy.release, ShadowOutcome.DROPPED_FULL)
            return
        self.in_flight += 1
        self.metrics.shadow_in_flight.inc()
        task = asyncio.get_running_loop().create_task(self._copy(copy))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1
        self.metrics.shadow_in_flight.dec()

    async def _copy(self, copy: ShadowCopy) -> None:
        release, route, method = copy.release, copy.route, copy.method
        path, request_id, prompt_label = copy.path, copy.request_id, copy.prompt_label
        shadow_of, sampled = copy.shadow_of, copy.sampled
        trace_id, span_id = new_trace_id(), new_span_id()
        copy_headers = list(copy.headers)
        copy_headers += [
            (RELEASE_HEADER.encode(), release.encode()),
            (ARM_HEADER.encode(), Arm.SHADOW.value.encode()),
            (SHADOW_HEADER.encode(), b"1"),
            (SHADOW_OF_HEADER.encode(), shadow_of.encode()),
            (SAMPLED_HEADER.encode(), b"1" if sampled else b"0"),
            (REQUEST_ID_HEADER.encode(), request_id.encode()),
            (TRACEPARENT_HEADER.encode(), f"00-{trace_id}-{span_id}-01".encode()),
        ]
        if prompt_label is not None:
            copy_headers.append((PROMPT_LABEL_HEADER.encode(), prompt_label.encode()))
        start_ns = time.time_ns()
        status = 0
        failure: Failure | None = None
        try:
            request = httpx.Request(
                method,
                route.upstream.rstrip("/") + copy.path_and_query,
                headers=copy_headers,
                content=copy.body,
                extensions={"timeout": copy.timeout},
            )
            response = await self.transport.handle_async_request(request)
            try:
                status = response.status_code
                async for _ in response.stream:  # type: ignore[union-attr]
                    pass
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            failure = Failure.TIMEOUT
        except httpx.ConnectError:
            failure = Failure.CONNECT
        except httpx.HTTPError:
            failure = Failure.UPSTREAM
        except asyncio.CancelledError:
            failure = Failure.UPSTREAM
            raise
        except Exception:  # a copy must never take anything else down with it
            log.exception("mirrored copy to %s failed", route.upstream)
            failure = Failure.UPSTREAM
        finally:
            outcome = RequestOutcome(
                release=release,
                arm=Arm.SHADOW,
                method=method,
                path=path,
                status=status,
                start_ns=start_ns,
                end_ns=time.time_ns(),
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=None,
                request_id=request_id,
                prompt_label=prompt_label,
                failure=failure,
                shadow_of=shadow_of,
                sampled=sampled,
            )
            self.metrics.observe_shadow(outcome)
            self.spans.record(outcome)

    async def aclose(self) -> None:
        """Cancel copies still in flight (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
