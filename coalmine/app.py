"""The app-side helper: read coalmine's request headers, tag the request's Langfuse trace.

The proxy tells the app, in request headers, which release and arm a request belongs
to, which prompt label to fetch, whether the request is a mirrored shadow copy, and the
trace to continue (``traceparent``, with the proxy's span as parent). This module turns
those headers into a :class:`ReleaseContext` for the duration of the request and, when
the Langfuse SDK (5.x) is installed and configured, runs the request inside
``propagate_attributes(tags=[...])`` and a span of the proxy's trace, so every
observation the app records carries the release and arm tags the controller reads
(and, for a request in the score sample, ``x-coalmine-sampled: 1``, the sample's tag)::

    from fastapi import FastAPI
    from langfuse import get_client
    from coalmine.app import CoalmineMiddleware, is_shadow, prompt_label

    app = FastAPI()
    app.add_middleware(CoalmineMiddleware)

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        prompt = get_client().get_prompt("support-agent", label=prompt_label())
        return answer(prompt.compile(), body, send_email=not is_shadow())

Code that is not an ASGI app wraps each request in :func:`request_scope` instead.

Notes:

* Langfuse groups by the whole tag array, so the app must not add tags of its own
  inside the request (``propagate_attributes`` merges nested tags).
* When the request came through the proxy (release and arm headers plus a
  ``traceparent``), the proxy's span is the trace's root: the app's span is its child
  and does not claim to be the root. Pass ``proxy_root=False`` when the proxy runs
  with ``--no-spans``, so that the app's span is the root instead.
* The headers are trusted: the proxy strips every ``x-coalmine-*`` header a client
  sends, so the app must only be reachable through the proxy.

This module needs only the standard library; ``langfuse`` is imported when a request
is traced, never at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from coalmine.shared.conventions import (
    ARM_HEADER,
    PROMPT_LABEL_HEADER,
    RELEASE_HEADER,
    REQUEST_ID_HEADER,
    SAMPLED_HEADER,
    SHADOW_HEADER,
    SHADOW_OF_HEADER,
    TRACEPARENT_HEADER,
    trace_tags,
)
from policies.domain import Arm

if TYPE_CHECKING:
    from langfuse import Langfuse
    from langfuse.types import TraceContext

__all__ = [
    "CoalmineMiddleware",
    "ReleaseContext",
    "context_from_headers",
    "current",
    "is_shadow",
    "prompt_label",
    "request_scope",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
HeaderSource = Mapping[str, str] | Iterable[tuple[bytes, bytes]]

# The same shapes the policy model and the proxy accept; anything else is ignored.
_RELEASE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RELEASE_MAX: Final = 63
_LABEL = re.compile(r"^[a-z0-9_.-]{1,36}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_TRACEPARENT_MAX: Final = 512
_NAME_MAX: Final = 200
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_TRUE: Final = frozenset({"1", "true", "yes"})
_ARMS: Final = frozenset(arm.value for arm in Arm)
_WANTED: Final = frozenset(
    {
        RELEASE_HEADER,
        ARM_HEADER,
        PROMPT_LABEL_HEADER,
        SHADOW_HEADER,
        SHADOW_OF_HEADER,
        SAMPLED_HEADER,
        REQUEST_ID_HEADER,
        TRACEPARENT_HEADER,
    }
)
# The Langfuse SDK's baggage entry that says which trace already has its root span
# (``langfuse._client.propagation.LANGFUSE_TRACE_ID_BAGGAGE_KEY``): with it, the SDK
# does not mark the app's first span as the trace's root.
_ROOT_CLAIM_BAGGAGE: Final = "langfuse_trace_id"

DEFAULT_PROMPT_LABEL: Final = "production"


@dataclass(frozen=True)
class ReleaseContext:
    """What coalmine's headers say about one request; every field None when absent."""

    release: str | None = None
    arm: str | None = None
    """``baseline``, ``canary`` or ``shadow``."""
    prompt_label: str | None = None
    shadow: bool = False
    """A mirrored copy whose response nobody reads: skip side effects."""
    shadow_of: str | None = None
    """For a shadow copy, the trace id of the request it copies."""
    request_id: str | None = None
    traceparent: str | None = None
    sampled: bool = False
    """The request is in its release's score sample: its trace carries the sample's tag."""

    @property
    def tags(self) -> list[str]:
        """The Langfuse tag array of the request's spans (the proxy's own array); empty
        unless release and arm are both known."""
        if self.release is None or self.arm is None:
            return []
        return trace_tags(self.release, self.arm, self.sampled)

    @property
    def trace_id(self) -> str | None:
        """The trace of ``traceparent``, None when it is absent or invalid."""
        parsed = _parse_traceparent(self.traceparent)
        return None if parsed is None else parsed[0]

    @property
    def parent_span_id(self) -> str | None:
        """The caller's span (the proxy's) in ``traceparent``, None when invalid."""
        parsed = _parse_traceparent(self.traceparent)
        return None if parsed is None else parsed[1]

    @property
    def from_proxy(self) -> bool:
        """Whether the request carries the proxy's release and arm."""
        return bool(self.tags)


