"""The leader deletes the proxy-count ConfigMaps of gone proxies: those whose newest
minute is past the retention, at the resourceVersion listed (a proxy that wrote in
between keeps its ConfigMap), never one it cannot read, only while it leads and at most
once per interval; through the official client against the fake API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from coalmine.shared.aggregates import configmap
from coalmine.shared.aggregates.configmap import AGGREGATES_LABEL, ConfigMapAggregateStore
from coalmine.shared.aggregates.model import DEFAULT_RETENTION_SECONDS, MinuteCell
from controller.cluster.aggregates_cleanup import SWEEP_INTERVAL_SECONDS, AggregatesCleanup
from controller.cluster.lease import LeaseElector
from controller.labels import StaticPromptLabels
from controller.service import build_service
from controller.settings import ControllerSettings
from controller.source.static import StaticSource
from policies.domain import Arm
from tests.cluster.cluster_support import NAMESPACE, Clock, write_kubeconfig
from tests.fakes.kube_api import FakeKubeServer

PREFIX = "shop-app"
T = 1_800_000_000 // 60 * 60
RETENTION = DEFAULT_RETENTION_SECONDS
AFTER = T + RETENTION + 60
"""The first moment minute T is past the retention."""


def write(api: Any, proxy: str, minute: int, now: float | None = None) -> None:
    cell = MinuteCell("support", Arm.BASELINE, minute, 1, 0, {400: 1})
    ConfigMapAggregateStore(api, NAMESPACE, PREFIX, proxy).write([cell], now or minute + 1)


def names(api: Any) -> set[str]:
    listed = client.CoreV1Api(api).list_namespaced_config_map(NAMESPACE)
    return {stored.metadata.name for stored in listed.items}


def create(api: Any, name: str, data: dict[str, str]) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(
        NAMESPACE,
        {"metadata": {"name": name, "labels": {AGGREGATES_LABEL: "true"}}, "data": data},
    )


def cleanup(api: Any, **kwargs: Any) -> AggregatesCleanup:
    return AggregatesCleanup(api, NAMESPACE, PREFIX, **kwargs)


def test_a_stale_configmap_is_deleted_and_a_fresh_one_kept(api: Any) -> None:
    write(api, "pod-gone", T)
    write(api, "pod-gone-too", T - 3600)
    write(api, "pod-live", T + 60)  # its newest minute is the oldest one kept at AFTER
    sweeper = cleanup(api)
    assert sweeper.sweep(AFTER - 1) == 1, "minute T is still within the retention"
    assert names(api) == {"shop-app-aggregates-pod-gone", "shop-app-aggregates-pod-live"}
    assert sweeper.sweep(AFTER) == 1
    assert names(api) == {"shop-app-aggregates-pod-live"}
    assert sweeper.deleted == 2
    assert sweeper.sweep(AFTER) == 0
    assert sweeper.sweep(AFTER + 60) == 1
    assert names(api) == set() and sweeper.deleted == 3


def test_a_configmap_holding_no_minutes_is_deleted(api: Any) -> None:
    create(api, "shop-app-aggregates-empty", {"aggregates.json": '{"v":1,"proxy":"x","cells":{}}'})
    assert cleanup(api).sweep(T) == 1
    assert names(api) == set()


def test_a_malformed_configmap_is_kept_and_reported(api: Any) -> None:
    create(api, "shop-app-aggregates-bad", {"aggregates.json": '{"v":1,"proxy":"bad","cells":1}'})
    create(api, "shop-app-aggregates-keyless", {"config.yaml": "a: 1"})
    write(api, "pod-gone", T)
    sweeper = cleanup(api)
    assert sweeper.sweep(AFTER) == 1
    assert names(api) == {"shop-app-aggregates-bad", "shop-app-aggregates-keyless"}
    assert sorted(sweeper.problems) == [
        "configmap shop/shop-app-aggregates-bad: cells: Input should be an object",
        "configmap shop/shop-app-aggregates-keyless: no aggregates.json key",
    ]


def test_another_prefix_is_left_alone(api: Any) -> None:
    stale = '{"v":1,"proxy":"x","cells":{"support":{"baseline":{"%d":{"n":1,"e":0,"l":[1,1]}}}}}'
    create(api, "other-app-aggregates-pod", {"aggregates.json": stale % T})
    create(api, "shop-app-aggregates-pod", {"aggregates.json": stale % T})
    assert cleanup(api).sweep(AFTER) == 1
    assert names(api) == {"other-app-aggregates-pod"}


def test_a_proxy_writing_between_the_list_and_the_delete_keeps_its_configmap(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(api, "pod-back", T)
    sweeper = cleanup(api)
    delete = sweeper._delete

    def written_meanwhile(name: str, resource_version: str) -> bool:
        write(api, "pod-back", AFTER, AFTER)  # a pod of the same name is back
        return delete(name, resource_version)

    monkeypatch.setattr(sweeper, "_delete", written_meanwhile)
    assert sweeper.sweep(AFTER) == 0
    assert names(api) == {"shop-app-aggregates-pod-back"}
    assert sweeper.deleted == 0


def test_a_proxy_whose_configmap_was_deleted_writes_it_again(api: Any) -> None:
    idle = ConfigMapAggregateStore(api, NAMESPACE, PREFIX, "pod-idle")
    idle.write([MinuteCell("support", Arm.BASELINE, T, 1, 0, {400: 1})], T + 1)
    assert cleanup(api).sweep(AFTER) == 1
    idle.write([MinuteCell("support", Arm.CANARY, AFTER, 2, 0, {400: 2})], AFTER + 1)
    assert names(api) == {"shop-app-aggregates-pod-idle"}


def test_every_page_of_the_list_is_swept(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configmap, "LIST_PAGE", 2)
    for index in range(5):
        write(api, f"pod-{index}", T)
    write(api, "pod-live", AFTER)
    assert cleanup(api).sweep(AFTER) == 5
    assert names(api) == {"shop-app-aggregates-pod-live"}


def test_only_the_leader_sweeps(api: Any, clock: Clock) -> None:
    first, second = (
        LeaseElector(api, NAMESPACE, "coalmine", pod, clock=clock, wall=clock.wall)
        for pod in ("controller-a", "controller-b")
    )
    assert first.try_acquire_or_renew() and not second.try_acquire_or_renew()
    leader, standby = (cleanup(api, leading=e.is_leader) for e in (first, second))
    write(api, "pod-gone", T)
    assert standby.sweep_if_due(AFTER) == 0
    assert names(api) == {"shop-app-aggregates-pod-gone"}
    assert leader.sweep_if_due(AFTER) == 1
    assert names(api) == set()


def test_a_replica_that_lost_the_lease_stops_deleting(api: Any) -> None:
    leading = iter([True, True, False])
    write(api, "pod-a", T)
    write(api, "pod-b", T)
    sweeper = cleanup(api, leading=lambda: next(leading))
    assert sweeper.sweep_if_due(AFTER) == 1
    assert len(names(api)) == 1


def test_at_most_one_sweep_per_interval(api: Any) -> None:
    sweeper = cleanup(api)
    write(api, "pod-a", T)
    assert sweeper.sweep_if_due(AFTER) == 1
    write(api, "pod-b", T)
    assert sweeper.sweep_if_due(AFTER + SWEEP_INTERVAL_SECONDS - 1) == 0
    assert names(api) == {"shop-app-aggregates-pod-b"}
    assert sweeper.sweep_if_due(AFTER + SWEEP_INTERVAL_SECONDS) == 1
    assert names(api) == set()


def test_a_failed_sweep_waits_for_the_next_interval(api: Any, kube: FakeKubeServer) -> None:
    sweeper = cleanup(api)
    write(api, "pod-a", T)
    kube.fail_next(1, status=403, verbs=["list"], resources=["configmaps"])
    assert sweeper.sweep_if_due(AFTER) == 0
    assert sweeper.sweep_if_due(AFTER + 60) == 0
    assert sweeper.sweep_if_due(AFTER + SWEEP_INTERVAL_SECONDS) == 1


def test_the_cluster_service_sweeps_and_counts_what_it_deleted(
    api: Any, kube: FakeKubeServer, clock: Clock, tmp_path: Path
) -> None:
    def service(judge_traffic: str) -> Any:
        settings = ControllerSettings(
            cluster=True,
            kubeconfig=write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.token, NAMESPACE),
            pod_name="controller-a",
            configmap_prefix=PREFIX,
            state=tmp_path / f"{judge_traffic}.db",
            metrics_listen=None,
            judge_traffic=judge_traffic,
        )
        return build_service(
            settings, [], source=StaticSource(), labels=StaticPromptLabels({}), clock=clock
        )

    assert service("langfuse").aggregates_cleanup is None, "no proxy counts are written"
    built = service("proxy")
    sweeper = built.aggregates_cleanup
    assert sweeper is not None
    write(api, "pod-gone", T)
    clock.now = AFTER
    assert sweeper.sweep_if_due(clock()) == 0, "not the leader yet"
    assert built.elector is not None and built.elector.try_acquire_or_renew()
    assert sweeper.sweep_if_due(clock()) == 1
    registry = built.metrics.registry
    assert registry.get_sample_value("coalmine_aggregates_configmaps_deleted_total") == 1
    built.start()
    try:
        assert built.scheduler is not None
        assert built.scheduler.get_job("aggregates-cleanup") is not None
    finally:
        built.stop()
