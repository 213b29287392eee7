"""The status line that says where a release's requests are counted and how its scores
are sampled."""

from __future__ import annotations

from typing import Any

import pytest

from coalmine.cli.releases import _time, traffic_line

M = 1_800_000_000


@pytest.mark.parametrize(
    ("traffic", "line"),
    [
        (
            {"countedBy": "langfuse"},
            "traffic: requests counted from the traces read in Langfuse; "
            "scores read for every request",
        ),
        (
            {"countedBy": "proxies", "proxies": []},
            "traffic: requests counted by no proxy yet; scores read for every request",
        ),
        (
            {"countedBy": "proxies", "proxies": ["a"], "scoreSample": []},
            "traffic: requests counted by 1 proxy; scores read for every request",
        ),
        (
            {"countedBy": "proxies", "proxies": ["a", "b"], "lateRequests": 7},
            "traffic: requests counted by 2 proxies (7 counted too late to judge); scores read "
            "for every request",
        ),
    ],
)
def test_traffic_line(traffic: dict[str, Any], line: str) -> None:
    assert traffic_line(traffic) == line


def test_the_sample_rates_and_when_they_apply() -> None:
    traffic = {
        "countedBy": "proxies",
        "proxies": ["a"],
        "scoreSample": [{"from": M, "rate": 0.2}, {"from": M + 120, "rate": 0.0125}],
    }
    assert traffic_line(traffic) == (
        f"traffic: requests counted by 1 proxy; score sample 20% from {_time(M)}, then "
        f"1.25% from {_time(M + 120)}"
    )