_EMPTY: Final = ReleaseContext()
_current: ContextVar[ReleaseContext] = ContextVar("coalmine_release_context", default=_EMPTY)


def current() -> ReleaseContext:
    """The context of the request being served; an empty one outside a request."""
    return _current.get()


def is_shadow() -> bool:
    """Whether the current request is a shadow copy: tools must skip side effects."""
    return _current.get().shadow


def prompt_label(default: str = DEFAULT_PROMPT_LABEL) -> str:
    """The Langfuse prompt label the current request must use; ``default`` when the
    proxy named none."""
    return _current.get().prompt_label or default


# ------------------------------------------------------------------------- headers


ARM_ENV: Final = "COALMINE_ARM"
RELEASE_ENV: Final = "COALMINE_RELEASE"
"""Where a Deployment behind a Gateway API route (no coalmine proxy) says which release
and arm it serves: the canary Deployment sets ``COALMINE_ARM=canary``, the stable one
``baseline``. A request's own headers (a proxy's, or a route's header modifier) win."""


def context_from_headers(headers: HeaderSource) -> ReleaseContext:
    """Read coalmine's headers (names in any case); malformed values count as absent.
    Without a release or an arm header, the ``COALMINE_RELEASE`` and ``COALMINE_ARM``
    environment variables stand in for them.

    ``headers`` is a mapping of names to values (Starlette's ``Headers``, a ``dict``)
    or the ASGI list of ``(name, value)`` byte pairs. When a header is repeated the
    first value wins.
    """
    values: dict[str, str] = {}
    pairs: Iterable[tuple[Any, Any]] = headers.items() if isinstance(headers, Mapping) else headers
    for raw_name, raw_value in pairs:
        name = _text(raw_name)
        if name is None:
            continue
        name = name.strip().lower()
        if name in _WANTED and name not in values:
            value = _text(raw_value)
            if value is not None:
                values[name] = value.strip()
    if ARM_HEADER not in values and RELEASE_HEADER not in values:
        # no coalmine proxy in front (a Gateway API route): the Deployment says its arm
        values[ARM_HEADER] = os.environ.get(ARM_ENV, "")
        values[RELEASE_HEADER] = os.environ.get(RELEASE_ENV, "")
    arm = values.get(ARM_HEADER, "").lower()
    arm_value = arm if arm in _ARMS else None
    release = values.get(RELEASE_HEADER)
    shadow_of = values.get(SHADOW_OF_HEADER, "").lower()
    traceparent = values.get(TRACEPARENT_HEADER)
    return ReleaseContext(
        release=release if _matches(_RELEASE, release, _RELEASE_MAX) else None,
        arm=arm_value,
        prompt_label=_valid(_LABEL, values.get(PROMPT_LABEL_HEADER)),
        shadow=values.get(SHADOW_HEADER, "").lower() in _TRUE or arm_value == Arm.SHADOW,
        shadow_of=shadow_of if _TRACE_ID.match(shadow_of) else None,
        request_id=_valid(_REQUEST_ID, values.get(REQUEST_ID_HEADER)),
        traceparent=traceparent if _printable(traceparent, _TRACEPARENT_MAX) else None,
        sampled=values.get(SAMPLED_HEADER, "").lower() in _TRUE,
    )


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    return None


def _matches(pattern: re.Pattern[str], value: str | None, max_length: int) -> bool:
    return value is not None and len(value) <= max_length and pattern.match(value) is not None


def _valid(pattern: re.Pattern[str], value: str | None) -> str | None:
    return value if value is not None and pattern.match(value) else None


def _printable(value: str | None, max_length: int) -> bool:
    return (
        value is not None
        and 0 < len(value) <= max_length
        and value.isascii()
        and value.isprintable()
    )


