"""The score sample in the proxy: the plan marks a request from its trace id and the rate in
force at its arrival, the upstream is told in ``x-coalmine-sampled``, the root span is
tagged, a mirrored copy goes with its primary, and the proxy's counts match what the
upstream saw."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from coalmine.shared.conventions import SAMPLED_HEADER, SAMPLED_TAG, trace_tags
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from coalmine.shared.routing_tables.table import (
    RoutingTable,
    SampleRate,
    ShadowRoute,
    initial_table,
)
from coalmine.shared.sampling import is_sampled
from controller.source.aggregates import ProxyCounts
from policies import Policy
from policies.domain import Arm
from proxy.metrics import ProxyMetrics
from proxy.outcome import RequestOutcome
from proxy.plan import Forward, PlanSettings, RequestHead, plan_request
from proxy.routes import Releases
from proxy.shadow import ShadowCopy, ShadowMirror
from proxy.spans import A_TRACE_TAGS, span_of
from tests.proxy.proxy_support import (
    RunningProxy,
    UpstreamServed,
    make_policy,
    start_proxy,
    wait_until,
)

T = 1_800_000_000 // 60 * 60
S = 1_000_000_000
SPAN = "00f067aa0ba902b7"
STABLE = "http://stable.test"
CANARY = "http://canary.test"


class Fresh:
    """Chance for a plan: every draw 0 (canary at any weight above 0)."""

    def percent(self) -> float:
        return 0.0

    def new_id(self) -> str:
        return "req-1"

    def new_trace_id(self) -> str:
        return "0123456789abcdef0123456789abcdef"

    def new_span_id(self) -> str:
        return "fedcba9876543210"


def trace_ids(count: int, seed: int) -> list[str]:
    draw = random.Random(seed)
    return [f"{draw.getrandbits(128):032x}" for _ in range(count)]


def releases_with(*entries: tuple[int, float]) -> Releases:
    policy = make_policy(stable=STABLE, canary=CANARY, routing="  stickiness: none")
    releases = Releases([policy], app_url="http://app.test")
    sample = tuple(SampleRate(from_=start, rate=rate) for start, rate in entries)
    table = initial_table(policy, 50.0, version=1).model_copy(update={"score_sample": sample})
    assert releases.apply(table)
    return releases


def planned(
    releases: Releases, trace: str, arrival_ns: int, *extra: tuple[bytes, bytes]
) -> Forward:
    headers = [(b"host", b"proxy.test"), (b"traceparent", f"00-{trace}-{SPAN}-01".encode())]
    head = RequestHead("POST", "/v1/chat", "/v1/chat", "http", None, [*headers, *extra])
    head.arrival_ns = arrival_ns
    decided = plan_request(head, releases, PlanSettings(), Fresh())
    assert isinstance(decided, Forward), decided
    return decided


def sampled_headers(plan: Forward) -> list[bytes]:
    return [value for name, value in plan.headers if name == SAMPLED_HEADER.encode()]


# --------------------------------------------------------------------------- the plan


def test_a_request_is_sampled_by_its_trace_id_at_the_rate_in_force() -> None:
    releases = releases_with((T, 0.25))
    marks = []
    for trace in trace_ids(400, seed=21):
        plan = planned(releases, trace, T * S + 5 * S)
        assert plan.sampled is is_sampled(trace, 0.25)
        assert sampled_headers(plan) == [b"1" if plan.sampled else b"0"]
        marks.append(plan.sampled)
    assert 0 < sum(marks) < 400


def test_the_rate_changes_at_the_minute_the_table_names_whenever_the_table_was_read() -> None:
    releases = releases_with((T, 0.0), (T + 60, 1.0))
    trace = trace_ids(1, seed=22)[0]
    assert planned(releases, trace, (T + 60) * S - 1).sampled is False
    assert planned(releases, trace, (T + 60) * S).sampled is True
    # before the first entry: every request, as without a sample
    assert planned(releases, trace, T * S - 1).sampled is True


def test_a_client_cannot_mark_its_request_sampled() -> None:
    releases = releases_with((T, 0.0))
    forged = (SAMPLED_HEADER.encode(), b"1")
    plan = planned(releases, trace_ids(1, seed=23)[0], T * S, forged, forged)
    assert sampled_headers(plan) == [b"0"]


def test_without_a_sample_every_request_is_sampled_and_nothing_is_hashed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(trace_id: str, rate: float) -> bool:
        raise AssertionError("hashed without a sample")

    monkeypatch.setattr("proxy.plan.is_sampled", never)
    plan = planned(releases_with(), trace_ids(1, seed=24)[0], T * S)
    assert plan.sampled is True
    assert sampled_headers(plan) == [b"1"]


def test_a_release_no_rollout_has_routed_samples_nothing() -> None:
    """Its table is the policy's own (version 0): nothing judges its requests, and a busy
    release's tagged traces would be a burst for the first reads of its first rollout."""
    policy = make_policy(stable=STABLE, canary=CANARY, routing="  stickiness: none")
    plan = planned(Releases([policy], app_url="http://app.test"), trace_ids(1, seed=24)[0], T * S)
    assert plan.sampled is False
    assert sampled_headers(plan) == [b"0"]


