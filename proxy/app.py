"""The proxy's ASGI application: one request in, one arm chosen, one upstream call out.

The hot path is a plain ASGI callable (no routing framework in between). ``proxy.plan``
decides from the request's head what to do with it; this module carries the plan out: it
streams the body to the upstream and the response back as it comes, hands a copy to the
shadow mirror when the plan asks for one, and records the outcome for metrics and for
Langfuse without waiting on either.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx

from coalmine.shared.conventions import REQUEST_ID_HEADER
from policies.domain import Arm
from proxy.aggregates import AggregateRecorder
from proxy.client_gone import CLIENT_GONE, ClientGone
from proxy.direct import DirectRequest, WholeTo
from proxy.errors import BodyTooLargeError, ClientGoneError, UpstreamCutError
from proxy.headers import Headers, response_headers_for_client
from proxy.metrics import ProxyMetrics, ShadowOutcome
from proxy.outcome import Failure, RequestOutcome, Usage
from proxy.plan import Forward, PlanSettings, Refusal, RequestHead, SystemChance, plan_request
from proxy.routes import Releases
from proxy.send_whole import SEND_WHOLE
from proxy.shadow import ShadowCopy, ShadowMirror
from proxy.spans import NoopSpanReporter, SpanReporter
from proxy.throttle import FailedAttempts
from proxy.transport import PooledTransport, RawResponse, request_head
from proxy.usage import UsageReader, reader_for, whole_usage

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("coalmine.proxy")

_REQUEST_ID = REQUEST_ID_HEADER.encode()
_CONTENT_LENGTH = b"content-length"
# Responses that end with their headers whatever Content-Length says (RFC 9110 6.4.1). A
# Content-Length on them would have the server in front wait for body bytes that never
# come and close the client's connection; it is optional on a 304 and forbidden on a 204.
_NO_CONTENT = frozenset({204, 304})
_CHANCE = SystemChance()
_NO_EXTENSIONS: dict[str, Any] = {}
# asyncio.current_task(loop) reads this dict (the C module's): read here without the
# Python call; a Python without it has the call do it
_current_tasks: Mapping[asyncio.AbstractEventLoop, asyncio.Task[Any]] = getattr(
    asyncio.tasks, "_current_tasks", {}
)
# module constants: an enum member read off its class goes through EnumType.__getattr__
_CLIENT_GONE = Failure.CLIENT_GONE


class Refresher(Protocol):
    """A background task of the proxy that follows something outside it (the policies,
    the routing tables): one look at start, then on its own schedule."""

    async def refresh_once(self) -> object: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class ProxyApp:
    """The routing proxy as an ASGI application."""

    def __init__(  # noqa: PLR0913 (the parts the server wires in)
        self,
        releases: Releases,
        *,
        transport: httpx.AsyncBaseTransport,
        shadow_transport: httpx.AsyncBaseTransport,
        metrics: ProxyMetrics,
        spans: SpanReporter,
        admin_token: str | None = None,
        max_header_bytes: int = 65536,
        force_arm_attempts: FailedAttempts | None = None,
        refreshers: Sequence[Refresher] = (),
        aggregates: AggregateRecorder | None = None,
    ) -> None:
        self.releases = releases
        self.transport = transport
        self.pooled = transport if isinstance(transport, PooledTransport) else None
        """The transport, when it takes a request's head as bytes (``upstream_head``)
        rather than an httpx request."""
        self.metrics = metrics
        self.spans = spans
        self.record_span = None if isinstance(spans, NoopSpanReporter) else spans.record
        """``spans.record``, or None when spans are off (no call a request for nothing)."""
        self.shadow = ShadowMirror(shadow_transport, metrics, spans)
        self.shadow_transport = shadow_transport
        self.settings = PlanSettings(
            admin_token=admin_token.encode() if admin_token else None,
            max_header_bytes=max_header_bytes,
            force_arm_attempts=force_arm_attempts,
        )
        self.refreshers = tuple(refreshers)
        """Started in order with the server (the policies before the tables), stopped
        with it."""
        self.aggregates = aggregates
        """Counts every forwarded request per release, arm and minute (None: no store
        to write them to); started and stopped among the ``refreshers``."""
        self.in_flight = 0
        """Requests being served; read by the in-flight gauge when it is scraped."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop the requests come on, known from the first (on another, each
        request looks for its own)."""
        metrics.in_flight.set_function(lambda: self.in_flight)
        for release in releases.by_name.values():
            metrics.routing(release.name, release.table.canary_weight, release.table.version)
        metrics.routed_releases.set(len(releases.by_name))

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
        for refresher in self.refreshers:
            await refresher.refresh_once()
            refresher.start()

    async def shutdown(self) -> None:
        for refresher in self.refreshers:
            await refresher.stop()
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

    def _http(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The request of an ASGI ``http`` scope, to ``_serve``."""
        start_ns = time.time_ns()
        extensions = scope.get("extensions") or _NO_EXTENSIONS
        gone = extensions.get(CLIENT_GONE, _NO_EXTENSIONS).get("gone")
        return self._serve(
            RequestHead.of(scope, start_ns),
            receive,
            send,
            gone if isinstance(gone, ClientGone) else None,
            extensions.get(SEND_WHOLE, _NO_EXTENSIONS).get("send"),
            scope,
            start_ns,
        )

    def serve_direct(self, request: DirectRequest) -> Awaitable[None]:
        """``_http`` for a request that coalmine's protocol hands over as it parsed it
        (``proxy/direct.py``): the same answer without the ASGI scope."""
        start_ns = time.time_ns()
        # by position, in the order of RequestHead's fields (keywords cost twice as much)
        head = RequestHead(
            request.method,
            request.path,
            request.target,
            request.scheme,
            request.client_host,
            request.headers,
            request.http_version,
            start_ns,
        )
        return self._serve(
            head, request.receive, request.send, request.gone, request.whole, request, start_ns
        )

    def _serve(
        self,
        head: RequestHead,
        receive: Receive,
        send: Send,
        watch: ClientGone | None,
        whole: WholeTo | None,
        scope: object,
        start_ns: int,
    ) -> Awaitable[None]:
        """What answers the request: the proxy's refusal, or the exchange with the
        upstream."""
        plan = plan_request(head, self.releases, self.settings, _CHANCE)
        if isinstance(plan, Refusal):
            self.metrics.refused.labels(plan.reason).inc()
            return _answer(
                send, plan.status, plan.code, plan.message, plan.request_id, plan.retry_after
            )
        if plan.shadow_dropped:
            self.metrics.shadow_dropped(plan.release, ShadowOutcome.DROPPED_TOO_LARGE)
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        exchange = _Exchange(self, plan, receive, send, watch)
        if whole is not None:
            exchange.send_whole, exchange.scope = whole, scope
        return exchange.run(start_ns)


