"""The memory benchmark judged on the proxies' counts, in small: one simulated hour at
1,000 requests a minute with a score-read budget that affords a sample of a fifth."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.controller_memory import main, proxies_benchmark
from bench.controller_speed import MEMORY_START

BUDGET = 4.0
"""4 requests a minute x 0.75 x 100 ids / 1.5 reads a trace: 200 traces a minute."""


def test_the_sample_is_sized_and_every_count_reaches_the_evidence(tmp_path: Path) -> None:
    results = proxies_benchmark(tmp_path, 1, 1000, MEMORY_START, sample_budget=BUDGET)
    (hour,) = results.hours
    entry = results.score_sample[-1]  # the one in force at the end
    assert entry["rate"] == pytest.approx(0.2)
    assert entry["from"] % 60 == 0 and entry["from"] > MEMORY_START
    assert hour.sample_rate == pytest.approx(0.2)
    assert hour.requests == 60 * 1000
    assert hour.evidence_requests == hour.requests
    # a fifth of them once the rate is in force (before it: all, or none at a rate of 0)
    assert 150 < hour.sampled_per_minute < 300
    assert hour.sampled < hour.requests / 3
    assert hour.evidence_traces is not None and hour.evidence_traces <= hour.sampled
    assert results.phase == "canary"


def test_the_command_writes_its_own_report(tmp_path: Path) -> None:
    args = ["--from-proxies", "--hours", "1", "--rate", "100", "--out", str(tmp_path)]
    assert main([*args, "--sample-budget", str(BUDGET)]) == 0
    text = (tmp_path / "controller_memory_proxies.md").read_text()
    assert "| 1 |" in text and "sampled traces a minute" in text
    assert (tmp_path / "controller_memory_proxies.json").exists()
    assert not (tmp_path / "controller_memory.md").exists()
