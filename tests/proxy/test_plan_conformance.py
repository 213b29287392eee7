"""The plan holds a request head to HTTP's rules: the path it routes is the path it sends,
one valid Host, no transfer coding but chunked, one request id, and a bounded number of
guesses at the admin token."""

from __future__ import annotations

import pytest

from policies.domain import Arm
from proxy.plan import PlanSettings, Refusal
from proxy.routes import Releases
from proxy.throttle import FailedAttempts
from tests.proxy.proxy_support import make_policy
from tests.proxy.test_plan import (
    APP,
    CANARY,
    FRESH_ID,
    STABLE,
    TOKEN,
    forward,
    head,
    plan,
    releases,
)

ADMIN = "http://admin.test/base"


def two_releases() -> Releases:
    """``support`` at ``/`` and ``admin`` at ``/admin``, whose upstream has a base path."""
    return Releases(
        [
            make_policy(stable=STABLE, canary=CANARY),
            make_policy(
                stable=ADMIN,
                canary=ADMIN,
                name="admin",
                routing="  stickiness: {header: x-user-id}\n  pathPrefix: /admin",
            ),
        ],
        app_url=APP,
    )


# --------------------------------------------------------------------------- the path


@pytest.mark.parametrize(
    ("target", "release", "path", "url"),
    [
        ("/v1/chat", "support", "/v1/chat", "http://stable.test/v1/chat"),
        ("/v1/../admin", "admin", "/admin", "http://admin.test/base/admin"),
        ("/v1/%2e%2e/admin/x?a=1", "admin", "/admin/x", "http://admin.test/base/admin/x?a=1"),
        ("/v1/.%2E/admin", "admin", "/admin", "http://admin.test/base/admin"),
        ("/admin/../v1", "support", "/v1", "http://stable.test/v1"),
        ("/admin/./x/.", "admin", "/admin/x/", "http://admin.test/base/admin/x/"),
        ("/admin/x/y/..", "admin", "/admin/x/", "http://admin.test/base/admin/x/"),
        ("/admin//x", "admin", "/admin//x", "http://admin.test/base/admin//x"),
        ("/v1/caf%C3%A9/..", "support", "/v1/", "http://stable.test/v1/"),
        ("/v1/caf%C3%A9", "support", "/v1/caf\u00e9", "http://stable.test/v1/caf%C3%A9"),
        ("/v1/...", "support", "/v1/...", "http://stable.test/v1/..."),
    ],
)
def test_the_path_routed_is_the_path_sent(target: str, release: str, path: str, url: str) -> None:
    decided = forward(plan(head(("x-user-id", "u"), path=target), two_releases()))
    assert (decided.release, decided.path, decided.url) == (release, path, url)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/..", "climbs above the root"),
        ("/admin/../../x", "climbs above the root"),
        ("/admin/%2e%2e/%2E%2E/etc", "climbs above the root"),
        ("/v1/..%2f..%2fadmin", "hides a dot segment behind an encoded '/'"),
        ("/v1/%2e%2e%2Fadmin", "hides a dot segment behind an encoded '/'"),
        ("v1/chat", "does not start with '/'"),
        ("*", "does not start with '/'"),
    ],
)
def test_a_path_that_leaves_the_root_is_refused(target: str, why: str) -> None:
    decided = plan(head(("x-user-id", "u"), path=target), two_releases())
    assert isinstance(decided, Refusal), decided
    assert (decided.status, decided.code, decided.reason) == (400, "bad_path", "bad_request")
    assert why in decided.message


# --------------------------------------------------------------------------- Host


@pytest.mark.parametrize(
    ("headers", "host", "version", "message"),
    [
        ([], None, "1.1", "an HTTP/1.1 request needs a Host header"),
        ([("host", "a.test"), ("host", "a.test")], None, "1.1", "more than one Host header"),
        ([("host", "a.test"), ("host", "b.test")], None, "1.0", "more than one Host header"),
        ([("host", "a b")], None, "1.1", "Host 'a b' is not a valid host[:port]"),
        ([("host", "a.test:80x")], None, "1.1", "Host 'a.test:80x' is not a valid host[:port]"),
        ([("host", "a@b.test")], None, "1.1", "Host 'a@b.test' is not a valid host[:port]"),
        ([("host", "a.test/x")], None, "1.1", "Host 'a.test/x' is not a valid host[:port]"),
        ([("host", "[::1")], None, "1.1", "Host '[::1' is not a valid host[:port]"),
        ([("host", "[zz::1]")], None, "1.1", "Host '[zz::1]' is not a valid host[:port]"),
    ],
)
def test_a_missing_repeated_or_bad_host_is_refused(
    headers: list[tuple[str, str]], host: str | None, version: str, message: str
) -> None:
    request = head(("x-user-id", "u"), *headers, host=host, http_version=version)
    assert plan(request) == Refusal(400, "bad_host", message, FRESH_ID, "bad_request")


