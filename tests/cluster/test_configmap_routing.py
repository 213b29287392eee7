"""Routing tables in ConfigMaps: compare-and-set on the table's version and on the
ConfigMap's resourceVersion, watched by proxies, bad documents refused."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client

from coalmine.shared.routing_tables.configmap import ConfigMapRoutingStore
from coalmine.shared.routing_tables.store import BadRoutingTableError, VersionConflictError
from coalmine.shared.routing_tables.table import ArmRoute, RoutingTable
from tests.cluster.cluster_support import NAMESPACE, wait_until

PREFIX = "shop-app"


def table(weight: float, release: str = "support") -> RoutingTable:
    return RoutingTable(
        release=release,
        version=0,
        canary_weight=weight,
        baseline=ArmRoute(upstream="http://127.0.0.1:8000", prompt_label="production"),
        canary=ArmRoute(upstream="http://127.0.0.1:8001", prompt_label="canary"),
    )


def store(api: Any, *, watch: bool = False) -> ConfigMapRoutingStore:
    return ConfigMapRoutingStore(api, NAMESPACE, PREFIX, ["support", "billing"], watch=watch)


def test_a_written_table_reads_back_with_its_version(api: Any) -> None:
    writer = store(api)
    assert writer.versions() == {}
    assert writer.read("support") is None
    first = writer.write(table(5.0), None)
    second = writer.write(table(25.0), first.version)
    assert (first.version, second.version) == (1, 2)
    assert writer.versions() == {"support": 2}
    stored = writer.read("support")
    assert stored is not None and stored.canary_weight == 25.0


def test_a_write_expecting_an_old_version_is_refused(api: Any) -> None:
    writer = store(api)
    writer.write(table(5.0), None)
    with pytest.raises(VersionConflictError, match="expected version None, found 1"):
        writer.write(table(10.0), None)
    with pytest.raises(VersionConflictError, match="expected version 3, found 1"):
        writer.write(table(10.0), 3)


def test_a_write_racing_another_through_the_api_server_is_refused(api: Any, kube: Any) -> None:
    writer = store(api)
    writer.write(table(5.0), None)
    # between this writer's read and its replace, another writer changes the ConfigMap
    kube.fail_next(1, status=409, verbs=["update"], resources=["configmaps"])
    with pytest.raises(VersionConflictError, match="written by someone else"):
        writer.write(table(10.0), 1)


def test_of_concurrent_writers_at_one_version_exactly_one_wins(api: Any) -> None:
    writers = [store(api) for _ in range(6)]
    writers[0].write(table(5.0), None)
    barrier = threading.Barrier(len(writers))
    outcomes: list[str] = []

    def write(index: int, writer: ConfigMapRoutingStore) -> None:
        barrier.wait()
        try:
            writer.write(table(10.0 + index), 1)
            outcomes.append("won")
        except VersionConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=item) for item in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["won"]
    assert writers[0].versions() == {"support": 2}


def test_a_watching_store_sees_every_change_without_asking(api: Any, kube: Any) -> None:
    writer, watcher = store(api), store(api, watch=True)
    try:
        assert watcher.wait_synced(5.0)
        assert watcher.versions() == {}
        written = writer.write(table(5.0), None)
        wait_until(lambda: watcher.versions() == {"support": 1}, what="the first table")
        writer.write(table(50.0), written.version)
        wait_until(lambda: watcher.versions() == {"support": 2}, what="the second table")
        before = kube.store.requests.copy()
        for _ in range(100):
            seen = watcher.read("support")
            assert seen is not None and seen.canary_weight == 50.0
            watcher.versions()
        assert kube.store.requests == before, "a watching store reads from memory"
    finally:
        watcher.close()


def test_a_watching_store_recovers_from_a_dropped_watch(api: Any, kube: Any) -> None:
    writer, watcher = store(api), store(api, watch=True)
    try:
        assert watcher.wait_synced(5.0)
        writer.write(table(5.0), None)
        wait_until(lambda: watcher.versions() == {"support": 1}, what="the first table")
        kube.set_unavailable(True)
        kube.set_unavailable(False)
        writer.write(table(7.0), 1)
        wait_until(lambda: watcher.versions() == {"support": 2}, within=15, what="the table")
    finally:
        watcher.close()


@pytest.mark.parametrize(
    ("data", "annotations", "problem"),
    [
        ({"routing.json": "{not json"}, {"coalmine.dev/routing-version": "1"}, "Invalid JSON"),
        ({}, {"coalmine.dev/routing-version": "1"}, "no routing.json key"),
        (
            {"routing.json": table(5.0).model_copy(update={"version": 1}).model_dump_json()},
            {"coalmine.dev/routing-version": "one"},
            "not a version number",
        ),
        (
            {"routing.json": table(5.0).model_copy(update={"version": 4}).model_dump_json()},
            {"coalmine.dev/routing-version": "1"},
            "says 'support' v4",
        ),
    ],
)
def test_a_hand_edited_configmap_that_is_not_a_table_is_refused(
    api: Any, data: dict[str, str], annotations: dict[str, str], problem: str
) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(
        NAMESPACE,
        {
            "metadata": {"name": f"{PREFIX}-support-routing", "annotations": annotations},
            "data": data,
        },
    )
    with pytest.raises(BadRoutingTableError, match=problem) as raised:
        reader = store(api)
        reader.read("support")
    assert f"configmap {NAMESPACE}/{PREFIX}-support-routing" in str(raised.value)
