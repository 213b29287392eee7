"""The proxy on a real loopback port in front of real loopback upstreams."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from coalmine.shared.routing_tables.table import initial_table
from policies import Policy
from tests.proxy.proxy_support import (
    RunningProxy,
    Served,
    UpstreamServed,
    closed_port_url,
    make_policy,
    start_proxy,
    wait_until,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TOKEN = "qa-token-1234567890-abcdefghijklmn"


def _policy(stable: Served, canary: Served, **kwargs: str) -> Policy:
    return make_policy(stable=stable.base_url, canary=canary.base_url, **kwargs)


def test_upstream_sees_coalmine_headers_and_never_the_clients_forgeries(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_policy(stable[1], canary[1])], running, pins={"support": 100.0})
    with httpx.Client(base_url=proxy.url) as client:
        response = client.post(
            "/v1/chat?x=1",
            json={"q": "hi"},
            headers={
                "x-user-id": "alice",
                "x-coalmine-arm": "baseline",
                "x-coalmine-shadow": "1",
                "x-coalmine-prompt-label": "production",
                "x-coalmine-anything": "forged",
                "traceparent": f"00-{TRACE}-{SPAN}-01",
                "x-request-id": "req-1",
                "x-forwarded-for": "203.0.113.9",
            },
        )
    assert response.status_code == 200
    body = response.json()
    assert body["upstream"] == "canary"
    seen = canary[0].seen[-1]
    assert seen.path == "/v1/chat" and seen.query == "x=1"
    headers = seen.headers
    assert headers["x-coalmine-arm"] == "canary"
    assert headers["x-coalmine-release"] == "support"
    assert headers["x-coalmine-prompt-label"] == "canary"
    assert "x-coalmine-shadow" not in headers
    assert "x-coalmine-anything" not in headers
    assert headers["x-request-id"] == "req-1"
    version, trace, parent, flags = headers["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01") and parent != SPAN
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["host"] == canary[1].base_url.removeprefix("http://")
    assert json.loads(seen.body) == {"q": "hi"}
    assert stable[0].seen == []


@pytest.mark.slow
def test_split_and_stickiness_over_live_requests(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_policy(stable[1], canary[1])], running, pins={"support": 25.0})
    with httpx.Client(base_url=proxy.url) as client:
        arms = {
            client.get("/x", headers={"x-user-id": "bob"}).json()["upstream"] for _ in range(1000)
        }
        assert len(arms) == 1
        canary_users = sum(
            client.get("/x", headers={"x-user-id": f"user-{index}"}).json()["upstream"] == "canary"
            for index in range(2000)
        )
    # 2,000 users at 25%: mean 500, standard deviation 19.4; 4.5 sigma either side
    assert 413 <= canary_users <= 587
    proxy.wait_for(
        canary_users + (1000 if arms == {"canary"} else 0),
        "coalmine_proxy_requests_total",
        release="support",
        arm="canary",
        code_class="2xx",
    )


def test_cookie_stickiness_gives_new_users_a_cookie_that_keeps_them_in_their_arm(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    policy = _policy(stable[1], canary[1], routing="  stickiness: {cookie: sid}")
    proxy = start_proxy([policy], running, pins={"support": 50.0})
    for _ in range(20):
        with httpx.Client(base_url=proxy.url) as client:
            first = client.get("/x")
            cookie = first.headers["set-cookie"]
            assert cookie.startswith("sid=") and "HttpOnly" in cookie
            arm = first.json()["upstream"]
            for _ in range(10):
                again = client.get("/x")  # the client sends the cookie back
                assert again.json()["upstream"] == arm
                assert "set-cookie" not in again.headers


def test_forced_arm_needs_the_admin_token(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy(
        [_policy(stable[1], canary[1])], running, pins={"support": 0.0}, admin_token=TOKEN
    )
    with httpx.Client(base_url=proxy.url) as client:
        forced = client.get(
            "/x",
            headers={"x-coalmine-force-arm": "canary", "x-coalmine-admin-token": TOKEN},
        )
        assert forced.json().get("upstream") == "canary", forced.text
        assert "x-coalmine-admin-token" not in canary[0].seen[-1].headers
        for headers in (
            {"x-coalmine-force-arm": "canary"},
            {"x-coalmine-force-arm": "canary", "x-coalmine-admin-token": TOKEN + "x"},
            {"x-coalmine-force-arm": "canary", "x-coalmine-admin-token": ""},
        ):
            refused = client.get("/x", headers=headers)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "force_arm_refused"
        bad_arm = client.get(
            "/x", headers={"x-coalmine-force-arm": "shadow", "x-coalmine-admin-token": TOKEN}
        )
        assert bad_arm.status_code == 403
    assert len(canary[0].seen) == 1


def test_forced_arm_refused_when_no_token_is_configured(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_policy(stable[1], canary[1])], running)
    with httpx.Client(base_url=proxy.url) as client:
        refused = client.get(
            "/x", headers={"x-coalmine-force-arm": "canary", "x-coalmine-admin-token": ""}
        )
    assert refused.status_code == 403
    assert canary[0].seen == []


def test_sse_chunks_reach_an_openai_client_as_the_upstream_sends_them(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    upstream = stable[0]
    upstream.sse_events = 5
    proxy = start_proxy([_policy(stable[1], canary[1])], running)
    client = OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", timeout=10.0, max_retries=0)
    try:
        upstream.sse_gate.release()  # the first event may go
        stream = client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        received: list[str] = []
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
            # the upstream has sent exactly the events the client has read: the proxy
            # holds nothing back (a buffering proxy would never deliver the first one)
            assert len(upstream.sse_sent) == len(received)
            upstream.sse_gate.release()
    finally:
        client.close()
    assert received == [f"tok{index} " for index in range(5)]
    assert upstream.seen[-1].headers["x-coalmine-arm"] == "baseline"


def test_upstream_down_is_a_502_counted_against_its_arm(
    stable: UpstreamServed, running: list[RunningProxy]
) -> None:
    policy = make_policy(stable=stable[1].base_url, canary=closed_port_url())
    proxy = start_proxy([policy], running, pins={"support": 100.0})
    with httpx.Client(base_url=proxy.url) as client:
        response = client.get("/x", headers={"x-request-id": "r-502"})
    assert response.status_code == 502
    assert response.json()["error"] == {
        "code": "upstream_unavailable",
        "message": "canary upstream is unreachable",
        "requestId": "r-502",
    }
    proxy.wait_for(
        1.0, "coalmine_proxy_upstream_errors_total", release="support", arm="canary", kind="connect"
    )
    proxy.wait_for(
        1.0, "coalmine_proxy_requests_total", release="support", arm="canary", code_class="5xx"
    )


def test_upstream_too_slow_is_a_504(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    routing = "  stickiness: {header: x-user-id}\n  readTimeout: 200ms"
    proxy = start_proxy([_policy(stable[1], canary[1], routing=routing)], running)
    with httpx.Client(base_url=proxy.url, timeout=10.0) as client:
        response = client.get("/hang")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    proxy.wait_for(
        1.0,
        "coalmine_proxy_upstream_errors_total",
        release="support",
        arm="baseline",
        kind="timeout",
    )


def test_a_client_going_away_cancels_the_upstream_call(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_policy(stable[1], canary[1])], running)
    with (
        httpx.Client(base_url=proxy.url, timeout=httpx.Timeout(10.0, read=0.3)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get("/hang")
    wait_until(stable[0].cancelled.is_set, what="the upstream to see the disconnect")
    wait_until(
        lambda: (
            proxy.metric(
                "coalmine_proxy_client_disconnects_total", release="support", arm="baseline"
            )
            == 1.0
        ),
        what="the disconnect to be counted",
    )
    assert proxy.metric("coalmine_proxy_in_flight_requests") == 0.0


def test_body_over_the_release_limit_is_refused(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    routing = "  stickiness: {header: x-user-id}\n  maxBodyBytes: 1000"
    proxy = start_proxy([_policy(stable[1], canary[1], routing=routing)], running)
    with httpx.Client(base_url=proxy.url) as client:
        assert client.post("/x", content=b"a" * 1000).status_code == 200
        declared = client.post("/x", content=b"a" * 1001)
        assert declared.status_code == 413
        streamed = client.post("/x", content=iter([b"a" * 600, b"a" * 600]))
        assert streamed.status_code == 413
        assert declared.json()["error"]["code"] == "body_too_large"
    # the declared one never left the proxy; the streamed one was cut off at the limit
    assert [len(seen.body) <= 1000 for seen in stable[0].seen] == [True] * len(stable[0].seen)
    assert len(stable[0].seen) <= 2


def test_headers_over_the_limit_are_refused(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_policy(stable[1], canary[1])], running, max_header_bytes=2048)
    with httpx.Client(base_url=proxy.url) as client:
        response = client.get("/x", headers={"x-big": "v" * 3000})
    assert response.status_code == 431
    assert stable[0].seen == []


def test_a_large_streamed_request_body_arrives_whole(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_policy(stable[1], canary[1])], running)
    chunks = [bytes([index % 251]) * 65536 for index in range(40)]
    with httpx.Client(base_url=proxy.url) as client:
        sized = client.post("/x", content=b"".join(chunks))
        chunked = client.post("/x", content=iter(chunks))
    assert sized.json()["bytes"] == chunked.json()["bytes"] == 40 * 65536
    assert stable[0].seen[-1].body == b"".join(chunks)


def test_paths_route_to_the_release_with_the_longest_prefix(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    everything = _policy(stable[1], canary[1], name="web")
    chat = make_policy(
        name="chat",
        stable=canary[1].base_url,
        canary=canary[1].base_url,
        routing="  pathPrefix: /v1/chat",
    )
    proxy = start_proxy([everything, chat], running)
    with httpx.Client(base_url=proxy.url) as client:
        assert client.get("/v1/chat/completions").json()["upstream"] == "canary"
        assert client.get("/v1/chatter").json()["upstream"] == "stable"
        assert client.get("/other").json()["upstream"] == "stable"
    assert canary[0].seen[-1].headers["x-coalmine-release"] == "chat"
    assert stable[0].seen[-1].headers["x-coalmine-release"] == "web"


def test_no_release_for_the_path_is_a_404(
    stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    chat = _policy(stable[1], canary[1], routing="  pathPrefix: /v1/chat")
    proxy = start_proxy([chat], running)
    with httpx.Client(base_url=proxy.url) as client:
        response = client.get("/admin")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_release"


@pytest.mark.slow
def test_a_routing_table_change_is_applied_live_and_keeps_canary_users(
    tmp_path: Path,
    stable: UpstreamServed,
    canary: UpstreamServed,
    running: list[RunningProxy],
) -> None:
    policy = _policy(stable[1], canary[1])
    store = SqliteRoutingStore(tmp_path / "state.db")
    first = store.write(initial_table(policy, 5.0), None)
    proxy = start_proxy([policy], running, state=tmp_path / "state.db")
    users = [f"user-{index}" for index in range(400)]
    stop = threading.Event()
    failures: list[int] = []

    def steady_traffic() -> None:
        with httpx.Client(base_url=proxy.url) as client:
            while not stop.is_set():
                status = client.get("/x", headers={"x-user-id": "steady"}).status_code
                if status != 200:
                    failures.append(status)

    background = threading.Thread(target=steady_traffic)
    background.start()
    try:
        with httpx.Client(base_url=proxy.url) as client:

            def canary_users() -> set[str]:
                return {
                    user
                    for user in users
                    if client.get("/x", headers={"x-user-id": user}).json()["upstream"] == "canary"
                }

            at_five = canary_users()
            store.write(first.model_copy(update={"canary_weight": 50.0}), first.version)
            wait_until(
                lambda: (
                    proxy.metric("coalmine_proxy_routing_table_version", release="support") == 2.0
                ),
                what="the new routing table",
            )
            at_fifty = canary_users()
    finally:
        stop.set()
        background.join()
    assert at_five < at_fifty
    assert 120 <= len(at_fifty) <= 280
    assert failures == []
    assert proxy.metric("coalmine_proxy_canary_weight_ratio", release="support") == 0.5
    store.close()


def test_a_table_naming_an_unknown_upstream_is_refused(
    tmp_path: Path,
    stable: UpstreamServed,
    canary: UpstreamServed,
    running: list[RunningProxy],
) -> None:
    policy = _policy(stable[1], canary[1])
    store = SqliteRoutingStore(tmp_path / "state.db")
    table = initial_table(policy, 100.0)
    hijacked = table.model_copy(
        update={"canary": table.canary.model_copy(update={"upstream": "http://169.254.169.254"})}
    )
    store.write(hijacked, None)
    proxy = start_proxy([policy], running, state=tmp_path / "state.db")
    with httpx.Client(base_url=proxy.url) as client:
        assert client.get("/x", headers={"x-user-id": "u"}).json()["upstream"] == "stable"
    assert proxy.metric("coalmine_proxy_routing_table_errors_total", release="support") == 1.0
    store.close()
