"""The notification queue benchmark at a tiny size: it runs every contender against a
healthy, a slow and a dead receiver, and its report has the expected shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONTENDERS = ["coalmine", "executor", "queue", "tenacity"]
EVENTS = 40
BURST = 300


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("notify_queue")
    args = ["--events", str(EVENTS), "--rate", "400", "--burst", str(BURST)]
    args += ["--slow-ms", "20", "--close-timeout", "0.5", "--out", str(out)]
    subprocess.run(
        [sys.executable, "-m", "bench.notify_queue", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    data = json.loads((out / "notify_queue.json").read_text())
    return data, (out / "notify_queue.md").read_text()


def test_every_contender_meets_every_receiver(report: tuple[dict[str, Any], str]) -> None:
    data, _ = report
    plans = [
        (r["plan"]["contender"], r["plan"]["condition"], r["plan"]["traced"]) for r in data["runs"]
    ]
    assert plans == [
        *((name, "healthy", False) for name in CONTENDERS),
        *((name, "slow", False) for name in CONTENDERS),
        *((name, "down", False) for name in CONTENDERS),
        *((name, "down", True) for name in CONTENDERS),
    ]


def test_outcomes_add_up(report: tuple[dict[str, Any], str]) -> None:
    data, _ = report
    for run in data["runs"]:
        plan, counts = run["plan"], run["counts"]
        assert set(counts) == {"sent", "failed", "rejected", "dropped"}
        assert run["send_us"]["n"] == plan["events"]
        assert run["received"] == counts["sent"]
        assert run["lost"] == plan["events"] - run["received"]
        assert (run["traced_mb"] is not None) == plan["traced"]
        if plan["condition"] == "healthy":
            assert run["received"] == EVENTS
            assert run["delivery_ms"]["n"] == EVENTS
        if plan["condition"] == "down":
            assert run["received"] == 0
            assert counts["sent"] == 0


def test_the_report_has_its_tables_and_a_verdict(report: tuple[dict[str, Any], str]) -> None:
    _, text = report
    assert text.startswith("# Notification queue: coalmine's notifier against the ecosystem's")
    for heading in (
        "## Delivery latency: from `send` to the receiver's reading the event",
        f"## Receiver down: a burst of {BURST} events, then `close(0.5)`",
        "## Every run: what each contender counted against what the receiver got",
        "## Verdict",
    ):
        assert heading in text
    verdict = text.split("## Verdict", 1)[1]
    assert ("**Keep coalmine's queue.**" in verdict) != ("**Replace it" in verdict)
