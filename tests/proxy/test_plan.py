"""The routing plan: what the proxy decides from a request's head, as tables of literal
requests and literal decisions."""

from __future__ import annotations

from typing import Any

import pytest

from coalmine.shared.routing_tables.table import ShadowRoute
from policies.domain import Arm
from proxy.headers import Headers, TraceContext
from proxy.plan import (
    Forward,
    PlanSettings,
    Refusal,
    RequestHead,
    ShadowPlan,
    plan_request,
)
from proxy.routes import Releases
from tests.proxy.proxy_support import make_policy

STABLE = "http://stable.test"
CANARY = "http://canary.test/"
STAGING = "http://staging.test"
APP = "http://app.test:8000"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
FRESH_ID = "5f1d4c0e9a8b7c6d5e4f3a2b1c0d9e8f"
FRESH_TRACE = "0123456789abcdef0123456789abcdef"
FRESH_SPAN = "fedcba9876543210"
TOKEN = b"qa-token-1234567890-abcdefghijklmn"
TIMEOUT = {"connect": 5.0, "read": 300.0, "write": 300.0, "pool": 5.0}
TEN_MIB = 10 * 1024 * 1024
NEW_USER_COOKIE = f"cm_user={FRESH_ID}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax".encode()
SHADOW = 'shadow: {upstream: "http://staging.test", percent: 10, maxBodyBytes: 100}'


class Scripted:
    """Chance that answers from a script: the draws in turn, and fixed fresh ids."""

    def __init__(self, *draws: float) -> None:
        self.draws = list(draws)

    def percent(self) -> float:
        return self.draws.pop(0)

    def new_id(self) -> str:
        return FRESH_ID

    def new_trace_id(self) -> str:
        return FRESH_TRACE

    def new_span_id(self) -> str:
        return FRESH_SPAN


def releases(
    routing: str = "  stickiness: {header: x-user-id}", shadow: str = "", weight: float = 50.0
) -> Releases:
    policy = make_policy(stable=STABLE, canary=CANARY, routing=routing, shadow=shadow)
    return Releases([policy], {"support": weight}, app_url=APP)


def head(
    *headers: tuple[str, str],
    method: str = "POST",
    path: str = "/v1/chat",
    scheme: str = "http",
    client: str | None = "127.0.0.5",
    http_version: str = "1.1",
    host: str | None = "proxy.test",
) -> RequestHead:
    """A request head; ``host`` comes first unless a ``Host`` is among ``headers``."""
    raw: Headers = [(name.encode(), value.encode()) for name, value in headers]
    if host is not None and not any(name == b"host" for name, _ in raw):
        raw.insert(0, (b"host", host.encode()))
    return RequestHead(method, path, path, scheme, client, raw, http_version)


def plan(
    request: RequestHead,
    routing: Releases | None = None,
    *draws: float,
    settings: PlanSettings | None = None,
) -> Refusal | Forward:
    chance = Scripted(*draws)
    decided = plan_request(request, routing or releases(), settings or PlanSettings(), chance)
    assert chance.draws == [], "a draw was scripted that the plan did not take"
    return decided


def forward(decided: Refusal | Forward) -> Forward:
    assert isinstance(decided, Forward), decided
    return decided


# --------------------------------------------------------------------------- the head


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (
            {
                "method": "GET",
                "path": "/v1/caf\u00e9",
                "raw_path": b"/v1/caf%C3%A9",
                "query_string": b"a=1&b=2",
                "scheme": "https",
                "client": ("127.0.0.9", 50123),
                "headers": [(b"accept", b"*/*")],
            },
            RequestHead(
                "GET",
                "/v1/caf\u00e9",
                "/v1/caf%C3%A9?a=1&b=2",
                "https",
                "127.0.0.9",
                [(b"accept", b"*/*")],
            ),
        ),
        (
            {"method": "POST", "path": "/v1/chat", "headers": []},
            RequestHead("POST", "/v1/chat", "/v1/chat", "http", None, []),
        ),
        (  # a server that leaves the query in raw_path, and an HTTP/1.0 request
            {
                "method": "GET",
                "path": "/x",
                "raw_path": b"/x?a=1",
                "query_string": b"a=1",
                "http_version": "1.0",
                "headers": [],
            },
            RequestHead("GET", "/x", "/x?a=1", "http", None, [], "1.0"),
        ),
        (
            {
                "method": "POST",
                "path": "/x",
                "raw_path": None,
                "query_string": b"",
                "client": None,
                "headers": [],
            },
            RequestHead("POST", "/x", "/x", "http", None, []),
        ),
    ],
)
def test_the_head_of_an_asgi_scope(scope: dict[str, Any], expected: RequestHead) -> None:
    assert RequestHead.of(scope) == expected


