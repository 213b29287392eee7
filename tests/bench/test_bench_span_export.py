"""The span exporter benchmark at a tiny size: it runs, both reporters deliver every span
of a healthy run, and its report has the shape the summary and the docs expect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.span_recording import outcome_at

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SPANS = 300
PACED = 200


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("span_export")
    args = ["--spans", str(SPANS), "--paced-spans", str(PACED), "--rate", "2000"]
    args += ["--slow-ms", "20", "--timeout", "2", "--out", str(out)]
    subprocess.run(
        [sys.executable, "-m", "bench.span_export", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    data = json.loads((out / "span_export.json").read_text())
    return data, (out / "span_export.md").read_text()


def _runs(data: dict[str, Any], section: str) -> list[tuple[str, str]]:
    return [
        (run["result"]["spec"]["reporter"], run["result"]["spec"]["collector"])
        for run in data["runs"]
        if run["section"] == section
    ]


def test_every_run_is_there(report: tuple[dict[str, Any], str]) -> None:
    data, _ = report
    assert data["sizes"] == {
        "spans": SPANS,
        "rate": 2000,
        "paced_spans": PACED,
        "timeout": 2.0,
        "slow_ms": 20.0,
    }
    assert _runs(data, "burst") == [
        ("none", "healthy"),
        ("coalmine", "healthy"),
        ("sdk", "healthy"),
    ]
    assert _runs(data, "memory") == [
        ("coalmine", "healthy"),
        ("sdk", "healthy"),
        ("coalmine", "down"),
        ("sdk", "down"),
    ]
    assert _runs(data, "paced") == [
        ("none", "healthy"),
        ("coalmine", "healthy"),
        ("sdk", "healthy"),
        ("coalmine", "slow"),
        ("sdk", "slow"),
        ("coalmine", "down"),
        ("sdk", "down"),
    ]


def test_spans_reach_a_healthy_collector_and_none_a_dead_one(
    report: tuple[dict[str, Any], str],
) -> None:
    data, _ = report
    for run in data["runs"]:
        spec, arrived = run["result"]["spec"], run["arrived"]
        assert run["result"]["offered"] == spec["spans"]
        assert set(run["result"]["counts"]) == {"sent", "dropped_full", "failed"}
        assert (run["result"]["traced_peak_mb"] is not None) == spec["tracemalloc"]
        if spec["reporter"] == "none" or spec["collector"] == "down":
            assert arrived["spans"] == 0
        elif run["section"] == "burst":
            assert arrived["spans"] == SPANS
            assert run["result"]["counts"]["sent"] == SPANS
            assert arrived["resources"] == [{"service.name": "coalmine-proxy"}]
            assert arrived["scopes"] == ["coalmine.proxy"]


def test_the_report_has_its_tables_and_a_verdict(report: tuple[dict[str, Any], str]) -> None:
    _, text = report
    assert text.startswith("# Request spans: coalmine's exporter against the OpenTelemetry SDK")
    for heading in (
        f"## Burst of {SPANS} spans, healthy collector",
        "## Memory (`tracemalloc` peak, from the first `record` to closed)",
        f"## Paced: 2,000 spans/s until {PACED}",
        "## Verdict",
    ):
        assert heading in text
    verdict = text.split("## Verdict", 1)[1]
    assert ("**Keep coalmine's exporter.**" in verdict) != ("**Replace it" in verdict)


@pytest.mark.parametrize("index", [0, 1, 3, 7, 11, 17, 99_999])
def test_outcomes_have_valid_distinct_ids(index: int) -> None:
    outcome = outcome_at(index)
    assert len(outcome.trace_id) == 32 and int(outcome.trace_id, 16)
    assert len(outcome.span_id) == 16 and int(outcome.span_id, 16)
    assert outcome.span_id != outcome_at(index + 1).span_id
    assert (outcome.parent_span_id is None) == (index % 2 == 0)
