"""`python -m bench.replay_speed` on a small stream: it runs and reports what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import replay_speed

pytestmark = pytest.mark.slow


def test_small_run_writes_its_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_speed.main(["--lines", "4000", "--out", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    report = (tmp_path / "replay_speed.md").read_text(encoding="utf-8")
    assert report.strip() == out.strip()
    assert "Command: `python -m bench.replay_speed --lines 4000 --out " in report
    payload = json.loads((tmp_path / "replay_speed.json").read_text(encoding="utf-8"))
    reference, replay = payload["measurements"]
    assert reference["lines"] == replay["lines"] > 3500
    assert replay["outcome"] == "running"  # undecided: the judge is asked at every interval
    assert replay["looks"] == pytest.approx(payload["stream_minutes"], abs=2)
    assert payload["ratio"] == pytest.approx(replay["seconds"] / reference["seconds"])
    for measurement in (reference, replay):
        assert measurement["seconds"] > 0
        assert measurement["peak_rss_mb"] > 0