# --------------------------------------------------------------------------- one whole plan


def test_a_plan_in_full() -> None:
    request = head(
        ("host", "proxy.test"),
        ("x-user-id", "alice"),
        ("accept", "*/*"),
        ("x-coalmine-arm", "baseline"),
        ("x-coalmine-anything", "forged"),
        ("connection", "keep-alive"),
        ("content-length", "2"),
        ("traceparent", f"00-{TRACE}-{SPAN}-01"),
        ("x-request-id", "req-1"),
    )
    decided = plan(request)
    assert decided == Forward(
        release="support",
        arm=Arm.CANARY,  # alice's point for "support" is 0.94, under 50
        upstream=CANARY,
        method="POST",
        path="/v1/chat",
        target="/v1/chat",
        headers=[
            (b"x-user-id", b"alice"),
            (b"accept", b"*/*"),
            (b"x-forwarded-for", b"127.0.0.5"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"proxy.test"),
            (b"x-coalmine-release", b"support"),
            (b"x-coalmine-arm", b"canary"),
            (b"x-coalmine-sampled", b"0"),
            (b"x-request-id", b"req-1"),
            (b"traceparent", f"00-{TRACE}-{FRESH_SPAN}-01".encode()),
            (b"x-coalmine-prompt-label", b"canary"),
            (b"content-length", b"2"),
        ],
        content_length=2,
        request_id="req-1",
        trace=TraceContext(TRACE, SPAN, FRESH_SPAN, "01"),
        prompt_label="canary",
        set_cookie=None,
        timeout=TIMEOUT,
        body_limit=TEN_MIB,
        read_whole=True,
        shadow=None,
        shadow_dropped=False,
        sampled=False,  # no rollout has routed the release: its policy's own table
    )
    assert forward(decided).url == "http://canary.test/v1/chat"


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("path", "release"),
    [
        ("/v1/chat", "support"),
        ("/billing", "billing"),
        ("/billing/invoices", "billing"),
        ("/billing?id=3", "billing"),
        ("/billingx", "support"),  # a prefix ends at a path segment
        ("/", "support"),
    ],
)
def test_the_longest_prefix_picks_the_release(path: str, release: str) -> None:
    both = Releases(
        [
            make_policy(stable=STABLE, canary=CANARY),
            make_policy(
                stable=STABLE,
                canary=CANARY,
                name="billing",
                routing="  stickiness: {header: x-user-id}\n  pathPrefix: /billing",
            ),
        ],
        app_url=APP,
    )
    decided = forward(plan(head(("x-user-id", "u"), path=path), both))
    assert (decided.release, decided.arm, decided.upstream) == (release, Arm.BASELINE, STABLE)


def test_no_release_is_refused_with_404() -> None:
    only_billing = Releases(
        [
            make_policy(
                stable=STABLE, canary=CANARY, name="billing", routing="  pathPrefix: /billing"
            )
        ],
        app_url=APP,
    )
    assert plan(head(path="/other"), only_billing) == Refusal(
        404, "no_release", "no release serves the path '/other'", None, "no_release"
    )


# --------------------------------------------------------------------------- arms


@pytest.mark.parametrize(
    ("routing", "headers", "draws", "arm", "set_cookie"),
    [
        # by header: the key's point against the weight (user-42: 56.5, alice: 0.94)
        ("  stickiness: {header: x-user-id}", [("x-user-id", "user-42")], [], Arm.BASELINE, None),
        ("  stickiness: {header: x-user-id}", [("x-user-id", "alice")], [], Arm.CANARY, None),
        ("  stickiness: {header: X-User-Id}", [("x-user-id", "alice")], [], Arm.CANARY, None),
        # no key, or an empty one: drawn afresh
        ("  stickiness: {header: x-user-id}", [], [49.9], Arm.CANARY, None),
        ("  stickiness: {header: x-user-id}", [("x-user-id", "")], [50.0], Arm.BASELINE, None),
        ("  stickiness: none", [("x-user-id", "alice")], [50.0], Arm.BASELINE, None),
        ("  stickiness: none", [], [0.0], Arm.CANARY, None),
        # by cookie: a known user keeps theirs (bob: 34.1), a new one gets a key and a cookie
        (
            "  stickiness: {cookie: cm_user}",
            [("cookie", "a=1; cm_user=user-42")],
            [],
            Arm.BASELINE,
            None,
        ),
        (
            "  stickiness: {cookie: cm_user}",
            [("cookie", "a=1"), ("cookie", "cm_user=bob")],
            [],
            Arm.CANARY,
            None,
        ),
        (
            "  stickiness: {cookie: cm_user}",
            [("cookie", "other=1")],
            [],
            Arm.CANARY,  # the fresh key's point is 13.6
            NEW_USER_COOKIE,
        ),
        (
            "  stickiness: {cookie: cm_user}",
            [("x-forwarded-proto", "https")],
            [],
            Arm.CANARY,
            NEW_USER_COOKIE + b"; Secure",
        ),
    ],
)
def test_the_arm_of_a_request(
    routing: str,
    headers: list[tuple[str, str]],
    draws: list[float],
    arm: Arm,
    set_cookie: bytes | None,
) -> None:
    decided = forward(plan(head(*headers), releases(routing), *draws))
    assert (decided.arm, decided.set_cookie) == (arm, set_cookie)
    expected = (CANARY, "canary") if arm is Arm.CANARY else (STABLE, "production")
    assert (decided.upstream, decided.prompt_label) == expected


