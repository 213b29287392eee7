"""What the proxy does with one request, decided from its head alone.

``plan_request`` is a pure function: from the request head, the routing tables in force and
the proxy's settings (and a ``Chance`` for its random draws and fresh ids) it returns either
a ``Refusal`` (answer this status, send nothing upstream) or a ``Forward`` (this release,
this arm, this upstream, these request headers, this shadow decision). It reads no clock
and does no I/O (the tries left to a client that forces its arm with wrong tokens are
kept, with their clock, by the ``FailedAttempts`` in its settings); ``proxy.app`` carries
the plan out.

The head is held to HTTP/1.1's rules before anything is sent on (RFC 9112): the path is
routed and sent without dot segments (``proxy.target``), ``Host`` must be there once and
valid, ``Transfer-Encoding`` may only be ``chunked`` alone and never beside
``Content-Length``.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final, Protocol

from coalmine.shared.conventions import (
    ADMIN_TOKEN_HEADER,
    ARM_HEADER,
    FORCE_ARM_HEADER,
    PROMPT_LABEL_HEADER,
    REQUEST_ID_HEADER,
    SAMPLED_HEADER,
    TRACEPARENT_HEADER,
)
from coalmine.shared.routing_tables.table import RoutingTable, ShadowRoute
from coalmine.shared.sampling import is_sampled
from policies.domain import Arm
from proxy.assign import arm_at_random, arm_for_key
from proxy.headers import (
    COALMINE_PREFIX,
    DROPPED_FROM_CLIENT,
    Headers,
    TraceContext,
    connection_tokens,
    cookie_value,
    host_is_valid,
    new_request_id,
    new_span_id,
    new_trace_id,
    request_id,
    sticky_cookie,
    trace_context,
)
from proxy.routes import Release, Releases
from proxy.target import BadPathError, target_path
from proxy.throttle import FailedAttempts

SMALL_BODY_BYTES: Final = 64 * 1024
"""A request body of known length up to this size is read whole before it is sent on
(one write upstream instead of a chunk stream); larger ones stream."""

_FORCE: Final = FORCE_ARM_HEADER.encode()
_TOKEN: Final = ADMIN_TOKEN_HEADER.encode()
_TRACEPARENT: Final = TRACEPARENT_HEADER.encode()
_REQUEST_ID: Final = REQUEST_ID_HEADER.encode()
_ARM: Final = ARM_HEADER.encode()
_LABEL: Final = PROMPT_LABEL_HEADER.encode()
_CANARY: Final = Arm.CANARY
_new_tuple = tuple.__new__
"""What a named tuple's ``__new__`` calls, without the Python frame of its own."""
_FORCEABLE: Final = {Arm.BASELINE.value: Arm.BASELINE, Arm.CANARY.value: Arm.CANARY}
_ARM_HEADERS: Final = {arm: (_ARM, arm.value.encode()) for arm in Arm}
_SAMPLED_HEADERS: Final = {
    True: (SAMPLED_HEADER.encode(), b"1"),
    False: (SAMPLED_HEADER.encode(), b"0"),
}

# headers read as text into the field of the same meaning, the last one sent winning
_TEXT_FIELDS: Final = {
    _TRACEPARENT: "traceparent",
    _REQUEST_ID: "request_id",
    _TOKEN: "token",
    b"x-forwarded-for": "forwarded_for",
    b"x-forwarded-proto": "forwarded_proto",
}


class Chance(Protocol):
    """Where a plan's random draws and fresh ids come from."""

    def percent(self) -> float:
        """A uniform draw in [0, 100)."""

    def new_id(self) -> str:
        """A fresh request id or sticky key."""

    def new_trace_id(self) -> str:
        """A fresh W3C trace id."""

    def new_span_id(self) -> str:
        """A fresh W3C span id."""


class SystemChance:
    """The process's random numbers and the operating system's random bytes."""

    def percent(self) -> float:
        return random.random() * 100.0

    new_id = staticmethod(new_request_id)
    new_trace_id = staticmethod(new_trace_id)
    new_span_id = staticmethod(new_span_id)


