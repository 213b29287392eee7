"""The controller's reader of the proxies' counts, over the state file and over
ConfigMaps on a fake API server driven by the official client: several proxies summed,
retention, documents that cannot be read left out and reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from coalmine.shared.aggregates import configmap as configmap_store
from coalmine.shared.aggregates.configmap import (
    AGGREGATES_LABEL,
    ConfigMapAggregateStore,
    aggregates_name,
)
from coalmine.shared.aggregates.model import MinuteCell, decode_document
from coalmine.shared.aggregates.sqlite import SqliteAggregateStore
from coalmine.shared.kube.client import KubeConflictError
from controller.source.aggregates import ProxyCounts
from policies.domain import Arm
from tests.fakes.kube_api import FakeKubeServer

T = 1_800_000_000 // 60 * 60
B, C = Arm.BASELINE, Arm.CANARY
NAMESPACE = "shop"
PREFIX = "shop-app"


def cell(
    arm: Arm, minute: int, n: int, e: int, bins: dict[int, int], release: str = "support"
) -> MinuteCell:
    return MinuteCell(release, arm, minute, n, e, bins)


PROXY_A = [
    cell(B, T, 3, 1, {400: 2, 450: 1}),
    cell(C, T, 1, 0, {460: 1}),
    cell(B, T + 60, 2, 0, {401: 2}),
    cell(B, T, 9, 9, {1: 9}, release="billing"),
]
PROXY_B = [
    cell(B, T, 2, 0, {400: 1, 401: 1}),
    cell(C, T, 4, 2, {460: 2, 470: 2}),
    cell(C, T + 120, 1, 1, {900: 1}),
]
SUMMED = {
    (B, T): cell(B, T, 5, 1, {400: 3, 401: 1, 450: 1}),
    (C, T): cell(C, T, 5, 2, {460: 3, 470: 2}),
    (B, T + 60): cell(B, T + 60, 2, 0, {401: 2}),
    (C, T + 120): cell(C, T + 120, 1, 1, {900: 1}),
}
NOW = T + 150


def configmap_writer(api: Any, proxy: str, **kwargs: Any) -> ConfigMapAggregateStore:
    return ConfigMapAggregateStore(api, NAMESPACE, PREFIX, proxy, **kwargs)


# -- the state file ---------------------------------------------------------------------


def test_two_proxies_in_the_state_file_are_summed(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    SqliteAggregateStore(state, "host-1").write(PROXY_A, NOW)
    SqliteAggregateStore(state, "host-2").write(PROXY_B, NOW)
    counts = ProxyCounts.local(state)
    assert counts.read("support", T, T + 180) == SUMMED
    assert counts.read("support", T + 60, T + 120) == {(B, T + 60): SUMMED[(B, T + 60)]}
    assert counts.read("billing", T, T + 60) == {(B, T): PROXY_A[3]}
    assert counts.proxies_seen("support", T) == {"host-1", "host-2"}
    assert counts.proxies_seen("support", T + 61) == {"host-2"}
    assert counts.problems == ()
    counts.close()


def test_a_proxy_replaces_its_own_rows_and_never_anothers(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    first, second = SqliteAggregateStore(state, "host-1"), SqliteAggregateStore(state, "host-2")
    first.write([cell(B, T, 1, 0, {400: 1})], NOW)
    second.write([cell(B, T, 1, 1, {500: 1})], NOW)
    first.write([cell(B, T, 3, 0, {400: 3})], NOW)  # the same cell, grown: replaced
    assert ProxyCounts.local(state).read("support", T, T + 60) == {
        (B, T): cell(B, T, 4, 1, {400: 3, 500: 1})
    }


def test_rows_past_the_retention_are_deleted_by_the_writer(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    old = SqliteAggregateStore(state, "gone", retention_seconds=7200)
    old.write([cell(B, T, 1, 0, {1: 1})], T + 30)
    writer = SqliteAggregateStore(state, "live", retention_seconds=7200)
    writer.write([cell(B, T + 7200, 1, 0, {1: 1})], T + 7200 + 59)
    rows = sqlite3.connect(state).execute("SELECT proxy, minute FROM proxy_minutes").fetchall()
    assert sorted(rows) == [("gone", T), ("live", T + 7200)], (
        "a minute is kept until the retention has passed all of it"
    )
    writer.write([cell(B, T + 7260, 1, 0, {1: 1})], T + 7260)
    rows = sqlite3.connect(state).execute("SELECT proxy, minute FROM proxy_minutes").fetchall()
    assert sorted(rows) == [("live", T + 7200), ("live", T + 7260)]
    # a cell already past the retention is not written at all
    writer.write([cell(C, T, 1, 0, {1: 1})], T + 7260)
    assert ProxyCounts.local(state).read("support", 0, T + 7200) == {}


def test_a_malformed_row_is_reported_and_left_out(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    SqliteAggregateStore(state, "host-1").write(PROXY_A, NOW)
    SqliteAggregateStore(state, "host-2").write(PROXY_B, NOW)
    with sqlite3.connect(state) as db:
        db.execute(
            "UPDATE proxy_minutes SET document = '{\"n\":5}' "
            "WHERE proxy = 'host-2' AND arm = 'canary' AND minute = ?",
            (T,),
        )
        db.execute(
            "INSERT INTO proxy_minutes VALUES ('host-3', 'support', 'shadow', ?, "
            '\'{"n":1,"e":0,"l":[1,1]}\')',
            (T,),
        )
    counts = ProxyCounts.local(state)
    found = counts.read("support", T, T + 180)
    assert found[(C, T)] == PROXY_A[1], "the bad row of host-2 is left out, not zero"
    assert found[(B, T)] == SUMMED[(B, T)]
    assert len(counts.problems) == 2
    bad_counts = next(problem for problem in counts.problems if "'host-2'" in problem)
    assert f"{state}: proxy_minutes row of proxy 'host-2'" in bad_counts
    assert "arm 'canary', minute " + str(T) in bad_counts and "e: Field required" in bad_counts
    assert any("'shadow' is not an arm" in problem for problem in counts.problems)


def test_no_state_file_reads_as_no_counts(tmp_path: Path) -> None:
    counts = ProxyCounts.local(tmp_path / "none.db")
    assert counts.read("support", T, T + 60) == {}
    assert counts.proxies_seen("support", T) == frozenset()


# -- ConfigMaps -------------------------------------------------------------------------


def test_two_proxies_configmaps_are_summed(api: Any) -> None:
    configmap_writer(api, "pod-a").write(PROXY_A, NOW)
    configmap_writer(api, "pod-b").write(PROXY_B, NOW)
    counts = ProxyCounts.cluster(api, NAMESPACE, PREFIX)
    assert counts.read("support", T, T + 180) == SUMMED
    assert counts.read("billing", T, T + 60) == {(B, T): PROXY_A[3]}
    assert counts.proxies_seen("support", T) == {"pod-a", "pod-b"}
    assert counts.proxies_seen("support", T + 61) == {"pod-b"}
    stored = client.CoreV1Api(api).read_namespaced_config_map(
        aggregates_name(PREFIX, "pod-a"), NAMESPACE
    )
    assert stored.metadata.name == "shop-app-aggregates-pod-a"
    assert stored.metadata.labels[AGGREGATES_LABEL] == "true"


def test_the_reader_pages_through_many_configmaps(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configmap_store, "LIST_PAGE", 2)
    for index in range(5):
        configmap_writer(api, f"pod-{index}").write([cell(B, T, 1, 0, {400: 1})], NOW)
    counts = ProxyCounts.cluster(api, NAMESPACE, PREFIX)
    assert counts.read("support", T, T + 60) == {(B, T): cell(B, T, 5, 0, {400: 5})}
    assert len(counts.proxies_seen("support", T)) == 5


def test_a_proxy_keeps_the_last_retention_in_its_configmap(api: Any) -> None:
    writer = configmap_writer(api, "pod-a", retention_seconds=600)
    writer.write([cell(B, T, 1, 0, {1: 1})], T + 10)
    writer.write([cell(B, T + 60, 2, 0, {1: 2})], T + 70)  # the first minute stays
    writer.write([cell(B, T + 60, 3, 0, {1: 3})], T + 80)  # its cell grows: replaced
    counts = ProxyCounts.cluster(api, NAMESPACE, PREFIX)
    assert counts.read("support", T, T + 120) == {
        (B, T): cell(B, T, 1, 0, {1: 1}),
        (B, T + 60): cell(B, T + 60, 3, 0, {1: 3}),
    }
    writer.write([cell(B, T + 660, 1, 0, {1: 1})], T + 661)  # T is past the retention
    assert set(counts.read("support", 0, 2**40)) == {(B, T + 60), (B, T + 660)}


def test_a_conflicting_write_reads_the_configmap_again_and_retries(
    api: Any, kube: FakeKubeServer
) -> None:
    writer = configmap_writer(api, "pod-a")
    writer.write([cell(B, T, 1, 0, {1: 1})], NOW)
    kube.fail_next(2, status=409, verbs=["update"], resources=["configmaps"])
    writer.write([cell(B, T, 2, 0, {1: 2})], NOW)
    assert ProxyCounts.cluster(api, NAMESPACE, PREFIX).read("support", T, T + 60) == {
        (B, T): cell(B, T, 2, 0, {1: 2})
    }
    kube.fail_next(3, status=409, verbs=["update"], resources=["configmaps"])
    with pytest.raises(KubeConflictError):
        writer.write([cell(B, T, 3, 0, {1: 3})], NOW)
    writer.write([cell(B, T, 3, 0, {1: 3})], NOW)
    assert ProxyCounts.cluster(api, NAMESPACE, PREFIX).read("support", T, T + 60) == {
        (B, T): cell(B, T, 3, 0, {1: 3})
    }


def test_a_restarted_proxy_adds_to_what_its_previous_run_stored(api: Any) -> None:
    configmap_writer(api, "pod-a").write([cell(B, T, 2, 1, {1: 2})], NOW)
    restarted = configmap_writer(api, "pod-a")
    restarted.write([cell(B, T, 1, 0, {5: 1})], NOW)
    restarted.write([cell(B, T, 3, 0, {5: 3})], NOW)
    assert ProxyCounts.cluster(api, NAMESPACE, PREFIX).read("support", T, T + 60) == {
        (B, T): cell(B, T, 5, 1, {1: 2, 5: 3})
    }


def test_a_malformed_or_foreign_configmap_is_reported_and_left_out(api: Any) -> None:
    configmap_writer(api, "pod-a").write(PROXY_A, NOW)
    core = client.CoreV1Api(api)
    for name, data in (
        ("shop-app-aggregates-bad", {"aggregates.json": '{"v":1,"proxy":"bad","cells":{"x":1}}'}),
        ("someone-elses", {"config.yaml": "a: 1"}),
    ):
        core.create_namespaced_config_map(
            NAMESPACE,
            {"metadata": {"name": name, "labels": {AGGREGATES_LABEL: "true"}}, "data": data},
        )
    counts = ProxyCounts.cluster(api, NAMESPACE, PREFIX)
    assert counts.read("support", T, T + 180) == {
        (B, T): PROXY_A[0],
        (C, T): PROXY_A[1],
        (B, T + 60): PROXY_A[2],
    }
    assert sorted(counts.problems) == [
        "configmap shop/shop-app-aggregates-bad: cells.x: Input should be an object",
        "configmap shop/someone-elses: no aggregates.json key",
    ]


def test_a_document_over_the_size_bound_loses_its_oldest_minutes(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configmap_store, "MAX_DOCUMENT_BYTES", 400)
    many = [cell(B, T + 60 * index, 10, 0, dict.fromkeys(range(10), 1)) for index in range(10)]
    left_out = configmap_writer(api, "pod-a").write(many, T + 600)
    stored = client.CoreV1Api(api).read_namespaced_config_map(
        "shop-app-aggregates-pod-a", NAMESPACE
    )
    document = stored.data["aggregates.json"]
    assert len(document) <= 400
    _, kept = decode_document(document, where="here")
    assert left_out == 10 - len(kept) > 0
    assert sorted(c.minute for c in kept) == [T + 60 * i for i in range(left_out, 10)]
