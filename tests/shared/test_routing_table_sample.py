"""The score sample of a routing table: its JSON, its checks, the rate in force at an
arrival, old documents without it, and both stores keeping it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from coalmine.shared.routing_tables.configmap import ConfigMapRoutingStore
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from coalmine.shared.routing_tables.table import ArmRoute, RoutingTable, SampleRate
from tests.fakes.kube_api import FakeKubeServer

T = 1_800_000_000 // 60 * 60
OLD_DOCUMENT = {
    "release": "support",
    "version": 3,
    "canaryWeight": 5.0,
    "baseline": {"upstream": "http://127.0.0.1:8000", "promptLabel": "production"},
    "canary": {"upstream": "http://127.0.0.1:8001", "promptLabel": "canary"},
    "shadow": None,
    "updatedAt": "2026-12-06T22:00:00Z",
    "reason": "step 1",
}


def document(score_sample: Any) -> str:
    return json.dumps({**OLD_DOCUMENT, "scoreSample": score_sample})


def table(*entries: tuple[int, float]) -> RoutingTable:
    return RoutingTable(
        release="support",
        version=0,
        canary_weight=5.0,
        baseline=ArmRoute(upstream="http://127.0.0.1:8000"),
        canary=ArmRoute(upstream="http://127.0.0.1:8001"),
        score_sample=tuple(SampleRate(from_=start, rate=rate) for start, rate in entries),
    )


def test_a_document_without_a_sample_reads_as_everything_sampled() -> None:
    old = RoutingTable.model_validate_json(json.dumps(OLD_DOCUMENT))
    assert old.score_sample == ()
    assert old.sample_rate(0) == old.sample_rate(T) == 1.0


def test_the_sample_is_camel_case_json_and_reads_back() -> None:
    text = document([{"from": T, "rate": 0.25}, {"from": T + 120, "rate": 0.1}])
    read = RoutingTable.model_validate_json(text)
    assert read.score_sample == (
        SampleRate(from_=T, rate=0.25),
        SampleRate(from_=T + 120, rate=0.1),
    )
    written = json.loads(read.model_dump_json(by_alias=True))
    assert written["scoreSample"] == [{"from": T, "rate": 0.25}, {"from": T + 120, "rate": 0.1}]
    assert RoutingTable.model_validate_json(read.model_dump_json(by_alias=True)) == read


@pytest.mark.parametrize(
    ("arrival", "rate"),
    [
        (0, 1.0),  # before the first entry: every request, as before any sample
        (T - 1, 1.0),
        (T, 0.25),  # from the first second of the entry's minute
        (T + 119, 0.25),
        (T + 120, 0.1),
        (T + 10**6, 0.1),
    ],
)
def test_the_rate_in_force_is_the_last_entry_begun_at_the_arrival(
    arrival: int, rate: float
) -> None:
    assert table((T, 0.25), (T + 120, 0.1)).sample_rate(arrival) == rate


@pytest.mark.parametrize(
    ("score_sample", "problem"),
    [
        ([{"from": T + 30, "rate": 0.5}], "is not the start of a minute"),
        ([{"from": -60, "rate": 0.5}], "greater than or equal to 0"),
        ([{"from": T, "rate": 1.5}], "less than or equal to 1"),
        ([{"from": T, "rate": -0.1}], "greater than or equal to 0"),
        ([{"from": T, "rate": "0.5"}], "valid number"),
        ([{"from": str(T), "rate": 0.5}], "valid integer"),
        ([{"from": float(T), "rate": 0.5}], "valid integer"),
        ([{"from": True, "rate": 0.5}], "valid integer"),
        ([{"from": T}], "rate"),
        ([{"from": T, "rate": 0.5, "until": T + 60}], "Extra inputs are not permitted"),
        ([{"from": T, "rate": 0.5}, {"from": T, "rate": 0.2}], "from must increase"),
        ([{"from": T + 60, "rate": 0.5}, {"from": T, "rate": 0.2}], "from must increase"),
        (
            [{"from": T, "rate": 0.5}, {"from": T + 60, "rate": 0.2}, {"from": T + 120, "rate": 1}],
            "at most 2 items",
        ),
        ({"from": T, "rate": 0.5}, "valid array"),
    ],
)
def test_a_bad_sample_is_refused(score_sample: Any, problem: str) -> None:
    with pytest.raises(ValidationError) as refused:
        RoutingTable.model_validate_json(document(score_sample))
    assert problem in str(refused.value)


def test_a_rate_that_is_not_finite_is_refused() -> None:
    text = json.dumps({**OLD_DOCUMENT, "scoreSample": [{"from": T, "rate": float("nan")}]})
    with pytest.raises(ValidationError, match="finite number"):
        RoutingTable.model_validate_json(text)


def test_the_sqlite_store_keeps_the_sample(tmp_path: Path) -> None:
    store = SqliteRoutingStore(tmp_path / "state.db")
    written = store.write(table((T, 0.25), (T + 60, 0.5)), None)
    reader = SqliteRoutingStore(tmp_path / "state.db", readonly=True)
    assert reader.read("support") == written
    assert written.score_sample == (
        SampleRate(from_=T, rate=0.25),
        SampleRate(from_=T + 60, rate=0.5),
    )
    store.close()
    reader.close()


@pytest.fixture
def api() -> Iterator[Any]:
    with FakeKubeServer(token="coalmine-test-token") as kube:
        client = kube.api_client()
        yield client
        client.close()


@pytest.mark.parametrize("watch", [False, True])
def test_the_configmap_store_keeps_the_sample(api: Any, watch: bool) -> None:
    writer = ConfigMapRoutingStore(api, "shop", "shop-app", ["support"])
    written = writer.write(table((T, 0.01)), None)
    reader = ConfigMapRoutingStore(api, "shop", "shop-app", ["support"], watch=watch)
    try:
        assert not watch or reader.wait_synced(10.0)
        assert reader.read("support") == written
        assert written.sample_rate(T) == 0.01
    finally:
        reader.close()