# not frozen: one is made for every request, and a frozen dataclass sets each of
# its fields through object.__setattr__
@dataclass(slots=True)
class RequestHead:
    """What the plan reads of a request: everything that arrives before its body."""

    method: str
    path: str
    """The decoded path as the server gave it; the plan routes on ``target``'s path once
    its dot segments are removed."""
    target: str
    """Path and query as the client sent them (the raw path, read as latin-1)."""
    scheme: str
    client: str | None
    """The client's address, when the server knows it."""
    headers: Headers
    """As ASGI gives them: lower-case byte names, in the order sent."""
    http_version: str = "1.1"
    arrival_ns: int = 0
    """When the request arrived, in nanoseconds since the epoch: it picks the score
    sample's rate in force."""

    @classmethod
    def of(cls, scope: Mapping[str, Any], arrival_ns: int = 0) -> RequestHead:
        """The head of an ASGI ``http`` scope that arrived at ``arrival_ns``."""
        path: str = scope["path"]
        raw_path: bytes = scope.get("raw_path") or path.encode()
        query: bytes = scope.get("query_string", b"")
        # raw_path holds no query by the ASGI spec; some servers put it in all the same
        target = raw_path.partition(b"?")[0].decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        client = scope.get("client")
        # by position, in the order of the fields (keywords cost twice as much)
        return cls(
            scope["method"],
            path,
            target,
            scope.get("scheme", "http"),
            client[0] if client else None,
            scope["headers"],
            scope.get("http_version", "1.1"),
            arrival_ns,
        )


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """The proxy's settings that a plan reads."""

    admin_token: bytes | None = None
    """The token a request must carry to force its arm; None: no request may."""
    max_header_bytes: int = 65536
    """Requests whose headers add up to more are refused with 431."""
    force_arm_attempts: FailedAttempts | None = None
    """The wrong admin tokens each client has sent, and how long it must wait once it has
    sent too many (429); None: no limit."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer the client with a JSON error of the proxy's own; nothing goes upstream."""

    status: int
    code: str
    """The ``error.code`` of the answer."""
    message: str
    request_id: str | None
    """Echoed in the answer; None when the request was refused before it had one."""
    reason: str
    """The ``reason`` label of the refused-requests metric."""
    retry_after: int | None = None
    """Seconds for the answer's ``Retry-After``, when the client may try again later."""


@dataclass(frozen=True, slots=True)
class ShadowPlan:
    """A copy of the request for staging, to be sent once its body is complete."""

    route: ShadowRoute
    headers: Headers
    """The client's headers as forwarded, without the primary's coalmine headers."""
    prompt_label: str | None
    """The canary's prompt label: staging runs the candidate."""


# not frozen: one is made for every request, and a frozen dataclass sets each of
# its fields through object.__setattr__
@dataclass(slots=True)
class Forward:
    """Send the request to one arm's upstream, and maybe a copy to staging."""

    release: str
    arm: Arm
    upstream: str
    """The arm's base URL: its upstream, or the proxy's application."""
    method: str
    path: str
    target: str
    """Path and query, appended to the upstream's base URL."""
    headers: Headers
    """The request headers sent upstream, in order."""
    content_length: int | None
    """The body's length as the client declared it (its header is in ``headers``)."""
    request_id: str
    trace: TraceContext
    prompt_label: str | None
    """The arm's prompt label, sent upstream and recorded with the outcome."""
    set_cookie: bytes | None
    """A ``Set-Cookie`` added to the response: the sticky key of a new user."""
    timeout: dict[str, float]
    body_limit: int
    """Bytes of request body past which the request is refused with 413."""
    read_whole: bool
    """Read the body whole before sending (small and of known length, or none); else
    stream it."""
    shadow: ShadowPlan | None
    shadow_dropped: bool
    """The request was sampled for a copy, but its declared length is over the copy's
    limit: counted as dropped, not sent."""
    sampled: bool = True
    """The request is in its release's score sample (its copy for staging too)."""

    @property
    def url(self) -> str:
        return self.upstream.rstrip("/") + self.target


