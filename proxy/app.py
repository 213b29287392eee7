"""The proxy's ASGI application: one request in, one arm chosen, one upstream call out.

The hot path is a plain ASGI callable (no routing framework in between): it reads the
headers once, picks the release by path and the arm by stickiness key, streams the body
to the upstream and the response back as it comes, and records the outcome for metrics
and for Langfuse without waiting on either.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from coalmine.shared.conventions import (
    ADMIN_TOKEN_HEADER,
    ARM_HEADER,
    FORCE_ARM_HEADER,
    PROMPT_LABEL_HEADER,
    RELEASE_HEADER,
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
)
from policies.domain import Arm
from proxy.assign import arm_at_random, arm_for_key
from proxy.headers import (
    Headers,
    cookie_value,
    request_headers_for_upstream,
    request_id,
    response_headers_for_client,
    sticky_cookie,
    trace_context,
)
from proxy.metrics import ProxyMetrics, ShadowOutcome
from proxy.outcome import Failure, RequestOutcome
from proxy.routes import Release, Releases, RoutingRefresher
from proxy.shadow import ShadowCopy, ShadowMirror, wants_copy
from proxy.spans import SpanReporter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("coalmine.proxy")

SMALL_BODY_BYTES = 64 * 1024
"""A request body of known length up to this size is read whole before it is sent on
(one write upstream instead of a chunk stream); larger ones stream."""

_FORCE = FORCE_ARM_HEADER.encode()
_TOKEN = ADMIN_TOKEN_HEADER.encode()
_TRACEPARENT = TRACEPARENT_HEADER.encode()
_REQUEST_ID = REQUEST_ID_HEADER.encode()
_RELEASE = RELEASE_HEADER.encode()
_ARM = ARM_HEADER.encode()
_LABEL = PROMPT_LABEL_HEADER.encode()
_FORCEABLE = {Arm.BASELINE.value: Arm.BASELINE, Arm.CANARY.value: Arm.CANARY}


class ClientGoneError(Exception):
    """The client disconnected while the proxy was still reading its request."""


class BodyTooLargeError(Exception):
    """A streamed request body went past the release's limit."""


@dataclass(slots=True)
class _Incoming:
    """The request headers the proxy looks at, gathered in one pass."""

    sticky: str | None = None
    cookie: str | None = None
    force: str | None = None
    token: str | None = None
    traceparent: str | None = None
    request_id: str | None = None
    content_length: int | None = None
    bad_length: bool = False
    chunked: bool = False
    forwarded_for: str | None = None
    forwarded_proto: str | None = None
    host: str | None = None
    size: int = 0
    extra: Headers = field(default_factory=list)


def _gather(headers: Headers, sticky_header: bytes | None) -> _Incoming:
    seen = _Incoming()
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == sticky_header:
            seen.sticky = value.decode("latin-1")
        elif name == b"cookie":
            text = value.decode("latin-1")
            seen.cookie = text if seen.cookie is None else f"{seen.cookie}; {text}"
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                seen.bad_length = True
            else:
                if length < 0 or (seen.content_length not in (None, length)):
                    seen.bad_length = True
                seen.content_length = length
        elif name == b"transfer-encoding":
            seen.chunked = True
        elif name == _TRACEPARENT:
            seen.traceparent = value.decode("latin-1")
        elif name == _REQUEST_ID:
            seen.request_id = value.decode("latin-1")
        elif name == _FORCE:
            seen.force = value.decode("latin-1").strip().lower()
        elif name == _TOKEN:
            seen.token = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            seen.forwarded_for = value.decode("latin-1")
        elif name == b"x-forwarded-proto":
            seen.forwarded_proto = value.decode("latin-1")
        elif name == b"host":
            seen.host = value.decode("latin-1")
    seen.size = size
    return seen


def _timeout(release: Release) -> dict[str, float]:
    """The per-request timeouts in the form transports read from request extensions."""
    routing = release.policy.routing
    return {
        "connect": routing.connect_timeout,
        "read": routing.read_timeout,
        "write": routing.read_timeout,
        "pool": routing.connect_timeout,
    }