def _parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a valid W3C ``traceparent``, else None."""
    if value is None:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id


# ------------------------------------------------------------------------- tracing


def _langfuse_client(public_key: str | None) -> Langfuse | None:
    """The SDK client to trace with, or None when the SDK is missing or unconfigured."""
    try:
        from langfuse import get_client  # noqa: PLC0415
    except ImportError:
        return None
    if public_key is None and not (os.environ.get("LANGFUSE_PUBLIC_KEY") or _has_sdk_client()):
        return None  # an unconfigured client would only log an error per request
    return get_client(public_key=public_key)


def _pick_client(enabled: bool, client: Langfuse | None, public_key: str | None) -> Langfuse | None:
    if not enabled:
        return None
    return client if client is not None else _langfuse_client(public_key)


def _has_sdk_client() -> bool:
    """Whether this process already made a Langfuse client (with explicit keys)."""
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager  # noqa: PLC0415
    except ImportError:
        return False
    return bool(getattr(LangfuseResourceManager, "_instances", None))


@contextmanager
def _root_claimed_upstream(trace_id: str) -> Iterator[None]:
    """Tell the SDK that ``trace_id``'s root span is the proxy's, not the app's."""
    from opentelemetry import baggage  # noqa: PLC0415
    from opentelemetry import context as otel_context  # noqa: PLC0415

    token = otel_context.attach(baggage.set_baggage(_ROOT_CLAIM_BAGGAGE, trace_id))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def _traced(
    ctx: ReleaseContext, name: str, client: Langfuse | None, *, proxy_root: bool
) -> Iterator[Any]:
    """Run the body in the request's span: tagged, and continuing ``traceparent``.

    Yields the SDK's span object, or None when not tracing.
    """
    if client is None:
        yield None
        return
    from langfuse import propagate_attributes  # noqa: PLC0415

    with ExitStack() as stack:
        if ctx.tags:
            metadata = {
                key: value
                for key, value in (
                    ("coalmine_request_id", ctx.request_id),
                    ("coalmine_shadow_of", ctx.shadow_of),
                )
                if value
            }
            stack.enter_context(propagate_attributes(tags=ctx.tags, metadata=metadata or None))
        trace_id, parent = ctx.trace_id, ctx.parent_span_id
        trace_context: TraceContext | None = None
        if trace_id is not None and parent is not None:
            trace_context = {"trace_id": trace_id, "parent_span_id": parent}
            if proxy_root and ctx.from_proxy:
                stack.enter_context(_root_claimed_upstream(trace_id))
        span = stack.enter_context(
            client.start_as_current_observation(
                name=name,
                as_type="span",
                trace_context=trace_context,
                metadata=_span_metadata(ctx),
            )
        )
        yield span


def _span_metadata(ctx: ReleaseContext) -> dict[str, Any] | None:
    fields = {
        "release": ctx.release,
        "arm": ctx.arm,
        "prompt_label": ctx.prompt_label,
        "shadow": ctx.shadow or None,
    }
    present = {f"coalmine_{key}": value for key, value in fields.items() if value is not None}
    return present or None


@contextmanager
def request_scope(
    headers: HeaderSource,
    *,
    name: str = "request",
    langfuse: bool = True,
    client: Langfuse | None = None,
    public_key: str | None = None,
    proxy_root: bool = True,
) -> Iterator[ReleaseContext]:
    """Serve one request in its coalmine context, for code that is not an ASGI app.

    Sets :func:`current` from ``headers`` and, when ``langfuse`` is on and the SDK is
    installed and configured, runs the body in a span named ``name`` of the proxy's
    trace under ``propagate_attributes(tags=...)``. The span is recorded with
    ``client``, else with ``get_client(public_key=public_key)``. Yields the request's
    context.
    """
    ctx = context_from_headers(headers)
    token = _current.set(ctx)
    try:
        tracer = _pick_client(langfuse, client, public_key)
        with _traced(ctx, name, tracer, proxy_root=proxy_root):
            yield ctx
    finally:
        _current.reset(token)


class CoalmineMiddleware:
    """ASGI middleware: each HTTP request runs in its coalmine context and span.

    ``langfuse=False`` only sets the context (no spans). Spans are recorded with
    ``client``, else with ``get_client(public_key=public_key)`` (looked up on the first
    request). ``name`` is the span's name (default ``"METHOD /path"``). A response with
    status 5xx marks the span ERROR.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        langfuse: bool = True,
        client: Langfuse | None = None,
        public_key: str | None = None,
        name: str | None = None,
        proxy_root: bool = True,
    ) -> None:
        self.app = app
        self._langfuse = langfuse
        self._client = client if langfuse else None
        self._public_key = public_key
        self._name = name
        self._proxy_root = proxy_root
        self._resolved = client is not None or not langfuse

    def _get_client(self) -> Langfuse | None:
        if not self._resolved:
            self._client = _pick_client(self._langfuse, None, self._public_key)
            self._resolved = True
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = context_from_headers(scope.get("headers") or [])
        name = self._name or f"{scope.get('method', 'GET')} {scope.get('path', '/')}"[:_NAME_MAX]
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message.get("status", 0))
            await send(message)

        token = _current.set(ctx)
        try:
            with _traced(ctx, name, self._get_client(), proxy_root=self._proxy_root) as span:
                await self.app(scope, receive, send_and_watch)
                if span is not None and status >= 500:
                    span.update(level="ERROR", status_message=f"HTTP {status}")
        finally:
            _current.reset(token)