class _Incoming:
    """The request headers the plan looks at, gathered in one pass. Slots, every one
    set at once: a field read off the class, for a header not sent, costs four times a
    slot's read, and a request reads a dozen."""

    __slots__ = (
        "bad_host",
        "bad_length",
        "chunked",
        "codings",
        "content_length",
        "cookie",
        "force",
        "forwarded",
        "forwarded_for",
        "forwarded_proto",
        "host",
        "hosts",
        "request_id",
        "size",
        "sticky",
        "token",
        "traceparent",
    )

    def __init__(self) -> None:
        self.sticky: str | None = None
        self.cookie: str | None = None
        self.force: str | None = None
        self.token: str | None = None
        self.traceparent: str | None = None
        self.request_id: str | None = None
        self.content_length: int | None = None
        self.bad_length = False
        self.chunked = False
        self.forwarded_for: str | None = None
        self.forwarded_proto: str | None = None
        self.host: str | None = None
        self.hosts = 0
        self.bad_host = False
        self.codings: list[str] | None = None
        """The transfer codings of every ``Transfer-Encoding``, in order; None: none
        sent. Never changed in place: replaced by a new list."""
        self.size = 0
        self.forwarded: Headers = []
        """The client's headers as forwarded (without the ``X-Forwarded-*`` the proxy
        adds)."""

    def add_cookie(self, text: str) -> None:
        self.cookie = text if self.cookie is None else f"{self.cookie}; {text}"

    def add_length(self, value: bytes) -> None:
        """One ``Content-Length``: a bad or a second, different one makes the length bad."""
        try:
            length = int(value)
        except ValueError:
            self.bad_length = True
            return
        if length < 0 or self.content_length not in (None, length):
            self.bad_length = True
        self.content_length = length

    def add_host(self, value: bytes) -> None:
        self.hosts += 1
        self.host = value.decode("latin-1")
        self.bad_host = self.bad_host or not host_is_valid(value)

    def add_codings(self, value: bytes) -> None:
        codings = [part.strip(b" \t").lower().decode("latin-1") for part in value.split(b",")]
        self.codings = [*(self.codings or []), *codings]


# What the one pass over the request headers does with a name, besides forwarding it or
# not: an ordinary name (not here) is forwarded unless it is hop-by-hop or a coalmine one.
_TEXT, _COOKIE, _LENGTH, _HOST, _CODINGS, _FORCE_ARM, _CONNECTION, _FORWARDED_HOST = range(8)
_ROLES: Final = {
    **dict.fromkeys(_TEXT_FIELDS, _TEXT),
    b"cookie": _COOKIE,
    b"content-length": _LENGTH,
    b"host": _HOST,
    b"transfer-encoding": _CODINGS,
    _FORCE: _FORCE_ARM,
    b"connection": _CONNECTION,
    b"x-forwarded-host": _FORWARDED_HOST,
}
_X_FORWARDED_FOR: Final = b"x-forwarded-for"


def _gather(  # noqa: C901, PLR0912 (one pass over the headers, in line: a call a header would cost more)
    headers: Headers, sticky_header: bytes | None, client_known: bool
) -> _Incoming:
    """The headers the plan reads, and in ``forwarded`` those sent on as
    ``request_headers_for_upstream`` keeps them (``x-forwarded-for`` replaced when the
    client is known, ``x-forwarded-host`` when a Host came), in the same pass."""
    seen = _Incoming()
    kept: Headers = []
    connection = forwarded_host = False
    for pair in headers:
        name, value = pair
        role = _ROLES.get(name)
        if role is None:
            if name == sticky_header:
                seen.sticky = value.decode("latin-1")
            if name not in DROPPED_FROM_CLIENT and not name.startswith(COALMINE_PREFIX):
                kept.append(pair)
            continue
        if name == sticky_header:
            seen.sticky = value.decode("latin-1")
        elif role == _TEXT:
            setattr(seen, _TEXT_FIELDS[name], value.decode("latin-1"))
        elif role == _COOKIE:
            seen.add_cookie(value.decode("latin-1"))
        elif role == _LENGTH:
            seen.add_length(value)
        elif role == _HOST:
            seen.add_host(value)
        elif role == _CODINGS:
            seen.add_codings(value)
        elif role == _FORCE_ARM:
            seen.force = value.decode("latin-1").strip().lower()
        if role == _CONNECTION:
            connection = True
        elif role == _FORWARDED_HOST:
            forwarded_host = True
            kept.append(pair)
        elif name == _X_FORWARDED_FOR:
            if not client_known:
                kept.append(pair)
        elif name not in DROPPED_FROM_CLIENT and not name.startswith(COALMINE_PREFIX):
            kept.append(pair)
    # the names' and values' lengths summed without a Python step a header
    seen.size = sum(map(len, chain.from_iterable(headers))) + 4 * len(headers)
    seen.chunked = seen.codings == ["chunked"]
    if forwarded_host and seen.host is not None:
        kept = [pair for pair in kept if pair[0] != b"x-forwarded-host"]
    if connection:
        named = connection_tokens(headers)
        kept = [pair for pair in kept if pair[0] not in named]
    seen.forwarded = kept
    return seen