@pytest.mark.parametrize(
    ("host", "version"),
    [
        ("proxy.test", "1.1"),
        ("proxy.test:8080", "1.1"),
        ("127.0.0.1:80", "1.1"),
        ("[::1]:8080", "1.1"),
        ("[v7.fe80::1]", "1.1"),
        ("xn--caf-dma.test", "1.1"),
        ("", "1.1"),  # a target without authority: an empty Host is what RFC 9112 asks for
        (None, "1.0"),
    ],
)
def test_a_valid_host_is_accepted(host: str | None, version: str) -> None:
    request = head(
        ("x-user-id", "u"), ("x-forwarded-host", "forged.test"), host=host, http_version=version
    )
    if host is None:  # no Host: the client's own X-Forwarded-Host is all there is
        host = "forged.test"
    decided = forward(plan(request))
    forwarded_host = [value for name, value in decided.headers if name == b"x-forwarded-host"]
    assert forwarded_host == ([host.encode()] if host else [])


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize(
    "codings",
    [["gzip, chunked"], ["gzip", "chunked"], ["chunked, chunked"], ["identity"], [""]],
)
def test_a_transfer_coding_but_chunked_alone_is_not_implemented(codings: list[str]) -> None:
    request = head(("x-user-id", "u"), *(("transfer-encoding", value) for value in codings))
    decided = plan(request)
    assert isinstance(decided, Refusal), decided
    assert (decided.status, decided.code, decided.reason) == (
        501,
        "unsupported_transfer_coding",
        "unsupported_transfer_coding",
    )


def test_chunked_beside_a_content_length_is_refused() -> None:
    request = head(("transfer-encoding", "chunked"), ("content-length", "5"))
    assert plan(request) == Refusal(
        400,
        "bad_framing",
        "Transfer-Encoding and Content-Length together",
        FRESH_ID,
        "bad_request",
    )


@pytest.mark.parametrize("value", ["chunked", "Chunked", " chunked "])
def test_chunked_alone_streams(value: str) -> None:
    decided = forward(plan(head(("x-user-id", "u"), ("transfer-encoding", value))))
    assert decided.read_whole is False
    assert not any(name == b"transfer-encoding" for name, _ in decided.headers)


# --------------------------------------------------------------------------- request id


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ([("x-request-id", "req-1")], "req-1"),
        ([("x-request-id", "bad id")], FRESH_ID),
        ([("x-request-id", "req-1"), ("x-request-id", "req-2")], "req-2"),
        ([], FRESH_ID),
    ],
)
def test_exactly_one_request_id_goes_upstream(sent: list[tuple[str, str]], kept: str) -> None:
    decided = forward(plan(head(("x-user-id", "u"), *sent)))
    ids = [value for name, value in decided.headers if name == b"x-request-id"]
    assert (ids, decided.request_id) == ([kept.encode()], kept)


def test_a_shadow_copy_carries_no_client_request_id() -> None:
    shadow = 'shadow: {upstream: "http://staging.test", percent: 10, maxBodyBytes: 100}'
    request = head(("x-user-id", "u"), ("x-request-id", "req-1"))
    decided = forward(plan(request, releases(shadow=shadow), 5.0))
    assert decided.shadow is not None
    assert not any(name == b"x-request-id" for name, _ in decided.shadow.headers)


# --------------------------------------------------------------------------- force-arm guesses


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def forcing(settings: PlanSettings, token: str, client: str = "198.51.100.7") -> int | Arm:
    """The arm a forced request gets, or the status it is refused with."""
    request = head(
        ("x-user-id", "alice"),
        ("x-coalmine-force-arm", "baseline"),
        ("x-coalmine-admin-token", token),
        client=client,
    )
    decided = plan(request, releases(), settings=settings)
    return decided.status if isinstance(decided, Refusal) else decided.arm


def test_wrong_admin_tokens_are_limited_per_client() -> None:
    clock = Clock()
    settings = PlanSettings(
        admin_token=TOKEN, force_arm_attempts=FailedAttempts(2, 60.0, clock=clock)
    )
    good = TOKEN.decode()
    assert [forcing(settings, "guess") for _ in range(2)] == [403, 403]
    request = head(
        ("x-coalmine-force-arm", "canary"),
        ("x-coalmine-admin-token", good),
        client="198.51.100.7",
    )
    limited = plan(request, releases(), settings=settings)  # the right token waits too
    assert limited == Refusal(
        429,
        "force_arm_limited",
        "too many wrong x-coalmine-admin-token; try again in 60 s",
        FRESH_ID,
        "force_arm_limited",
        retry_after=60,
    )
    assert forcing(settings, good, client="203.0.113.9") is Arm.BASELINE  # another client
    clock.now += 30
    assert forcing(settings, good) == 429
    clock.now += 30
    assert forcing(settings, good) is Arm.BASELINE  # a try back after a minute
    assert forcing(settings, good) is Arm.BASELINE  # the right token costs none
    assert [forcing(settings, "guess") for _ in range(2)] == [403, 429]


def test_no_limit_without_failed_attempts() -> None:
    settings = PlanSettings(admin_token=TOKEN)
    assert {forcing(settings, "guess") for _ in range(20)} == {403}