def test_a_new_user_over_https_gets_a_secure_cookie() -> None:
    decided = forward(plan(head(scheme="https"), releases("  stickiness: {cookie: cm_user}")))
    assert decided.set_cookie is not None and decided.set_cookie.endswith(b"; Secure")


@pytest.mark.parametrize(
    ("configured", "headers", "outcome"),
    [
        (TOKEN, [("x-coalmine-force-arm", "Canary ")], "needs"),
        (None, [("x-coalmine-force-arm", "canary"), ("x-coalmine-admin-token", "")], "needs"),
        (
            TOKEN,
            [("x-coalmine-force-arm", "canary"), ("x-coalmine-admin-token", "qa-token")],
            "needs",
        ),
        (
            TOKEN,
            [("x-coalmine-force-arm", "shadow"), ("x-coalmine-admin-token", TOKEN.decode())],
            "must",
        ),
        (
            TOKEN,
            [("x-coalmine-force-arm", "Canary "), ("x-coalmine-admin-token", TOKEN.decode())],
            Arm.CANARY,
        ),
        (
            TOKEN,
            [("x-coalmine-force-arm", "baseline"), ("x-coalmine-admin-token", TOKEN.decode())],
            Arm.BASELINE,
        ),
    ],
)
def test_a_forced_arm_needs_the_admin_token(
    configured: bytes | None, headers: list[tuple[str, str]], outcome: Arm | str
) -> None:
    # alice is in the canary by her key: a forced baseline shows the force won
    request = head(("x-user-id", "alice"), ("x-request-id", "req-9"), *headers)
    decided = plan(request, releases(), settings=PlanSettings(admin_token=configured))
    messages = {
        "needs": "x-coalmine-force-arm needs a valid x-coalmine-admin-token",
        "must": "x-coalmine-force-arm must be 'baseline' or 'canary'",
    }
    if isinstance(outcome, Arm):
        assert forward(decided).arm is outcome
        assert (b"x-coalmine-arm", outcome.value.encode()) in forward(decided).headers
        assert not any(name == b"x-coalmine-admin-token" for name, _ in forward(decided).headers)
    else:
        assert decided == Refusal(
            403, "force_arm_refused", messages[outcome], "req-9", "force_arm_refused"
        )


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("headers", "refusal"),
    [
        (
            # 9 + 1010 + 4 bytes, x-user-id's 9 + 1 + 4 and host's 4 + 10 + 4
            [("x-padding", "a" * 1010)],
            Refusal(
                431,
                "headers_too_large",
                "request headers are 1055 bytes; the limit is 1024",
                FRESH_ID,
                "headers_too_large",
            ),
        ),
        (
            [("content-length", "abc")],
            Refusal(
                400, "bad_content_length", "Content-Length is not valid", FRESH_ID, "bad_request"
            ),
        ),
        (
            [("content-length", "-1")],
            Refusal(
                400, "bad_content_length", "Content-Length is not valid", FRESH_ID, "bad_request"
            ),
        ),
        (
            [("content-length", "5"), ("content-length", "6")],
            Refusal(
                400, "bad_content_length", "Content-Length is not valid", FRESH_ID, "bad_request"
            ),
        ),
        (
            [("content-length", str(TEN_MIB + 1)), ("x-request-id", "req-2")],
            Refusal(
                413,
                "body_too_large",
                f"request body is {TEN_MIB + 1} bytes; the limit is {TEN_MIB}",
                "req-2",
                "body_too_large",
            ),
        ),
    ],
)
def test_a_bad_head_is_refused(headers: list[tuple[str, str]], refusal: Refusal) -> None:
    request = head(("x-user-id", "u"), *headers)
    assert plan(request, settings=PlanSettings(max_header_bytes=1024)) == refusal