def test_the_arrival_comes_from_the_scope_with_the_time_given() -> None:
    scope = {"method": "GET", "path": "/", "headers": [], "type": "http"}
    assert RequestHead.of(scope, 123).arrival_ns == 123
    assert RequestHead.of(scope).arrival_ns == 0


# --------------------------------------------------------------------------- span and copy


def outcome(sampled: bool, arm: Arm = Arm.CANARY, shadow_of: str | None = None) -> RequestOutcome:
    return RequestOutcome(
        release="support",
        arm=arm,
        method="POST",
        path="/v1/chat",
        status=200,
        start_ns=T * S,
        end_ns=T * S + 1,
        trace_id=trace_ids(1, seed=25)[0],
        span_id=SPAN,
        parent_span_id=None,
        request_id="r",
        prompt_label=None,
        shadow_of=shadow_of,
        sampled=sampled,
    )


def span_tags(outcome: RequestOutcome) -> list[str]:
    attributes = {kv.key: kv.value for kv in span_of(outcome).attributes}
    return [value.string_value for value in attributes[A_TRACE_TAGS].array_value.values]


def test_the_root_span_of_a_sampled_request_carries_the_samples_tag() -> None:
    assert span_tags(outcome(True)) == [
        "coalmine:release:support",
        "coalmine:arm:canary",
        SAMPLED_TAG,
    ]
    assert span_tags(outcome(False)) == ["coalmine:release:support", "coalmine:arm:canary"]
    assert span_tags(outcome(True)) == trace_tags("support", Arm.CANARY, sampled=True)


class Spans:
    """A span reporter that keeps the outcomes it is given."""

    def __init__(self) -> None:
        self.outcomes: list[RequestOutcome] = []

    def record(self, outcome: RequestOutcome) -> None:
        self.outcomes.append(outcome)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("sampled", [True, False])