class ProxyApp:
    """The routing proxy as an ASGI application."""

    def __init__(
        self,
        releases: Releases,
        *,
        transport: httpx.AsyncBaseTransport,
        shadow_transport: httpx.AsyncBaseTransport,
        metrics: ProxyMetrics,
        spans: SpanReporter,
        admin_token: str | None = None,
        max_header_bytes: int = 65536,
        refresher: RoutingRefresher | None = None,
    ) -> None:
        self.releases = releases
        self.transport = transport
        self.metrics = metrics
        self.spans = spans
        self.shadow = ShadowMirror(shadow_transport, metrics, spans)
        self.shadow_transport = shadow_transport
        self.admin_token = admin_token.encode() if admin_token else None
        self.max_header_bytes = max_header_bytes
        self.refresher = refresher
        self._timeouts = {name: _timeout(release) for name, release in releases.by_name.items()}
        for release in releases.by_name.values():
            metrics.routing(release.name, release.table.canary_weight, release.table.version)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def startup(self) -> None:
        await self.spans.start()
        if self.refresher is not None:
            await self.refresher.refresh_once()
            self.refresher.start()

    async def shutdown(self) -> None:
        if self.refresher is not None:
            await self.refresher.stop()
        await self.shadow.aclose()
        await self.spans.aclose()
        await self.transport.aclose()
        await self.shadow_transport.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start_ns = time.time_ns()
        path: str = scope["path"]
        release = self.releases.match(path)
        if release is None:
            self.metrics.refused.labels("no_release").inc()
            await _answer(send, 404, "no_release", f"no release serves the path {path!r}", None)
            return
        policy = release.policy
        stickiness = policy.routing.stickiness
        sticky_header = release.sticky_header
        seen = _gather(scope["headers"], sticky_header)
        rid = request_id(seen.request_id)
        if seen.size > self.max_header_bytes:
            self.metrics.refused.labels("headers_too_large").inc()
            await _answer(
                send,
                431,
                "headers_too_large",
                f"request headers are {seen.size} bytes; the limit is {self.max_header_bytes}",
                rid,
            )
            return
        if seen.bad_length:
            self.metrics.refused.labels("bad_request").inc()
            await _answer(send, 400, "bad_content_length", "Content-Length is not valid", rid)
            return
        limit = policy.routing.max_body_bytes
        if seen.content_length is not None and seen.content_length > limit:
            self.metrics.refused.labels("body_too_large").inc()
            await _answer(
                send,
                413,
                "body_too_large",
                f"request body is {seen.content_length} bytes; the limit is {limit}",
                rid,
            )
            return

        table = release.table
        set_cookie: bytes | None = None
        if seen.force is not None:
            forced = self._forced_arm(seen)
            if not isinstance(forced, Arm):
                self.metrics.refused.labels("force_arm_refused").inc()
                await _answer(send, 403, "force_arm_refused", forced, rid)
                return
            arm = forced
        elif stickiness is None:
            arm = arm_at_random(table.canary_weight)
        elif sticky_header is not None:
            key = seen.sticky
            arm = (
                arm_for_key(release.name, key, table.canary_weight)
                if key
                else arm_at_random(table.canary_weight)
            )
        else:
            cookie_name = stickiness.cookie or ""
            key = cookie_value(seen.cookie, cookie_name) if seen.cookie else None
            if key is None:
                key = request_id(None)
                secure = (seen.forwarded_proto or scope.get("scheme", "http")) == "https"
                set_cookie = sticky_cookie(cookie_name, key, secure=secure)
            arm = arm_for_key(release.name, key, table.canary_weight)
        route = table.canary if arm is Arm.CANARY else table.baseline

        trace = trace_context(seen.traceparent)
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        path_and_query = raw_path.decode("latin-1")
        if query:
            path_and_query += "?" + query.decode("latin-1")

        headers = request_headers_for_upstream(scope["headers"])
        client_address = scope.get("client")
        if client_address:
            forwarded = client_address[0]
            if seen.forwarded_for:
                forwarded = f"{seen.forwarded_for}, {forwarded}"
            headers = [(n, v) for n, v in headers if n != b"x-forwarded-for"]
            headers.append((b"x-forwarded-for", forwarded.encode("latin-1")))
        if seen.forwarded_proto is None:
            headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        if seen.host is not None:
            headers = [(n, v) for n, v in headers if n != b"x-forwarded-host"]
            headers.append((b"x-forwarded-host", seen.host.encode("latin-1")))
        shared_headers = list(headers)
        headers += [
            (_RELEASE, release.name.encode()),
            (_ARM, arm.value.encode()),
            (_REQUEST_ID, rid.encode()),
            (_TRACEPARENT, trace.traceparent().encode()),
        ]
        if route.prompt_label is not None:
            headers.append((_LABEL, route.prompt_label.encode()))
        if seen.content_length is not None:
            headers.append((b"content-length", str(seen.content_length).encode()))

        shadow_route = table.shadow
        mirror = wants_copy(shadow_route, method)
        if mirror and shadow_route is not None:
            too_large = (
                seen.content_length is not None
                and seen.content_length > shadow_route.max_body_bytes
            )
            if too_large:
                self.metrics.shadow_dropped(release.name, ShadowOutcome.DROPPED_TOO_LARGE)
                mirror = False

        timeout = self._timeouts[release.name]

        def body_complete(body: bytes | None) -> None:
            start_watcher()
            if body is None or shadow_route is None or not mirror:
                return
            self.shadow.send(
                ShadowCopy(
                    release=release.name,
                    route=shadow_route,
                    method=method,
                    path_and_query=path_and_query,
                    path=path,
                    headers=shared_headers,
                    body=body,
                    shadow_of=trace.trace_id,
                    request_id=rid,
                    prompt_label=table.canary.prompt_label,
                    timeout=timeout,
                )
            )

        status = 0
        failure: Failure | None = None
        task = asyncio.current_task()
        gone = False
        watcher: asyncio.Task[None] | None = None

        async def watch_disconnect() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    if task is not None:
                        task.cancel()
                    return

        def start_watcher() -> None:
            # only once the body is read: until then the body reader owns receive()
            nonlocal watcher
            if watcher is None:
                watcher = asyncio.get_running_loop().create_task(watch_disconnect())

        self.metrics.in_flight.inc()
        started = False
        try:
            content: bytes | AsyncIterator[bytes]
            expected = seen.content_length
            if not seen.chunked and (expected is None or expected <= SMALL_BODY_BYTES):
                body = await _read_body(receive, limit)
                body_complete(body)
                content = body
            else:
                content = _stream_body(
                    receive,
                    limit,
                    mirror_limit=shadow_route.max_body_bytes if mirror and shadow_route else 0,
                    on_complete=body_complete,
                    on_too_large=lambda: self.metrics.shadow_dropped(
                        release.name, ShadowOutcome.DROPPED_TOO_LARGE
                    ),
                )
            try:
                request = httpx.Request(
                    method,
                    route.upstream.rstrip("/") + path_and_query,
                    headers=headers,
                    content=content,
                    extensions={"timeout": timeout},
                )
                response = await self.transport.handle_async_request(request)
            except httpx.ConnectTimeout:
                failure, status = Failure.TIMEOUT, 504
                await _answer(
                    send, 504, "upstream_timeout", f"{arm.value} upstream did not accept", rid
                )
                return
            except httpx.ConnectError:
                failure, status = Failure.CONNECT, 502
                await _answer(
                    send, 502, "upstream_unavailable", f"{arm.value} upstream is unreachable", rid
                )
                return
            except httpx.TimeoutException:
                failure, status = Failure.TIMEOUT, 504
                await _answer(
                    send, 504, "upstream_timeout", f"{arm.value} upstream did not answer", rid
                )
                return
            except BodyTooLargeError:
                failure, status = Failure.TOO_LARGE, 413
                self.metrics.refused.labels("body_too_large").inc()
                await _answer(
                    send, 413, "body_too_large", f"request body is over {limit} bytes", rid
                )
                return
            except httpx.HTTPError as error:
                failure, status = Failure.UPSTREAM, 502
                await _answer(
                    send,
                    502,
                    "upstream_failed",
                    f"{arm.value} upstream failed: {type(error).__name__}",
                    rid,
                )
                return
            try:
                status = response.status_code
                out_headers = response_headers_for_client(response.headers.raw)
                if set_cookie is not None:
                    out_headers.append((b"set-cookie", set_cookie))
                await send(
                    {"type": "http.response.start", "status": status, "headers": out_headers}
                )
                started = True
                async for chunk in response.stream:  # type: ignore[union-attr]
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except httpx.TimeoutException:
                failure = Failure.TIMEOUT
                raise _UpstreamCutError(rid) from None
            except httpx.HTTPError:
                failure = Failure.UPSTREAM
                raise _UpstreamCutError(rid) from None
            finally:
                await response.aclose()
        except ClientGoneError:
            failure = Failure.CLIENT_GONE
        except asyncio.CancelledError:
            if not gone:
                raise
            if task is not None:
                task.uncancel()
            failure = Failure.CLIENT_GONE
        finally:
            if watcher is not None:
                watcher.cancel()
            self.metrics.in_flight.dec()
            if failure is Failure.CLIENT_GONE and not started:
                status = 499
            outcome = RequestOutcome(
                release=release.name,
                arm=arm,
                method=method,
                path=path,
                status=status,
                start_ns=start_ns,
                end_ns=time.time_ns(),
                trace_id=trace.trace_id,
                span_id=trace.span_id,
                parent_span_id=trace.parent_span_id,
                request_id=rid,
                prompt_label=route.prompt_label,
                failure=failure,
            )
            self.metrics.observe(outcome)
            self.spans.record(outcome)

    def _forced_arm(self, seen: _Incoming) -> Arm | str:
        """The arm an operator forced, or why the force was refused."""
        token = self.admin_token
        given = (seen.token or "").encode("latin-1")
        if token is None or not hmac.compare_digest(given, token):
            return f"{FORCE_ARM_HEADER} needs a valid {ADMIN_TOKEN_HEADER}"
        arm = _FORCEABLE.get(seen.force or "")
        if arm is None:
            return f"{FORCE_ARM_HEADER} must be 'baseline' or 'canary'"
        return arm


