"""The proxy's per-minute counts: what ``record`` counts into which cell, the flusher's
writes, failures and retention, and a live proxy whose counts the controller reads."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from kubernetes import client as kube_client

from coalmine.shared.aggregates.model import MinuteCell
from controller.source.aggregates import ProxyCounts
from policies.domain import Arm
from policies.latency_bins import sketch_bin
from proxy.aggregates import AggregateRecorder, proxy_id
from proxy.metrics import ProxyMetrics
from proxy.outcome import Failure, RequestOutcome
from proxy.settings import ProxySettings
from tests.cluster.cluster_support import write_kubeconfig
from tests.fakes.kube_api import FakeKubeServer
from tests.proxy.proxy_support import (
    RunningProxy,
    UpstreamServed,
    make_policy,
    start_proxy,
    wait_until,
)

T = 1_800_000_000 // 60 * 60
S = 1_000_000_000  # nanoseconds in a second
MS = 1_000_000
B, C = Arm.BASELINE, Arm.CANARY


def outcome(
    arm: Arm,
    start_ns: int,
    duration_ns: int,
    status: int = 200,
    failure: Failure | None = None,
    release: str = "support",
) -> RequestOutcome:
    return RequestOutcome(
        release=release,
        arm=arm,
        method="POST",
        path="/v1/chat",
        status=status,
        start_ns=start_ns,
        end_ns=start_ns + duration_ns,
        trace_id="0" * 32,
        span_id="0" * 16,
        parent_span_id=None,
        request_id="r",
        prompt_label=None,
        failure=failure,
    )


class FakeStore:
    """Records writes; fails the next ``failures`` of them; leaves ``left_out`` cells."""

    def __init__(self) -> None:
        self.proxy_id = "test"
        self.writes: list[tuple[list[MinuteCell], float]] = []
        self.failures = 0
        self.left_out = 0
        self.closed = False

    def write(self, cells: Sequence[MinuteCell], now: float) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError("database is locked")
        self.writes.append((sorted(cells, key=lambda c: (c.release, c.arm, c.minute)), now))
        return self.left_out

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def recorder(
    store: FakeStore, clock: Clock, metrics: ProxyMetrics | None = None
) -> AggregateRecorder:
    return AggregateRecorder(
        store, metrics or ProxyMetrics(), interval=10.0, retention_seconds=7200, clock=clock
    )


def by_key(
    cells: Sequence[MinuteCell],
) -> dict[tuple[str, Arm, int], tuple[int, int, dict[int, int]]]:
    return {c.key: (c.requests, c.errors, dict(c.latency_bins)) for c in cells}


def metric(metrics: ProxyMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_outcomes_are_counted_into_their_release_arm_and_minute() -> None:
    record = recorder(FakeStore(), Clock(T + 120))
    for item in (
        outcome(B, T * S, 100 * MS),
        outcome(B, T * S + 5 * S, 100 * MS),
        outcome(B, T * S + 30 * S, 250 * MS, status=503),
        outcome(C, T * S + 1, 100 * MS),
        outcome(C, T * S + 59 * S, 2_000 * MS, status=404),
        outcome(B, (T + 60) * S, 1 * MS),
        outcome(B, T * S, 0),
        outcome(B, T * S, 100 * MS, release="billing"),
    ):
        record.record(item)
    assert by_key(record.cells()) == {
        ("support", B, T): (4, 1, {463: 2, 555: 1, -(10**9): 1}),
        ("support", C, T): (2, 0, {463: 1, 764: 1}),
        ("support", B, T + 60): (1, 0, {0: 1}),
        ("billing", B, T): (1, 0, {463: 1}),
    }
    assert (sketch_bin(100.0), sketch_bin(250.0), sketch_bin(2000.0)) == (463, 555, 764)


@pytest.mark.parametrize(
    ("status", "failure", "error"),
    [
        (200, None, False),
        (404, None, False),
        (429, None, False),
        (413, Failure.TOO_LARGE, False),
        (499, Failure.CLIENT_GONE, False),  # went away before the response began
        (200, Failure.CLIENT_GONE, False),  # went away during a good response
        (500, None, True),
        (503, Failure.CLIENT_GONE, True),  # the upstream's 503, however the client left
        (502, Failure.CONNECT, True),
        (504, Failure.TIMEOUT, True),
        (200, Failure.TIMEOUT, True),  # the upstream stalled mid-response
        (200, Failure.UPSTREAM, True),  # the upstream cut its response
    ],
)
def test_errors_are_5xx_and_upstream_failures_never_4xx_or_a_client_gone(
    status: int, failure: Failure | None, error: bool
) -> None:
    record = recorder(FakeStore(), Clock(T))
    record.record(outcome(C, T * S, 5 * MS, status=status, failure=failure))
    assert by_key(record.cells())[("support", C, T)][:2] == (1, int(error))


def test_errors_are_what_the_outcome_calls_an_error() -> None:
    record = recorder(FakeStore(), Clock(T))
    expected = 0
    for status in (0, 200, 302, 404, 499, 500, 502, 504, 599):
        for failure in (None, *Failure):
            item = outcome(C, T * S, 5 * MS, status=status, failure=failure)
            expected += item.is_error
            record.record(item)
    assert by_key(record.cells())[("support", C, T)][1] == expected


def test_a_request_counts_in_the_minute_it_arrived_in() -> None:
    record = recorder(FakeStore(), Clock(T + 600))
    record.record(outcome(B, (T + 60) * S - 1, 1 * MS))  # last nanosecond of minute T
    record.record(outcome(B, (T + 60) * S, 1 * MS))  # first of the next
    record.record(outcome(B, (T + 59) * S, 90 * S))  # ends two minutes later: still T
    counts = by_key(record.cells())
    assert counts[("support", B, T)][0] == 2
    assert counts[("support", B, T + 60)][0] == 1
    assert sketch_bin(90_000.0) in counts[("support", B, T)][2]


def test_each_flush_writes_the_cells_that_changed_with_their_totals() -> None:
    store, clock, metrics = FakeStore(), Clock(T + 30), ProxyMetrics()
    record = recorder(store, clock, metrics)
    record.record(outcome(B, T * S, 1 * MS))
    record.record(outcome(C, T * S, 1 * MS))
    asyncio.run(record.refresh_once())
    asyncio.run(record.refresh_once())  # nothing changed: nothing written
    record.record(outcome(B, T * S, 1 * MS))
    clock.now = T + 70
    asyncio.run(record.refresh_once())
    assert [(by_key(cells), now) for cells, now in store.writes] == [
        (
            {("support", B, T): (1, 0, {0: 1}), ("support", C, T): (1, 0, {0: 1})},
            T + 30,
        ),
        ({("support", B, T): (2, 0, {0: 2})}, T + 70),
    ]
    assert metric(metrics, "coalmine_proxy_aggregate_writes_total", outcome="ok") == 2


def test_a_failed_write_keeps_the_cells_and_the_next_flush_writes_them() -> None:
    store, clock, metrics = FakeStore(), Clock(T + 30), ProxyMetrics()
    record = recorder(store, clock, metrics)
    record.record(outcome(B, T * S, 1 * MS))
    store.failures = 2
    asyncio.run(record.refresh_once())
    record.record(outcome(B, T * S, 1 * MS))
    asyncio.run(record.refresh_once())
    assert store.writes == []
    asyncio.run(record.refresh_once())
    assert [by_key(cells) for cells, _ in store.writes] == [{("support", B, T): (2, 0, {0: 2})}]
    assert metric(metrics, "coalmine_proxy_aggregate_writes_total", outcome="failed") == 2
    assert metric(metrics, "coalmine_proxy_aggregate_writes_total", outcome="ok") == 1
    assert metric(metrics, "coalmine_proxy_aggregate_cells_dropped_total") == 0


def test_cells_past_the_retention_are_forgotten_and_counted_when_never_written() -> None:
    store, clock, metrics = FakeStore(), Clock(T + 30), ProxyMetrics()
    record = recorder(store, clock, metrics)
    record.record(outcome(B, T * S, 1 * MS))
    asyncio.run(record.refresh_once())  # written
    record.record(outcome(C, (T + 60) * S, 1 * MS))
    record.record(outcome(C, (T + 120) * S, 1 * MS))
    store.failures = 1
    clock.now = T + 120 + 7200  # minutes T and T + 60 are past the retention
    asyncio.run(record.refresh_once())
    assert metric(metrics, "coalmine_proxy_aggregate_cells_dropped_total") == 1
    assert set(by_key(record.cells())) == {("support", C, T + 120)}
    asyncio.run(record.refresh_once())
    assert by_key(store.writes[-1][0]) == {("support", C, T + 120): (1, 0, {0: 1})}


def test_cells_a_store_leaves_out_are_counted_as_dropped() -> None:
    store, metrics = FakeStore(), ProxyMetrics()
    store.left_out = 3
    record = recorder(store, Clock(T + 30), metrics)
    record.record(outcome(B, T * S, 1 * MS))
    asyncio.run(record.refresh_once())
    assert metric(metrics, "coalmine_proxy_aggregate_cells_dropped_total") == 3


def test_stopping_writes_what_is_left_and_closes_the_store() -> None:
    store = FakeStore()
    record = recorder(store, Clock(T + 30))

    async def run() -> None:
        record.start()
        record.record(outcome(B, T * S, 1 * MS))
        await record.stop()

    asyncio.run(run())
    assert [by_key(cells) for cells, _ in store.writes] == [{("support", B, T): (1, 0, {0: 1})}]
    assert store.closed


def test_the_proxy_id_is_the_pod_in_cluster_mode_else_host_and_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop")
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    assert proxy_id(ProxySettings()) == "laptop-4242"
    cluster = ProxySettings(cluster=True, pod_name="shop-7d9f-abcde")
    assert proxy_id(cluster) == "shop-7d9f-abcde"

    class Worker:
        name = "coalmine-proxy-worker-3"

    monkeypatch.setattr(multiprocessing, "current_process", Worker)
    assert proxy_id(cluster) == "shop-7d9f-abcde-w3"
    assert proxy_id(ProxySettings()) == "laptop-4242"


def test_with_neither_state_file_nor_cluster_no_counts_are_kept() -> None:
    from proxy.server import build_app  # noqa: PLC0415

    policy = make_policy(stable="http://127.0.0.1:1", canary="http://127.0.0.1:2")
    app = build_app(ProxySettings(spans=False, metrics_listen=None), [policy])
    assert app.aggregates is None


def test_a_live_proxy_counts_every_request_and_the_controller_reads_them(
    tmp_path: Path,
    stable: UpstreamServed,
    canary: UpstreamServed,
    running: list[RunningProxy],
) -> None:
    canary[0].fail_every = 1  # the canary answers every request with a 500
    policy = make_policy(stable=stable[1].base_url, canary=canary[1].base_url)
    state = tmp_path / "state.db"
    proxy = start_proxy(
        [policy], running, pins={"support": 50.0}, state=state, aggregates_flush_seconds=0.05
    )
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=proxy.url) as client:
        for user in range(200):
            status = client.post("/v1/chat", headers={"x-user-id": f"u{user}"}, json={}).status_code
            statuses[status] = statuses.get(status, 0) + 1
    counts = ProxyCounts.local(state)

    def total() -> int:
        return sum(cell.requests for cell in counts.read("support", 0, 2**40).values())

    wait_until(lambda: total() == 200, what="200 requests counted in the state file")
    cells = counts.read("support", 0, 2**40)
    per_arm = {
        arm: [
            sum(c.requests for (a, _), c in cells.items() if a is arm),
            sum(c.errors for (a, _), c in cells.items() if a is arm),
        ]
        for arm in (B, C)
    }
    assert per_arm[B] == [len(stable[0].seen), 0]
    assert per_arm[C] == [len(canary[0].seen), len(canary[0].seen)]
    assert statuses == {200: len(stable[0].seen), 500: len(canary[0].seen)}
    assert 50 <= per_arm[C][0] <= 150
    for cell in cells.values():
        assert sum(cell.latency_bins.values()) == cell.requests
    assert counts.proxies_seen("support", 0) == {proxy_id(ProxySettings())}
    assert counts.problems == ()
    assert proxy.metric("coalmine_proxy_aggregate_writes_total", outcome="ok") >= 1
    assert proxy.metric("coalmine_proxy_aggregate_writes_total", outcome="failed") == 0
    counts.close()


def test_a_proxy_in_cluster_mode_writes_its_counts_to_its_configmap(
    tmp_path: Path,
    stable: UpstreamServed,
    canary: UpstreamServed,
    running: list[RunningProxy],
) -> None:
    policy = make_policy(stable=stable[1].base_url, canary=canary[1].base_url)
    with FakeKubeServer(token="coalmine-test-token") as kube:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.token, "shop")
        proxy = start_proxy(
            [policy],
            running,
            cluster=True,
            kubeconfig=kubeconfig,
            namespace="shop",
            configmap_prefix="shop-app",
            pod_name="shop-app-6f7c9-x2x4q",
            aggregates_flush_seconds=0.05,
        )
        with httpx.Client(base_url=proxy.url) as client:
            for user in range(20):
                client.post("/v1/chat", headers={"x-user-id": f"u{user}"}, json={})
        api = kube.api_client()
        counts = ProxyCounts.cluster(api, "shop", "shop-app")

        def baseline_requests() -> int:
            cells = counts.read("support", 0, 2**40)
            return sum(cell.requests for (arm, _), cell in cells.items() if arm is B)

        wait_until(lambda: baseline_requests() == 20, what="20 requests in the ConfigMap")
        assert counts.proxies_seen("support", 0) == {"shop-app-6f7c9-x2x4q"}
        stored = kube_client.CoreV1Api(api).read_namespaced_config_map(
            "shop-app-aggregates-shop-app-6f7c9-x2x4q", "shop"
        )
        assert stored.metadata.labels["coalmine.dev/aggregates"] == "true"
        proxy.served.stop()
        running.remove(proxy)
        api.close()


def test_mirrored_copies_are_not_counted(
    tmp_path: Path, stable: UpstreamServed, staging: UpstreamServed, running: list[RunningProxy]
) -> None:
    policy = make_policy(
        stable=stable[1].base_url,
        canary=stable[1].base_url,
        shadow=f'shadow: {{upstream: "{staging[1].base_url}", percent: 100, methods: [POST]}}',
    )
    state = tmp_path / "state.db"
    proxy = start_proxy([policy], running, state=state, aggregates_flush_seconds=0.05)
    with httpx.Client(base_url=proxy.url) as client:
        for user in range(10):
            client.post("/v1/chat", headers={"x-user-id": f"u{user}"}, json={})
    wait_until(lambda: proxy.shadow("sent") == 10, what="10 copies sent to staging")
    counts = ProxyCounts.local(state)
    wait_until(
        lambda: sum(c.requests for c in counts.read("support", 0, 2**40).values()) == 10,
        what="10 requests counted",
    )
    proxy.served.stop()  # the last write on the way out
    running.remove(proxy)
    cells = counts.read("support", 0, 2**40)
    assert {arm for arm, _ in cells} == {B}
    assert sum(c.requests for c in cells.values()) == 10