def test_a_mirrored_copy_is_sampled_with_its_primary(sampled: bool) -> None:
    seen: list[httpx.Request] = []

    def staging(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    spans = Spans()
    primary = trace_ids(1, seed=26)[0]

    async def run() -> None:
        shadow = ShadowMirror(httpx.MockTransport(staging), ProxyMetrics(), spans)
        shadow.send(
            ShadowCopy(
                release="support",
                route=ShadowRoute(upstream="http://staging.test", percent=100.0),
                method="POST",
                path_and_query="/v1/chat",
                path="/v1/chat",
                headers=[],
                body=b"{}",
                shadow_of=primary,
                sampled=sampled,
                request_id="r",
                prompt_label=None,
                timeout={"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0},
            )
        )
        while shadow.in_flight:
            await asyncio.sleep(0.01)
        await shadow.aclose()

    asyncio.run(asyncio.wait_for(run(), 10.0))
    assert [request.headers[SAMPLED_HEADER] for request in seen] == ["1" if sampled else "0"]
    (copy,) = spans.outcomes
    assert (copy.sampled, copy.shadow_of, copy.arm) == (sampled, primary, Arm.SHADOW)
    assert (SAMPLED_TAG in span_tags(copy)) is sampled


# --------------------------------------------------------------------------- live


def publish(state: Path, policy: Policy, **changes: Any) -> RoutingTable:
    store = SqliteRoutingStore(state)
    try:
        table = initial_table(policy, 50.0).model_copy(update=changes)
        return store.write(table, None)
    finally:
        store.close()


def test_a_live_proxy_samples_a_quarter_and_its_counts_match_the_upstream(
    tmp_path: Path, stable: UpstreamServed, canary: UpstreamServed, running: list[RunningProxy]
) -> None:
    requests = 2000
    policy = make_policy(stable=stable[1].base_url, canary=canary[1].base_url)
    state = tmp_path / "state.db"
    publish(state, policy, score_sample=(SampleRate(from_=0, rate=0.25),))
    spans = Spans()
    proxy = start_proxy([policy], running, state=state, spans=spans, aggregates_flush_seconds=0.05)
    proxy.wait_for(1.0, "coalmine_proxy_routing_table_version", release="support")
    traces = trace_ids(requests, seed=27)
    with httpx.Client(base_url=proxy.url) as client:
        for user, trace in enumerate(traces):
            headers = {
                "x-user-id": f"u{user}",
                "traceparent": f"00-{trace}-{SPAN}-01",
                SAMPLED_HEADER: "1",  # forged: removed by the proxy
            }
            assert client.post("/v1/chat", headers=headers, json={}).status_code == 200
    seen = [*stable[0].seen, *canary[0].seen]
    assert len(seen) == requests
    marked = {s.headers["traceparent"].split("-")[1]: s.headers[SAMPLED_HEADER] for s in seen}
    assert marked == {trace: "1" if is_sampled(trace, 0.25) else "0" for trace in traces}
    upstream_sampled = sum(mark == "1" for mark in marked.values())
    assert abs(upstream_sampled - requests / 4) <= 3 * (requests * 0.25 * 0.75) ** 0.5
    wait_until(lambda: len(spans.outcomes) == requests, what="every request's span")
    tagged = {o.trace_id for o in spans.outcomes if SAMPLED_TAG in span_tags(o)}
    assert tagged == {trace for trace, mark in marked.items() if mark == "1"}
    counts = ProxyCounts.local(state)

    def cells() -> dict[tuple[Arm, int], Any]:
        return counts.read("support", 0, 2**40)

    wait_until(lambda: sum(c.requests for c in cells().values()) == requests, what="all counted")
    assert sum(cell.sampled for cell in cells().values()) == upstream_sampled
    per_arm = {
        arm: sum(cell.sampled for (cell_arm, _), cell in cells().items() if cell_arm is arm)
        for arm in (Arm.BASELINE, Arm.CANARY)
    }
    assert per_arm[Arm.CANARY] == sum(s.headers[SAMPLED_HEADER] == "1" for s in canary[0].seen)
    counts.close()


def test_a_live_copy_carries_its_primarys_mark(
    tmp_path: Path, stable: UpstreamServed, staging: UpstreamServed, running: list[RunningProxy]
) -> None:
    policy = make_policy(
        stable=stable[1].base_url,
        canary=stable[1].base_url,
        shadow=f'shadow: {{upstream: "{staging[1].base_url}", percent: 100}}',
    )
    state = tmp_path / "state.db"
    publish(state, policy, score_sample=(SampleRate(from_=0, rate=0.5),))
    proxy = start_proxy([policy], running, state=state)
    proxy.wait_for(1.0, "coalmine_proxy_routing_table_version", release="support")
    with httpx.Client(base_url=proxy.url) as client:
        for user in range(100):
            client.post("/v1/chat", headers={"x-user-id": f"u{user}"}, json={})
    wait_until(lambda: len(staging[0].seen) == 100, what="100 copies at staging")
    primaries = {
        s.headers["traceparent"].split("-")[1]: s.headers[SAMPLED_HEADER] for s in stable[0].seen
    }
    copies = {s.headers["x-coalmine-shadow-of"]: s.headers[SAMPLED_HEADER] for s in staging[0].seen}
    assert copies == primaries
    assert set(primaries.values()) == {"0", "1"}
