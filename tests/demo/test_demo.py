"""`coalmine demo` end to end: every scenario reaches its outcome, the emulator's labels
say so, and no process it started is left."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coalmine.cli import main
from coalmine.demo.run import DemoResult, run_demo
from coalmine.demo.scenarios import SCENARIOS, Outcome

pytestmark = pytest.mark.slow

SPEED = 3.0


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _run(name: str, tmp_path: Path) -> DemoResult:
    result = run_demo(SCENARIOS[name], speed=SPEED, timeout=170.0, workdir=tmp_path)
    assert len(result.pids) == 6  # emulator, three agents, coalmine run, evaluator
    assert all(_gone(pid) for pid in result.pids)
    return result


def test_a_bad_canary_is_rolled_back(tmp_path: Path) -> None:
    result = _run("bad-canary", tmp_path)
    assert result.outcome is Outcome.ROLLED_BACK, result.summary()
    assert result.labels == {"production": 1, "canary": 1}
    assert [record["decision"] for record in result.decisions] == ["start", "rollback"]
    assert result.samples["canary"] > 0 and result.samples["baseline"] > 0


def test_a_good_canary_is_promoted_through_every_step(tmp_path: Path) -> None:
    result = _run("good-canary", tmp_path)
    assert result.outcome is Outcome.PROMOTED, result.summary()
    assert result.labels == {"production": 2, "canary": 2}
    assert [record["decision"] for record in result.decisions] == [
        "start",
        "advance",
        "promote",
    ]


def test_shadow_traffic_reaches_staging_with_no_effect_on_users(tmp_path: Path) -> None:
    result = _run("shadow", tmp_path)
    assert result.outcome is Outcome.SHADOWED, result.summary()
    assert result.samples["shadow"] >= 20
    assert result.samples["canary"] == 0
    assert result.requests["failed"] == 0
    assert result.labels == {"production": 1, "canary": 1}


def test_the_json_summary_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--scenario", "shadow", "--speed", str(SPEED), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"outcome", "decided_at", "samples", "labels"} <= set(summary)
    assert summary["outcome"] == "shadowed"


def test_an_unknown_scenario_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenario", "nope"]) == 2
    assert "--scenario" in capsys.readouterr().err
