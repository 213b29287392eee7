"""The sample and usage fields of proxy count cells: their compact JSON (left out when
zero, so older documents read unchanged), their sums over proxies, documents refused,
and both stores keeping them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coalmine.shared.aggregates.configmap import ConfigMapAggregateStore
from coalmine.shared.aggregates.model import (
    BadAggregatesError,
    MinuteCell,
    decode_counts,
    decode_document,
    encode_counts,
    encode_document,
    merge,
)
from coalmine.shared.aggregates.sqlite import SqliteAggregateStore
from controller.source.aggregates import ProxyCounts
from policies.domain import Arm
from tests.fakes.kube_api import FakeKubeServer

T = 1_800_000_000 // 60 * 60
B, C = Arm.BASELINE, Arm.CANARY
NOW = T + 150

FULL = MinuteCell("support", C, T, 6, 1, {400: 6}, 2, 4, 1200, 300, 3, 0.75, 0.1875)
"""Six requests: two sampled; four reported usage (1,200 + 300 tokens), three a cost of
0.25 each."""


def test_every_field_is_written_under_its_short_key_and_reads_back() -> None:
    text = encode_counts(FULL)
    assert json.loads(text) == {
        "n": 6,
        "e": 1,
        "l": [400, 6],
        "s": 2,
        "u": 4,
        "pt": 1200,
        "ct": 300,
        "cn": 3,
        "cs": 0.75,
        "cq": 0.1875,
    }
    assert decode_counts(text, "support", C, T, where="here") == FULL


def test_fields_at_zero_are_left_out_so_older_documents_read_unchanged() -> None:
    plain = MinuteCell("support", B, T, 2, 0, {400: 2})
    assert encode_counts(plain) == '{"n":2,"e":0,"l":[400,2]}'
    older = decode_counts('{"n":2,"e":0,"l":[400,2]}', "support", B, T, where="here")
    assert older == plain
    assert (older.sampled, older.usage, older.cost_n, older.cost_sum) == (0, 0, 0, 0.0)
    sampled_only = MinuteCell("support", B, T, 2, 0, {400: 2}, sampled=2)
    assert encode_counts(sampled_only) == '{"n":2,"e":0,"l":[400,2],"s":2}'


def test_a_float_cost_survives_the_round_trip_exactly() -> None:
    cost = 0.1 + 0.2  # no short decimal form
    cell = MinuteCell("support", B, T, 1, 0, {400: 1}, 1, 1, 10, 5, 1, cost, cost * cost)
    assert decode_counts(encode_counts(cell), "support", B, T, where="here") == cell


def test_cells_of_several_proxies_add_every_field() -> None:
    other = MinuteCell("support", C, T, 4, 0, {401: 4}, 1, 2, 100, 50, 1, 0.5, 0.25)
    summed = merge([FULL, other, MinuteCell("support", B, T, 1, 0, {1: 1})])
    assert summed[("support", C, T)] == MinuteCell(
        "support", C, T, 10, 1, {400: 6, 401: 4}, 3, 6, 1300, 350, 4, 1.25, 0.4375
    )
    assert summed[("support", B, T)] == MinuteCell("support", B, T, 1, 0, {1: 1})


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"s": -1}, "s: Input should be greater than or equal to 0"),
        ({"s": 3}, "3 sampled out of 2 requests"),
        ({"u": 3}, "usage of 3 out of 2 requests"),
        ({"u": -1}, "u: Input should be greater than or equal to 0"),
        ({"u": 1, "pt": -5}, "pt: Input should be greater than or equal to 0"),
        ({"u": 1, "cn": 2, "cs": 1.0, "cq": 1.0}, "costs of 2 requests, but usage of 1"),
        ({"pt": 10}, "tokens without any usage"),
        ({"u": 1, "cs": 0.5}, "a cost sum without any cost"),
        ({"u": 1, "cn": 1, "cs": -0.5, "cq": 0.25}, "cs: Input should be greater than or equal"),
        ({"u": 1, "cn": 1, "cs": 0.5, "cq": "0.25"}, "cq: Input should be a valid number"),
        ({"s": 1.0}, "s: Input should be a valid integer"),
        ({"s": True}, "s: Input should be a valid integer"),
        ({"x": 1}, "x: Extra inputs are not permitted"),
    ],
)
def test_inconsistent_sample_or_usage_fields_are_refused(
    extra: dict[str, Any], problem: str
) -> None:
    document = json.dumps({"n": 2, "e": 0, "l": [400, 2], **extra})
    with pytest.raises(BadAggregatesError, match=r"^row 7: ") as refused:
        decode_counts(document, "support", B, T, where="row 7")
    assert problem in str(refused.value)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_sums_that_are_not_finite_are_refused(value: str) -> None:
    document = '{"n":2,"e":0,"l":[400,2],"u":1,"cn":1,"cs":%s,"cq":1.0}' % value  # noqa: UP031
    with pytest.raises(BadAggregatesError, match="cs: Input should be a finite number"):
        decode_counts(document, "support", B, T, where="here")


def test_a_proxy_document_carries_the_fields() -> None:
    text = encode_document("pod-a", [FULL])
    assert json.loads(text)["cells"]["support"]["canary"][str(T)]["cq"] == 0.1875
    assert decode_document(text, where="configmap shop/x") == ("pod-a", [FULL])


PROXY_A = [
    MinuteCell("support", C, T, 6, 1, {400: 6}, 2, 4, 1200, 300, 3, 0.75, 0.1875),
    MinuteCell("support", B, T, 3, 0, {400: 3}, 3),
]
PROXY_B = [
    MinuteCell("support", C, T, 2, 0, {410: 2}, 1, 2, 20, 10, 2, 0.5, 0.125),
    MinuteCell("support", B, T, 1, 0, {400: 1}),
]
SUMMED = {
    (C, T): MinuteCell("support", C, T, 8, 1, {400: 6, 410: 2}, 3, 6, 1220, 310, 5, 1.25, 0.3125),
    (B, T): MinuteCell("support", B, T, 4, 0, {400: 4}, 3),
}


def test_the_state_file_keeps_the_fields_and_sums_them(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    SqliteAggregateStore(state, "host-1").write(PROXY_A, NOW)
    SqliteAggregateStore(state, "host-2").write(PROXY_B, NOW)
    counts = ProxyCounts.local(state)
    assert counts.read("support", T, T + 60) == SUMMED
    assert counts.problems == ()
    counts.close()


@pytest.fixture
def api() -> Iterator[Any]:
    with FakeKubeServer(token="coalmine-test-token") as kube:
        client = kube.api_client()
        yield client
        client.close()


def test_configmaps_keep_the_fields_and_sum_them(api: Any) -> None:
    ConfigMapAggregateStore(api, "shop", "shop-app", "pod-a").write(PROXY_A, NOW)
    ConfigMapAggregateStore(api, "shop", "shop-app", "pod-b").write(PROXY_B, NOW)
    counts = ProxyCounts.cluster(api, "shop", "shop-app")
    assert counts.read("support", T, T + 60) == SUMMED
    assert counts.problems == ()
