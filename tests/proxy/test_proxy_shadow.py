"""Mirroring to staging, and request spans reaching Langfuse (the emulator)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from coalmine.emulator.settings import EmulatorSettings
from policies import Policy
from proxy.spans import OtlpSpanReporter, SpanExportSettings
from tests.emulator.emulator_support import start_emulator
from tests.proxy.proxy_support import (
    RunningProxy,
    Served,
    UpstreamServed,
    closed_port_url,
    make_policy,
    start_proxy,
    wait_until,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def _shadow_policy(stable: Served, staging_url: str, **shadow: Any) -> Policy:
    settings = {"percent": 100, "methods": ["GET", "POST"], **shadow}
    fields = ", ".join(f"{key}: {value}" for key, value in settings.items())
    return make_policy(
        stable=stable.base_url,
        canary=stable.base_url,
        shadow=f'shadow: {{upstream: "{staging_url}", {fields}}}',
    )


def test_a_mirrored_copy_reaches_staging_marked_as_shadow(
    stable: UpstreamServed, staging: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_shadow_policy(stable[1], staging[1].base_url)], running)
    with httpx.Client(base_url=proxy.url) as client:
        response = client.post(
            "/v1/chat",
            json={"q": "hello"},
            headers={"traceparent": f"00-{TRACE}-{SPAN}-01", "x-coalmine-shadow": "0"},
        )
    assert response.json()["upstream"] == "stable"
    wait_until(lambda: len(staging[0].seen) == 1, what="the mirrored copy")
    copy = staging[0].seen[0]
    primary = stable[0].seen[0]
    assert copy.body == primary.body == b'{"q":"hello"}'
    assert copy.path == "/v1/chat"
    assert copy.headers["x-coalmine-arm"] == "shadow"
    assert copy.headers["x-coalmine-shadow"] == "1"
    assert copy.headers["x-coalmine-shadow-of"] == TRACE
    assert copy.headers["x-coalmine-release"] == "support"
    assert copy.headers["x-request-id"] == primary.headers["x-request-id"]
    # the copy is a trace of its own, so its spans never mix with the user's request
    assert TRACE not in copy.headers["traceparent"]
    assert "x-coalmine-shadow" not in primary.headers
    wait_until(lambda: proxy.shadow("sent") == 1.0, what="the copy to be counted")


def test_only_the_sampled_share_and_allowed_methods_are_mirrored(
    stable: UpstreamServed, staging: UpstreamServed, running: list[RunningProxy]
) -> None:
    policy = _shadow_policy(stable[1], staging[1].base_url, percent=20, methods=["POST"])
    proxy = start_proxy([policy], running)
    with httpx.Client(base_url=proxy.url) as client:
        for _ in range(1000):
            client.post("/x", content=b"{}")
        for _ in range(50):
            client.get("/x")
    wait_until(lambda: proxy.shadow("sent") == len(staging[0].seen), what="copies to be counted")
    # 1,000 POSTs at 20%: mean 200, standard deviation 12.6; 4.5 sigma either side
    assert 143 <= len(staging[0].seen) <= 257
    assert {seen.method for seen in staging[0].seen} == {"POST"}


def test_a_staging_that_hangs_never_delays_the_primary_and_copies_stay_bounded(
    stable: UpstreamServed, staging: UpstreamServed, running: list[RunningProxy]
) -> None:
    staging[0].hang_all = True
    proxy = start_proxy([_shadow_policy(stable[1], staging[1].base_url, maxInFlight=4)], running)
    with httpx.Client(base_url=proxy.url, timeout=10.0) as client:
        statuses = [client.post("/x", content=b"{}").status_code for _ in range(50)]
    # every primary answered while all four copies in flight were still hanging
    assert statuses == [200] * 50
    assert len(stable[0].seen) == 50
    assert proxy.metric("coalmine_proxy_shadow_in_flight_requests") == 4.0
    assert proxy.shadow("dropped_full") == 46.0
    staging[0].unblock.set()
    wait_until(lambda: proxy.shadow("sent") == 4.0, what="the hanging copies to finish")
    assert proxy.metric("coalmine_proxy_shadow_in_flight_requests") == 0.0


def test_a_staging_that_is_down_never_fails_the_primary(
    stable: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_shadow_policy(stable[1], closed_port_url())], running)
    with httpx.Client(base_url=proxy.url) as client:
        statuses = [client.post("/x", content=b"{}").status_code for _ in range(20)]
    assert statuses == [200] * 20
    wait_until(lambda: proxy.shadow("failed") == 20.0, what="failed copies to be counted")
    assert proxy.shadow("sent") == 0.0


def test_bodies_over_the_shadow_limit_are_not_mirrored(
    stable: UpstreamServed, staging: UpstreamServed, running: list[RunningProxy]
) -> None:
    proxy = start_proxy([_shadow_policy(stable[1], staging[1].base_url, maxBodyBytes=100)], running)
    with httpx.Client(base_url=proxy.url) as client:
        assert client.post("/x", content=b"a" * 100).status_code == 200
        assert client.post("/x", content=b"a" * 101).status_code == 200
        streamed = client.post("/x", content=iter([b"a" * 80000, b"a" * 80000]))
        assert streamed.json()["bytes"] == 160000
    wait_until(lambda: proxy.shadow("sent") == 1.0, what="the small copy")
    assert proxy.shadow("dropped_too_large") == 2.0
    assert [len(seen.body) for seen in staging[0].seen] == [100]
    assert len(stable[0].seen) == 3


def test_request_spans_reach_langfuse_with_arm_tags_and_error_levels(
    stable: UpstreamServed, staging: UpstreamServed, running: list[RunningProxy]
) -> None:
    keys = uuid.uuid4().hex[:8]
    settings = EmulatorSettings(public_key=f"pk-lf-{keys}", secret_key=f"sk-lf-{keys}")
    emulator = start_emulator(settings)
    try:
        reporter = OtlpSpanReporter(
            emulator.base_url,
            settings.public_key,
            settings.secret_key,
            SpanExportSettings(flush_interval=0.05),
        )
        policy = make_policy(
            stable=stable[1].base_url,
            canary=closed_port_url(),
            shadow=f'shadow: {{upstream: "{staging[1].base_url}", percent: 100}}',
        )
        proxy = start_proxy([policy], running, pins={"support": 50.0}, spans=reporter)
        by_arm: dict[str, str] = {}
        with httpx.Client(base_url=proxy.url) as client:
            for index in range(40):
                user = f"user-{index}"
                response = client.post("/v1/chat", content=b"{}", headers={"x-user-id": user})
                arm = "canary" if response.status_code == 502 else "baseline"
                by_arm.setdefault(arm, user)
                if len(by_arm) == 2:
                    break
            traced = client.post(
                "/v1/chat",
                content=b"{}",
                headers={"x-user-id": by_arm["baseline"], "traceparent": f"00-{TRACE}-{SPAN}-01"},
            )
        assert traced.status_code == 200

        with emulator.client() as api:

            def observations() -> list[dict[str, Any]]:
                rows = api.get(
                    "/api/public/v2/observations",
                    params={"fields": "core,basic,trace_context", "limit": 1000},
                ).json()["data"]
                return [row for row in rows if row["name"] == "POST /v1/chat"]

            wait_until(
                lambda: (
                    any("coalmine:arm:shadow" in row.get("tags", []) for row in observations())
                    and any(row["traceId"] == TRACE for row in observations())
                ),
                what="the spans in the emulator",
            )
            rows = observations()
        levels = {(tuple(row["tags"]), row["level"]) for row in rows if row["traceId"] != TRACE}
        for arm, level in (("baseline", "DEFAULT"), ("canary", "ERROR"), ("shadow", "DEFAULT")):
            tags = ("coalmine:release:support", f"coalmine:arm:{arm}")
            assert (tags, level) in levels
        traced_row = next(row for row in rows if row["traceId"] == TRACE)
        assert traced_row["parentObservationId"] == SPAN
        assert traced_row["tags"] == [
            "coalmine:release:support",
            "coalmine:arm:baseline",
        ]  # not in a score sample: no rollout has routed the release yet
        # the upstream's spans will hang under the proxy's span: it is their parent
        parent = stable[0].seen[-1].headers["traceparent"].split("-")[2]
        assert traced_row["id"] == parent
        assert emulator.checked.violations == []
    finally:
        emulator.stop()