class _Exchange:
    """One forwarded request as it is carried out: its plan, its ASGI channel, and what
    has happened so far, which the outcome recorded at the end reads.

    ``status`` is what the client was sent (0: nothing yet); ``failure`` why the proxy
    ended the request, if it did; ``started`` whether the response head went out;
    ``gone`` whether the client disconnected once its body was read; ``watcher`` the task
    that watches for that disconnect; ``reader`` what reads the response's usage as its
    body passes (None: a body that is not read).
    """

    __slots__ = (
        "app",
        "client_gone",
        "failure",
        "gone",
        "plan",
        "reader",
        "receive",
        "scope",
        "send",
        "send_whole",
        "started",
        "status",
        "task",
        "usage",
        "watcher",
    )

    def __init__(
        self,
        app: ProxyApp,
        plan: Forward,
        receive: Receive,
        send: Send,
        client_gone: ClientGone | None = None,
    ) -> None:
        self.app = app
        self.client_gone = client_gone
        """The server's word that the client went (coalmine's protocol gives one);
        without it a task waits on ``receive()`` for ``http.disconnect``."""
        self.plan = plan
        self.receive = receive
        self.send = send
        # with its loop given, current_task skips a look for the running loop (in this
        # Python, a getpid system call)
        loop = app.loop
        self.task = (
            _current_tasks.get(loop) if loop is not None else None
        ) or asyncio.current_task()
        self.status = 0
        self.failure: Failure | None = None
        self.started = False
        self.gone = False
        self.watcher: asyncio.Task[None] | None = None
        self.reader: UsageReader | None = None
        self.usage: Usage | None = None
        """The usage of a body that came whole, read as it was sent (no ``reader``)."""
        self.send_whole: WholeTo | None = None
        """The server's call for a whole response at once (coalmine's protocol gives
        one), with what it takes first: the request's scope, or the request itself."""
        self.scope: object = _NO_EXTENSIONS

    async def run(  # noqa: C901, PLR0912, PLR0915 (its common path in line: calls cost as much)
        self, start_ns: int
    ) -> None:
        """Carry the request out, then record its outcome whatever happened."""
        app = self.app
        app.in_flight += 1
        try:
            plan = self.plan
            gone = self.client_gone
            if gone is not None and plan.read_whole and plan.content_length is None:
                # neither a length nor chunked: no body (RFC 9112 6.3), and the server
                # says when the client goes: nothing to wait for from receive()
                if gone.fired:
                    raise ClientGoneError
                if plan.shadow is None:
                    gone.then = self._gone  # _body_complete's work, in line
                else:
                    self._body_complete(b"")
                pooled = app.pooled
                if pooled is not None and plan.target.isascii():
                    # _call_upstream's, in line: one coroutine less to resume when the
                    # response comes
                    try:
                        origin, head, chunked = upstream_head(plan, b"")
                        response = await pooled.exchange(
                            origin, plan.method, head, b"", chunked, plan.timeout
                        )
                    except (httpx.HTTPError, BodyTooLargeError) as error:
                        await self._call_failed(error)
                        response = None
                else:
                    response = await self._call_upstream(b"")
            else:
                response = await self._call_upstream(await self._body())
            if response is not None and not self._sent_whole(response):
                await self._relay(response)
        except ClientGoneError:
            self.failure = Failure.CLIENT_GONE
        except asyncio.CancelledError:
            if not self.gone:
                raise
            if self.task is not None:
                self.task.uncancel()
            self.failure = Failure.CLIENT_GONE
        finally:
            if self.client_gone is not None:
                self.client_gone.then = None
            if self.watcher is not None:
                self.watcher.cancel()
            app.in_flight -= 1
            plan = self.plan
            failure = self.failure
            # a named tuple's fields by name cost more
            trace_id, parent_span_id, span_id, _ = plan.trace
            # by position, in the order of RequestOutcome's fields (keywords cost twice as
            # much)
            outcome = RequestOutcome(
                plan.release,
                plan.arm,
                plan.method,
                plan.path,
                499 if failure is _CLIENT_GONE and not self.started else self.status,
                start_ns,
                time.time_ns(),
                trace_id,
                span_id,
                parent_span_id,
                plan.request_id,
                plan.prompt_label,
                failure,
                None,
                plan.sampled,
                self.usage,
            )
            if self.reader is not None:
                self._read_usage(outcome, self.reader)
            app.metrics.observe(outcome)
            if app.aggregates is not None:
                app.aggregates.record(outcome)
            if app.record_span is not None:
                app.record_span(outcome)

    async def _body(self) -> bytes | AsyncIterator[bytes]:
        """The request body: read whole when the plan says so, else streamed."""
        plan = self.plan
        if plan.read_whole:
            body = await _read_body(self.receive, plan.body_limit)
            self._body_complete(body)
            return body
        return _stream_body(
            self.receive,
            plan.body_limit,
            mirror_limit=plan.shadow.route.max_body_bytes if plan.shadow is not None else 0,
            on_complete=self._body_complete,
            on_too_large=self._copy_too_large,
        )

    def _body_complete(self, body: bytes | None) -> None:
        """The client's body is all read: watch for its disconnect from now on, and send
        the copy for staging when there is one and its body was kept."""
        self._watch_disconnect()
        plan, shadow = self.plan, self.plan.shadow
        if body is None or shadow is None:
            return
        self.app.shadow.send(
            ShadowCopy(
                release=plan.release,
                route=shadow.route,
                method=plan.method,
                path_and_query=plan.target,
                path=plan.path,
                headers=shadow.headers,
                body=body,
                shadow_of=plan.trace.trace_id,
                sampled=plan.sampled,
                request_id=plan.request_id,
                prompt_label=shadow.prompt_label,
                timeout=plan.timeout,
            )
        )

    def _copy_too_large(self) -> None:
        self.app.metrics.shadow_dropped(self.plan.release, ShadowOutcome.DROPPED_TOO_LARGE)

    def _watch_disconnect(self) -> None:
        # only once the body is read: until then the body reader owns receive()
        if self.client_gone is not None:
            self.client_gone.then = self._gone
        elif self.watcher is None:
            loop = asyncio.get_running_loop()
            self.watcher = loop.create_task(self._wait_for_disconnect())

    async def _wait_for_disconnect(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._gone()
                return

    def _gone(self) -> None:
        self.gone = True
        if self.task is not None:
            self.task.cancel()

    async def _call_upstream(self, content: bytes | AsyncIterator[bytes]) -> RawResponse | None:
        """The upstream's response, or None when the call failed and the client has been
        answered for it."""
        plan = self.plan
        try:
            pooled = self.app.pooled
            if pooled is not None and plan.target.isascii():
                origin, head, chunked = upstream_head(plan, content)
                return await pooled.exchange(
                    origin, plan.method, head, content, chunked, plan.timeout
                )
            request = upstream_request(plan, content)
            response = await self.app.transport.handle_async_request(request)
            stream = cast(httpx.AsyncByteStream, response.stream)
            return RawResponse(response.status_code, response.headers.raw, stream)
        except (httpx.HTTPError, BodyTooLargeError) as error:
            await self._call_failed(error)
        return None

    async def _call_failed(self, error: httpx.HTTPError | BodyTooLargeError) -> None:
        """The client answered for an upstream call that failed before its response."""
        plan = self.plan
        failed = _call_failed(error, plan.arm, plan.body_limit)
        self.failure, self.status = failed.failure, failed.status
        if failed.failure is Failure.TOO_LARGE:
            self.app.metrics.refused.labels("body_too_large").inc()
        await _answer(self.send, failed.status, failed.code, failed.message, plan.request_id)

    def _sent_whole(self, response: RawResponse) -> bool:
        """A response whose body came with its head, sent in one call when the server
        offers it (``proxy.send_whole``); False when it goes by ``_relay`` instead."""
        body, whole = response.body, self.send_whole
        if body is None or whole is None:
            return False
        self.status = status = response.status
        headers = response_headers_for_client(response.headers)
        if status in _NO_CONTENT:
            headers = [pair for pair in headers if pair[0].lower() != _CONTENT_LENGTH]
        if self.plan.set_cookie is not None:
            headers.append((b"set-cookie", self.plan.set_cookie))
        if not whole(self.scope, status, headers, body):
            return False
        self.started = True
        # read now that the client has it all, without a reader to keep
        usage, unreadable = whole_usage(headers, body)
        self.usage = usage
        if unreadable:
            plan = self.plan
            self.app.metrics.usage_unreadable.labels(plan.release, plan.arm.value).inc()
        return True

    async def _relay(self, response: RawResponse) -> None:
        """The upstream's response to the client, chunk by chunk as it comes."""
        send = self.send
        try:
            self.status = response.status
            headers = response_headers_for_client(response.headers)
            if self.status in _NO_CONTENT:
                headers = [pair for pair in headers if pair[0].lower() != _CONTENT_LENGTH]
            if self.plan.set_cookie is not None:
                headers.append((b"set-cookie", self.plan.set_cookie))
            body = response.body
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            self.started = True
            reader = self.reader = reader_for(headers, body)
            if body is not None:
                await send({"type": "http.response.body", "body": body})
                return
            if reader is None:
                async for chunk in response.stream:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                # fed once sent: the client's bytes never wait on the reading
                async for chunk in response.stream:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    reader.feed(chunk)
                reader.end()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.TimeoutException:
            self.failure = Failure.TIMEOUT
            raise UpstreamCutError(self.plan.request_id) from None
        except httpx.HTTPError:
            self.failure = Failure.UPSTREAM
            raise UpstreamCutError(self.plan.request_id) from None
        finally:
            if response.body is None:
                await response.aclose()

    def _read_usage(self, outcome: RequestOutcome, reader: UsageReader) -> None:
        """The usage the response reported, as far as its body was read: parsed here,
        once the client has had the whole response."""
        outcome.usage = reader.result()
        if reader.unreadable:
            self.app.metrics.usage_unreadable.labels(outcome.release, outcome.arm.value).inc()


@dataclass(frozen=True, slots=True)
class _CallFailed:
    """The answer to a client whose upstream call failed before its response began."""

    failure: Failure
    status: int
    code: str
    message: str


@functools.lru_cache(maxsize=256)
def _origin(upstream: str) -> tuple[tuple[bytes, bytes, int | None], bytes, bytes]:
    """An upstream's (scheme, host, port), parsed once; its path without the trailing
    slash; its Host."""
    url = httpx.URL(upstream)
    return (url.raw_scheme, url.raw_host, url.port), url.raw_path.rstrip(b"/"), url.netloc


_EMPTY_LENGTH_FOR = frozenset({"POST", "PUT", "PATCH"})
"""Methods that get ``Content-Length: 0`` when they carry no length (as httpx does)."""


def upstream_head(
    plan: Forward, content: bytes | AsyncIterator[bytes]
) -> tuple[tuple[bytes, bytes, int | None], bytes, bool]:
    """Where the request goes (scheme, host, port), its head as sent, and whether its
    body goes chunked: the head ``upstream_request`` would make, with its URL parsed once
    per upstream and the framing headers set here where httpx sets them (``Host`` first,
    then an empty body's length; a body's length, or chunked for a streamed body of
    unknown length, last). An httpx request and response made for every request cost
    about 14 µs between them (3.6 µs and 10.3 µs, timeit)."""
    origin, base_path, host = _origin(plan.upstream)
    headers = [(b"Host", host)]
    chunked = False  # the client's framing is hop-by-hop: never among plan.headers
    if plan.content_length is not None:
        headers += plan.headers
    elif not isinstance(content, bytes):
        headers += plan.headers
        headers.append((b"Transfer-Encoding", b"chunked"))
        chunked = True
    elif content:
        headers += plan.headers
        headers.append((b"Content-Length", str(len(content)).encode("ascii")))
    else:
        if plan.method in _EMPTY_LENGTH_FOR:
            headers.append((b"Content-Length", b"0"))
        headers += plan.headers
    target = base_path + plan.target.encode("ascii")
    head, chunked = request_head(plan.method, target, headers, chunked)
    return origin, head, chunked


def upstream_request(plan: Forward, content: bytes | AsyncIterator[bytes]) -> httpx.Request:
    """The request to send upstream through any httpx transport: the whole URL."""
    return httpx.Request(
        plan.method,
        httpx.URL(plan.url),
        headers=plan.headers,
        content=content,
        extensions={"timeout": plan.timeout},
    )


def _call_failed(error: Exception, arm: Arm, limit: int) -> _CallFailed:
    if isinstance(error, httpx.ConnectTimeout):
        message = f"{arm.value} upstream did not accept"
        return _CallFailed(Failure.TIMEOUT, 504, "upstream_timeout", message)
    if isinstance(error, httpx.ConnectError):
        message = f"{arm.value} upstream is unreachable"
        return _CallFailed(Failure.CONNECT, 502, "upstream_unavailable", message)
    if isinstance(error, httpx.TimeoutException):
        message = f"{arm.value} upstream did not answer"
        return _CallFailed(Failure.TIMEOUT, 504, "upstream_timeout", message)
    if isinstance(error, BodyTooLargeError):
        message = f"request body is over {limit} bytes"
        return _CallFailed(Failure.TOO_LARGE, 413, "body_too_large", message)
    message = f"{arm.value} upstream failed: {type(error).__name__}"
    return _CallFailed(Failure.UPSTREAM, 502, "upstream_failed", message)


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


async def _answer(
    send: Send,
    status: int,
    code: str,
    message: str,
    rid: str | None,
    retry_after: int | None = None,
) -> None:
    """A JSON error from the proxy itself."""
    payload: dict[str, Any] = {"error": {"code": code, "message": message}}
    headers: Headers = [(b"content-type", b"application/json")]
    if rid is not None:
        payload["error"]["requestId"] = rid
        headers.append((_REQUEST_ID, rid.encode()))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    body = json.dumps(payload).encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