class _UpstreamCutError(Exception):
    """The upstream failed after the response had begun: the only honest thing left is to
    close the client's connection so it sees an incomplete response."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"upstream response cut short (request {request_id})")


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _stream_body(
    receive: Receive,
    limit: int,
    *,
    mirror_limit: int,
    on_complete: Callable[[bytes | None], None],
    on_too_large: Callable[[], None],
) -> AsyncIterator[bytes]:
    """The request body as it arrives; when it ends, ``on_complete`` gets the copy kept
    for mirroring (None when none was kept)."""
    size = 0
    kept: bytearray | None = bytearray() if mirror_limit > 0 else None
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError
            if kept is not None:
                if len(kept) + len(chunk) > mirror_limit:
                    kept = None
                    on_too_large()
                else:
                    kept += chunk
            yield chunk
        if not message.get("more_body", False):
            break
    on_complete(None if kept is None else bytes(kept))


async def _answer(send: Send, status: int, code: str, message: str, rid: str | None) -> None:
    """A JSON error from the proxy itself."""
    payload: dict[str, Any] = {"error": {"code": code, "message": message}}
    headers: Headers = [(b"content-type", b"application/json")]
    if rid is not None:
        payload["error"]["requestId"] = rid
        headers.append((_REQUEST_ID, rid.encode()))
    body = json.dumps(payload).encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
