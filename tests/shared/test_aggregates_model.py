"""Proxy count cells: sums over proxies, their compact JSON, and documents refused."""

from __future__ import annotations

import json

import pytest

from coalmine.shared.aggregates.model import (
    BadAggregatesError,
    MinuteCell,
    decode_counts,
    decode_document,
    encode_counts,
    encode_document,
    merge,
    minute_of,
)
from policies.domain import Arm

T = 1_800_000_000 // 60 * 60
B, C = Arm.BASELINE, Arm.CANARY


def test_minute_of_is_the_start_of_the_utc_minute_in_seconds() -> None:
    assert minute_of(T * 10**9) == T
    assert minute_of((T + 59) * 10**9 + 999_999_999) == T
    assert minute_of((T + 60) * 10**9) == T + 60


def test_cells_of_several_proxies_add_up_per_release_arm_and_minute() -> None:
    cells = [
        MinuteCell("support", B, T, 3, 1, {400: 2, 450: 1}),
        MinuteCell("support", B, T, 2, 0, {400: 1, 401: 1}),
        MinuteCell("support", C, T, 1, 1, {500: 1}),
        MinuteCell("support", B, T + 60, 4, 0, {10: 4}),
        MinuteCell("billing", B, T, 5, 5, {1: 5}),
    ]
    summed = merge(cells)
    assert summed == {
        ("support", B, T): MinuteCell("support", B, T, 5, 1, {400: 3, 401: 1, 450: 1}),
        ("support", C, T): MinuteCell("support", C, T, 1, 1, {500: 1}),
        ("support", B, T + 60): MinuteCell("support", B, T + 60, 4, 0, {10: 4}),
        ("billing", B, T): MinuteCell("billing", B, T, 5, 5, {1: 5}),
    }


def test_counts_are_compact_and_read_back() -> None:
    cell = MinuteCell("support", C, T, 6, 2, {-(10**9): 1, 463: 3, 464: 1, 700: 1})
    text = encode_counts(cell)
    assert text == '{"n":6,"e":2,"l":[-1000000000,1,1000000463,3,1,1,236,1]}'
    assert decode_counts(text, "support", C, T, where="here") == cell


def test_a_document_of_a_proxy_reads_back() -> None:
    cells = [
        MinuteCell("support", B, T, 2, 0, {400: 2}),
        MinuteCell("support", C, T + 60, 1, 1, {401: 1}),
        MinuteCell("billing", B, T, 1, 0, {7: 1}),
    ]
    text = encode_document("pod-a", cells)
    assert json.loads(text)["cells"]["support"]["canary"] == {
        str(T + 60): {"n": 1, "e": 1, "l": [401, 1]}
    }
    proxy, found = decode_document(text, where="configmap shop/x")
    assert proxy == "pod-a"
    assert sorted(found, key=lambda cell: (cell.release, cell.minute)) == sorted(
        cells, key=lambda cell: (cell.release, cell.minute)
    )


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("not json", "Invalid JSON"),
        ('{"n":1,"e":0}', "l: Field required"),
        ('{"n":1,"e":0,"l":[5,1],"extra":1}', "extra: Extra inputs are not permitted"),
        ('{"n":"1","e":0,"l":[5,1]}', "n: Input should be a valid integer"),
        ('{"n":true,"e":0,"l":[5,1]}', "n: Input should be a valid integer"),
        ('{"n":1,"e":2,"l":[5,1]}', "2 errors out of 1 requests"),
        ('{"n":-1,"e":0,"l":[]}', "n: Input should be greater than or equal to 0"),
        ('{"n":2,"e":0,"l":[5,1,0,1]}', "bins must increase"),
        ('{"n":2,"e":0,"l":[5,2,1]}', "odd length"),
        ('{"n":2,"e":0,"l":[5,0,1,2]}', "counts must be positive"),
        ('{"n":3,"e":0,"l":[5,2]}', "latencies of 2 requests, not 3"),
    ],
)
def test_malformed_counts_are_refused_naming_where(document: str, problem: str) -> None:
    with pytest.raises(BadAggregatesError, match=r"^state\.db row 7: ") as refused:
        decode_counts(document, "support", B, T, where="state.db row 7")
    assert problem in str(refused.value)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("[]", "(document): Input should be an object"),
        ('{"v":2,"proxy":"a","cells":{}}', "v: Input should be 1"),
        ('{"kind":"Release"}', "v: Field required"),
        ('{"v":1,"proxy":"","cells":{}}', "proxy: String should have at least 1 character"),
        ('{"v":1,"proxy":"a","cells":{"s":{"shadow":{}}}}', "cells.s: 'shadow' is not an arm"),
        (
            '{"v":1,"proxy":"a","cells":{"s":{"canary":{"61":{"n":0,"e":0,"l":[]}}}}}',
            "cells.s.canary: '61' is not the start of a minute",
        ),
        (
            '{"v":1,"proxy":"a","cells":{"s":{"canary":{"60":{"n":1,"e":0,"l":[]}}}}}',
            "cells.s.canary.60: Value error, l: latencies of 0 requests, not 1",
        ),
    ],
)
def test_malformed_or_foreign_documents_are_refused_naming_where(
    document: str, problem: str
) -> None:
    with pytest.raises(BadAggregatesError) as refused:
        decode_document(document, where="configmap shop/x")
    message = str(refused.value)
    assert message.startswith("configmap shop/x: ")
    assert problem in message


def test_bins_out_of_range_are_refused() -> None:
    with pytest.raises(BadAggregatesError, match="within"):
        decode_counts('{"n":2,"e":0,"l":[999999999,1,2,1]}', "s", B, T, where="here")
    with pytest.raises(BadAggregatesError, match="within"):
        decode_counts('{"n":1,"e":0,"l":[-1000000001,1]}', "s", B, T, where="here")
