"""Langfuse Cloud's rate limits, per bucket and plan, as ASGI middleware.

Langfuse counts requests per organisation and bucket in fixed windows
(``RateLimitService.ts``, rate-limiter-flexible on Redis): the first request after a
window ends opens the next one, every request in it consumes a point, and once the
points are gone the answer is 429 ``429 - rate limit exceeded`` (plain text) with
``Retry-After`` (seconds), ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (a JavaScript ``Date.toString()``). Only requests with valid keys
are counted: the real server checks the keys before the limit. Successful answers carry
no rate limit headers, as on Langfuse. Self-hosted Langfuse has no limits, and neither
has the emulator unless a plan is chosen.

The bucket of a request follows from its method and path alone, so routes are covered
without their code knowing about limits.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coalmine.emulator.auth import Access, verify
from coalmine.emulator.errors import AuthError
from coalmine.emulator.settings import EmulatorSettings, Plan

Clock = Callable[[], float]
"""Seconds, monotonic; injectable so tests move time instead of sleeping."""

INGESTION = "ingestion"
PUBLIC_API = "public-api"
PUBLIC_API_LEGACY = "public-api-legacy"
PUBLIC_API_METRICS = "public-api-metrics"
PUBLIC_API_V2_METRICS = "public-api-v2-metrics"
PROMPTS = "prompts"
DATASETS = "datasets"
ANNOTATION_QUEUES = "annotation-queues"

MINUTE, HOUR, DAY = 60, 3600, 86400

LIMITS: dict[Plan, dict[str, tuple[int, int] | None]] = {
    Plan.HOBBY: {
        INGESTION: (1_000, MINUTE),
        PUBLIC_API: (30, MINUTE),
        PUBLIC_API_LEGACY: (15, MINUTE),
        PUBLIC_API_V2_METRICS: (100, DAY),
        PUBLIC_API_METRICS: (100, DAY),
        PROMPTS: None,
        DATASETS: (100, MINUTE),
        ANNOTATION_QUEUES: (100, MINUTE),
    },
    Plan.CORE: {
        INGESTION: (4_000, MINUTE),
        PUBLIC_API: (100, MINUTE),
        PUBLIC_API_LEGACY: (30, MINUTE),
        PUBLIC_API_V2_METRICS: (100, HOUR),
        PUBLIC_API_METRICS: (2_000, DAY),
        PROMPTS: None,
        DATASETS: (200, MINUTE),
        ANNOTATION_QUEUES: (1_000, MINUTE),
    },
    Plan.PRO: {
        INGESTION: (20_000, MINUTE),
        PUBLIC_API: (1_000, MINUTE),
        PUBLIC_API_LEGACY: (100, MINUTE),
        PUBLIC_API_V2_METRICS: (500, HOUR),
        PUBLIC_API_METRICS: (2_000, DAY),
        PROMPTS: None,
        DATASETS: (1_000, MINUTE),
        ANNOTATION_QUEUES: (1_000, MINUTE),
    },
}
"""(points, window in seconds) per plan and bucket; None is unlimited. The published
limits of Langfuse Cloud; Core's code currently allows more (ingestion 20,000/min,
public-api 1,000/min, datasets 1,000/min) while customers move plans, which the emulator
does not copy. Annotation queues have a bucket of their own in the code only."""

_PREFIXES: tuple[tuple[str, str, str], ...] = (
    # (method or "*", path prefix, bucket); the first match wins.
    ("*", "/api/public/health", ""),
    ("*", "/api/public/ready", ""),
    ("POST", "/api/public/otel", INGESTION),
    ("POST", "/api/public/ingestion", INGESTION),
    ("PATCH", "/api/public/v2/prompts/", PUBLIC_API),
    ("*", "/api/public/v2/prompts", PROMPTS),
    ("GET", "/api/public/v2/metrics", PUBLIC_API_V2_METRICS),
    ("GET", "/api/public/metrics", PUBLIC_API_METRICS),
    ("GET", "/api/public/traces", PUBLIC_API_LEGACY),
    ("GET", "/api/public/observations", PUBLIC_API_LEGACY),
    ("GET", "/api/public/sessions", PUBLIC_API_LEGACY),
    ("*", "/api/public/v2/datasets", DATASETS),
    ("*", "/api/public/datasets", DATASETS),
    ("*", "/api/public/dataset-items", DATASETS),
    ("*", "/api/public/dataset-run-items", DATASETS),
    ("*", "/api/public/annotation-queues", ANNOTATION_QUEUES),
    ("*", "/api/public/", PUBLIC_API),
)


def bucket_of(method: str, path: str) -> str | None:
    """The rate limit bucket of a request; None for routes Langfuse never limits."""
    for want, prefix, bucket in _PREFIXES:
        if want in ("*", method) and path.startswith(prefix):
            return bucket or None
    return None


@dataclass
class Window:
    started: float
    used: int


@dataclass(frozen=True)
class Verdict:
    """The outcome of consuming one point."""

    limited: bool
    points: int
    remaining: int
    seconds_to_reset: float

    def headers(self, wall_clock: float) -> list[tuple[bytes, bytes]]:
        reset = datetime.fromtimestamp(wall_clock + self.seconds_to_reset, UTC)
        return [
            (b"retry-after", str(math.ceil(self.seconds_to_reset)).encode()),
            (b"x-ratelimit-limit", str(self.points).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", _js_date(reset).encode()),
        ]


def _js_date(moment: datetime) -> str:
    """``new Date(...).toString()`` on a server running in UTC."""
    return moment.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)")


class RateLimiter:
    """Fixed windows per bucket, for one organisation (the emulator has one)."""

    def __init__(self, plan: Plan | None, clock: Clock = time.monotonic) -> None:
        self.plan = plan
        self.clock = clock
        self._windows: dict[str, Window] = {}
        self._lock = threading.Lock()

    def limit(self, bucket: str) -> tuple[int, int] | None:
        if self.plan is None:
            return None
        return LIMITS[self.plan].get(bucket)

    def consume(self, bucket: str) -> Verdict | None:
        """Count one request; None when the bucket is unlimited."""
        limit = self.limit(bucket)
        if limit is None:
            return None
        points, seconds = limit
        now = self.clock()
        with self._lock:
            window = self._windows.get(bucket)
            if window is None or now >= window.started + seconds:
                window = self._windows[bucket] = Window(started=now, used=0)
            window.used += 1
            used = window.used
            left = window.started + seconds - now
        return Verdict(
            limited=used > points,
            points=points,
            remaining=max(points - used, 0),
            seconds_to_reset=left,
        )

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


class RateLimitMiddleware:
    """Answer 429 once a bucket's points are used up; pass everything else on."""

    def __init__(
        self,
        app: Any,
        *,
        limiter: RateLimiter,
        settings: EmulatorSettings,
        wall_clock: Clock = time.time,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.settings = settings
        self.wall_clock = wall_clock

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.limiter.plan is None:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        bucket = bucket_of(method, path)
        verdict = None
        if bucket is not None and self._counted(scope, method, path):
            verdict = self.limiter.consume(bucket)
        if verdict is None or not verdict.limited:
            await self.app(scope, receive, send)
            return
        body = b"429 - rate limit exceeded"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            *verdict.headers(self.wall_clock()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _counted(self, scope: dict[str, Any], method: str, path: str) -> bool:
        """Whether Langfuse would reach its limit check: valid keys that the route
        accepts (a Bearer key only creates scores)."""
        header = next(
            (value.decode("latin-1") for key, value in scope["headers"] if key == b"authorization"),
            None,
        )
        try:
            access = verify(header, self.settings)
        except AuthError:
            return False
        return access is Access.PROJECT or (method == "POST" and path == "/api/public/scores")