def plan_request(  # noqa: C901, PLR0912, PLR0915 (the common path in line: calls cost as much as the rest)
    head: RequestHead, releases: Releases, settings: PlanSettings, chance: Chance
) -> Refusal | Forward:
    """What to do with a request, from its head and the routing tables in force."""
    raw_path, question, query = head.target.partition("?")
    if "." not in raw_path and "%" not in raw_path and raw_path.startswith("/"):
        path_raw = path_decoded = raw_path  # nothing to resolve or decode
    else:
        try:
            path = target_path(raw_path)
        except BadPathError as error:
            return Refusal(400, "bad_path", str(error), None, "bad_request")
        path_raw, path_decoded = path
    release = releases.match(path_decoded)
    if release is None:
        message = f"no release serves the path {path_decoded!r}"
        return Refusal(404, "no_release", message, None, "no_release")
    seen = _gather(head.headers, release.sticky_header, head.client is not None)
    incoming_id = seen.request_id
    rid = chance.new_id() if incoming_id is None else request_id(incoming_id, chance.new_id)
    limit = release.body_limit
    expected = seen.content_length
    if (
        seen.size > settings.max_header_bytes
        or seen.bad_length
        or (expected is not None and expected > limit)
        or seen.hosts != 1
        or seen.bad_host
        or seen.codings is not None
    ):  # the checks' common outcome, in line: nothing to refuse
        refused = _refused_head(seen, limit, settings, rid) or _refused_framing(head, seen, rid)
        if refused is not None:
            return refused
    table = release.table  # read once: the refresher may swap it meanwhile
    routed = release.routed_cache
    if routed is None or routed.table is not table:
        routed = release.routed(table)
    if seen.force is not None:
        forced = _forced_arm(seen, settings, head.client or "", rid)
        if isinstance(forced, Refusal):
            return forced
        arm, set_cookie = forced, None
    elif release.sticky_header is not None and seen.sticky:
        arm, set_cookie = arm_for_key(release.name, seen.sticky, routed.canary_weight), None
    else:
        arm, set_cookie = _assign(head, seen, release, routed.canary_weight, chance)
    route = routed.canary if arm is _CANARY else routed.baseline
    traceparent = seen.traceparent
    if traceparent is None:
        trace_id, span_id = chance.new_trace_id(), chance.new_span_id()
        trace = _new_tuple(TraceContext, (trace_id, None, span_id, "01"))
        sent_traceparent = f"00-{trace_id}-{span_id}-01"
    else:
        trace = trace_context(traceparent, chance.new_trace_id, chance.new_span_id)
        trace_id = trace[0]
        sent_traceparent = trace.traceparent()
    # the rate in force at the request's arrival, not when the table was read: every
    # proxy switches rates at the same instant. A release no rollout has routed yet
    # (version 0: the policy's own table) samples nothing: nothing judges it, and a
    # busy one would have Langfuse reads start on a burst of tagged traces.
    if routed.score_sample:
        sampled = is_sampled(trace_id, table.sample_rate(head.arrival_ns // 1_000_000_000))
    else:
        sampled = routed.version > 0
    # _forwarded_headers, in line
    forwarded = seen.forwarded
    client = head.client
    if client is not None:
        if seen.forwarded_for:
            client = f"{seen.forwarded_for}, {client}"
        forwarded.append((b"x-forwarded-for", client.encode("latin-1")))
    if seen.forwarded_proto is None:
        forwarded.append((b"x-forwarded-proto", head.scheme.encode()))
    if seen.host:
        forwarded.append((b"x-forwarded-host", seen.host.encode("latin-1")))
    headers = [
        *forwarded,
        release.release_header,
        _ARM_HEADERS[arm],
        _SAMPLED_HEADERS[sampled],
        (_REQUEST_ID, rid.encode()),
        (_TRACEPARENT, sent_traceparent.encode()),
    ]
    if route.label_header is not None:
        headers.append(route.label_header)
    if expected is not None:
        headers.append((b"content-length", str(expected).encode()))
    shadow, shadow_dropped = (
        (None, False)
        if routed.shadow is None
        else _shadow(table, head.method, expected, forwarded, chance)
    )
    upstream = route.upstream
    # by position, in the order of Forward's fields: binding 17 keywords cost more than
    # all the rest of its making
    return Forward(
        release.name,
        arm,
        releases.app_url if upstream is None else upstream,
        head.method,
        path_decoded,
        path_raw + question + query,
        headers,
        expected,
        rid,
        trace,
        route.prompt_label,
        set_cookie,
        release.timeout,
        limit,
        not seen.chunked and (expected is None or expected <= SMALL_BODY_BYTES),
        shadow,
        shadow_dropped,
        sampled,
    )


def _refused_head(seen: _Incoming, limit: int, settings: PlanSettings, rid: str) -> Refusal | None:
    """A refusal for headers too large, a bad length or a body declared too large."""
    if seen.size > settings.max_header_bytes:
        message = f"request headers are {seen.size} bytes; the limit is {settings.max_header_bytes}"
        return Refusal(431, "headers_too_large", message, rid, "headers_too_large")
    if seen.bad_length:
        return Refusal(400, "bad_content_length", "Content-Length is not valid", rid, "bad_request")
    if seen.content_length is not None and seen.content_length > limit:
        message = f"request body is {seen.content_length} bytes; the limit is {limit}"
        return Refusal(413, "body_too_large", message, rid, "body_too_large")
    return None


def _assign(
    head: RequestHead, seen: _Incoming, release: Release, weight: float, chance: Chance
) -> tuple[Arm, bytes | None]:
    """The request's arm by its stickiness key, and the ``Set-Cookie`` that keeps a new
    user in it."""
    if not release.sticky:
        return arm_at_random(weight, chance.percent()), None
    if release.sticky_header is not None:
        key = seen.sticky
        if key:
            return arm_for_key(release.name, key, weight), None
        return arm_at_random(weight, chance.percent()), None
    cookie_name = release.sticky_cookie or ""
    known = cookie_value(seen.cookie, cookie_name) if seen.cookie else None
    if known is not None:
        return arm_for_key(release.name, known, weight), None
    key = chance.new_id()
    secure = (seen.forwarded_proto or head.scheme) == "https"
    return arm_for_key(release.name, key, weight), sticky_cookie(cookie_name, key, secure=secure)


def _refused_framing(head: RequestHead, seen: _Incoming, rid: str) -> Refusal | None:
    """A refusal for a missing, repeated or bad ``Host`` (RFC 9112 section 3.2) or a
    transfer coding the proxy does not decode (section 6.1)."""
    if seen.hosts > 1:
        return Refusal(400, "bad_host", "more than one Host header", rid, "bad_request")
    if seen.hosts == 0 and head.http_version == "1.1":
        return Refusal(
            400, "bad_host", "an HTTP/1.1 request needs a Host header", rid, "bad_request"
        )
    if seen.bad_host:
        message = f"Host {seen.host!r} is not a valid host[:port]"
        return Refusal(400, "bad_host", message, rid, "bad_request")
    if seen.codings is None:
        return None
    if seen.content_length is not None or seen.bad_length:
        message = "Transfer-Encoding and Content-Length together"
        return Refusal(400, "bad_framing", message, rid, "bad_request")
    if not seen.chunked:
        message = (
            f"Transfer-Encoding {', '.join(seen.codings)!r}: only 'chunked' alone is supported"
        )
        return Refusal(
            501, "unsupported_transfer_coding", message, rid, "unsupported_transfer_coding"
        )
    return None


def _forced_arm(seen: _Incoming, settings: PlanSettings, client: str, rid: str) -> Arm | Refusal:
    """The arm an operator forced, or the refusal: a wrong admin token costs the client a
    try, and a client with none left is told when to come back."""
    attempts = settings.force_arm_attempts
    wait = attempts.wait(client) if attempts is not None else None
    if wait is not None:
        message = f"too many wrong {ADMIN_TOKEN_HEADER}; try again in {wait} s"
        return Refusal(429, "force_arm_limited", message, rid, "force_arm_limited", wait)
    given = (seen.token or "").encode("latin-1")
    admin_token = settings.admin_token
    if admin_token is None or not hmac.compare_digest(given, admin_token):
        if attempts is not None:
            attempts.failed(client)
        message = f"{FORCE_ARM_HEADER} needs a valid {ADMIN_TOKEN_HEADER}"
        return Refusal(403, "force_arm_refused", message, rid, "force_arm_refused")
    arm = _FORCEABLE.get(seen.force or "")
    if arm is None:
        message = f"{FORCE_ARM_HEADER} must be 'baseline' or 'canary'"
        return Refusal(403, "force_arm_refused", message, rid, "force_arm_refused")
    return arm


def _shadow(
    table: RoutingTable,
    method: str,
    content_length: int | None,
    headers: Headers,
    chance: Chance,
) -> tuple[ShadowPlan | None, bool]:
    """The copy for staging, if this request is in the mirrored sample, and whether a
    sampled request is dropped for its declared length."""
    route = table.shadow
    if route is None or method not in route.methods or not chance.percent() < route.percent:
        return None, False
    if content_length is not None and content_length > route.max_body_bytes:
        return None, True
    return ShadowPlan(route, headers, table.canary.prompt_label), False
