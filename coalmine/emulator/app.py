"""The emulator's FastAPI app: routes, auth, errors, rate limits and faults.

Requests pass, outermost first: fault injection (``faults.py``), the 5 MB body limit,
the rate limits of the chosen plan (``ratelimit.py``), then the routes, each of which
checks the keys itself through a dependency of ``auth.py``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from coalmine.emulator import (
    annotation_queues,
    dataset_runs,
    datasets,
    errors,
    experiment_spans,
    experiments,
    faults,
    judges,
    metrics,
    observations,
    otel,
    projects,
    prompts,
    reviews,
    score_config_checks,
    score_configs,
    scores,
)
from coalmine.emulator.faults import FaultInjector, FaultMiddleware, parse_fault
from coalmine.emulator.ratelimit import Clock, RateLimiter, RateLimitMiddleware
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store

VERSION = "4.16.0"
"""The Langfuse server version the emulator follows (its OpenAPI spec)."""


def create_app(
    settings: EmulatorSettings | None = None,
    store: Store | None = None,
    *,
    clock: Clock | None = None,
) -> FastAPI:
    """An emulator app. Its settings, store, rate limiter and faults are on ``app.state``.

    ``clock`` (monotonic seconds) drives the rate limit windows; tests pass a fake one.
    Raises ValueError for a fault spec in ``settings.faults`` that does not parse.
    """
    settings = settings or EmulatorSettings()
    owned = store is None
    store = store or Store(settings.db, max_bytes=settings.max_bytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            store.close()

    app = FastAPI(
        title="coalmine Langfuse emulator", docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.store = store
    app.state.rate_limiter = RateLimiter(settings.plan, clock or time.monotonic)
    app.state.faults = FaultInjector(
        tuple(parse_fault(spec) for spec in settings.faults), seed=settings.fault_seed
    )
    errors.install(app)

    @app.get("/api/public/health")
    def health() -> dict[str, str]:
        return {"status": "OK", "version": VERSION}

    # These wrap the score and OTLP routes of scores.py and otel.py (checks against
    # score configs, experiment attributes), so they come first: the first match wins.
    app.include_router(score_config_checks.router)
    app.include_router(experiment_spans.router)
    for module in (prompts, scores, otel, observations, metrics):
        app.include_router(module.router)
    for ladder in (datasets, dataset_runs, experiments, score_configs, annotation_queues):
        app.include_router(ladder.router)
    app.include_router(projects.router)
    app.include_router(reviews.router)
    app.include_router(judges.router)
    app.include_router(faults.admin_router)

    # add_middleware puts each new layer outside the ones before it.
    app.add_middleware(RateLimitMiddleware, limiter=app.state.rate_limiter, settings=settings)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(FaultMiddleware, injector=app.state.faults)
    return app


class BodyLimitMiddleware:
    """Answer 413 to a request body over ``limit`` bytes, as Next.js does for Langfuse
    (plain text ``Body exceeded 5mb limit``), before any route sees it."""

    DRAIN_MAX = 64 * 1024 * 1024
    """Read and drop at most this much of an oversized body, so the client can finish
    sending and read the answer; past it, the connection is closed."""

    def __init__(self, app: Any, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for key, value in scope["headers"] if key == b"content-length"), b"")
        size, chunks, more = 0, [], True
        if not declared.isdigit() or int(declared) <= self.limit:
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunk = message.get("body", b"")
                size += len(chunk)
                more = message.get("more_body", False)
                if size > self.limit:
                    break
                chunks.append(chunk)
        if size > self.limit or (declared.isdigit() and int(declared) > self.limit):
            await self._drain(receive, more)
            await self._too_large(send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                message: dict[str, Any] = await receive()
                return message
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _drain(self, receive: Any, more: bool) -> None:
        drained = 0
        while more and drained < self.DRAIN_MAX:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def _too_large(self, send: Any) -> None:
        megabytes = self.limit / (1024 * 1024)
        label = f"{megabytes:g}mb" if megabytes.is_integer() else f"{self.limit}b"
        body = f"Body exceeded {label} limit".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