@pytest.mark.parametrize(
    ("headers", "read_whole"),
    [
        ([], True),
        ([("content-length", "5"), ("content-length", "5")], True),
        ([("content-length", "65536")], True),
        ([("content-length", "65537")], False),
        ([("transfer-encoding", "chunked")], False),
    ],
)
def test_a_small_body_of_known_length_is_read_whole(
    headers: list[tuple[str, str]], read_whole: bool
) -> None:
    assert forward(plan(head(("x-user-id", "u"), *headers))).read_whole is read_whole


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("headers", "client", "scheme", "expected"),
    [
        (
            [],
            "127.0.0.5",
            "http",
            [
                (b"x-forwarded-for", b"127.0.0.5"),
                (b"x-forwarded-proto", b"http"),
                (b"x-forwarded-host", b"proxy.test"),
            ],
        ),
        (
            [],
            None,
            "https",
            [(b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"proxy.test")],
        ),
        (
            [("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https")],
            "127.0.0.5",
            "http",
            [
                (b"x-forwarded-proto", b"https"),
                (b"x-forwarded-for", b"198.51.100.7, 127.0.0.5"),
                (b"x-forwarded-host", b"proxy.test"),
            ],
        ),
        (
            [("x-forwarded-host", "forged.test"), ("host", "proxy.test")],
            None,
            "http",
            [(b"x-forwarded-proto", b"http"), (b"x-forwarded-host", b"proxy.test")],
        ),
        (
            [
                ("x-coalmine-release", "other"),
                ("x-coalmine-shadow", "1"),
                ("X-Coalmine-Prompt-Label", "forged"),
                ("te", "trailers"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("expect", "100-continue"),
                ("accept", "*/*"),
            ],
            None,
            "http",
            [
                (b"accept", b"*/*"),
                (b"x-forwarded-proto", b"http"),
                (b"x-forwarded-host", b"proxy.test"),
            ],
        ),
    ],
)
def test_what_the_client_sent_and_what_goes_upstream(
    headers: list[tuple[str, str]], client: str | None, scheme: str, expected: Headers
) -> None:
    lowered = [(name.lower(), value) for name, value in headers]
    decided = forward(
        plan(head(*lowered, client=client, scheme=scheme), releases("  stickiness: none"), 99.0)
    )
    added = [
        (b"x-coalmine-release", b"support"),
        (b"x-coalmine-arm", b"baseline"),
        (b"x-coalmine-sampled", b"0"),
        (b"x-request-id", FRESH_ID.encode()),
        (b"traceparent", f"00-{FRESH_TRACE}-{FRESH_SPAN}-01".encode()),
        (b"x-coalmine-prompt-label", b"production"),
    ]
    assert decided.headers == expected + added


# --------------------------------------------------------------------------- shadow


@pytest.mark.parametrize(
    ("method", "headers", "draws", "mirrored", "dropped"),
    [
        ("POST", [], [5.0], True, False),
        ("POST", [], [10.0], False, False),  # 10 % mirrored: draws under 10
        ("GET", [], [], False, False),  # not a mirrored method: no draw at all
        ("POST", [("content-length", "100")], [5.0], True, False),
        ("POST", [("content-length", "101")], [5.0], False, True),
        ("POST", [("content-length", "101")], [50.0], False, False),  # not sampled
    ],
)
def test_the_shadow_decision(
    method: str, headers: list[tuple[str, str]], draws: list[float], mirrored: bool, dropped: bool
) -> None:
    request = head(("x-user-id", "alice"), ("accept", "*/*"), *headers, method=method, client=None)
    decided = forward(plan(request, releases(shadow=SHADOW), *draws))
    assert decided.shadow_dropped is dropped
    if not mirrored:
        assert decided.shadow is None
        return
    assert decided.shadow == ShadowPlan(
        route=ShadowRoute(upstream=STAGING, percent=10, methods=("POST",), max_body_bytes=100),
        headers=[
            (b"x-user-id", b"alice"),
            (b"accept", b"*/*"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"proxy.test"),
        ],
        prompt_label="canary",  # staging runs the candidate, whatever the request's arm
    )


def test_no_shadow_route_takes_no_draw() -> None:
    decided = forward(plan(head(("x-user-id", "alice")), releases()))
    assert (decided.shadow, decided.shadow_dropped) == (None, False)
