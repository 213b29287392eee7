"""The rollback-to-route benchmark at a tiny size: every way of routing is measured, and
its report has one row each, with the ratio to the routing table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_each_way_of_routing_is_timed_and_reported(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gateway_rollback",
            "--rollbacks",
            "3",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    data = json.loads((tmp_path / "gateway_rollback.json").read_text())
    for way in ("gatewayApi", "table", "bare"):
        assert data[way]["n"] == 3
        assert 0 < data[way]["p50"] <= data[way]["max"]
    text = (tmp_path / "gateway_rollback.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "ms |" in line]
    assert len(rows) == 3
    assert rows[1].endswith("| 1.00 |")
