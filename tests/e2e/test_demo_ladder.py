"""`coalmine demo --scenario ladder` for real: the Langfuse emulator, the agents, one
`coalmine run`, the evaluator and the users on loopback; the golden dataset written with
the Langfuse SDK; three candidates up the release ladder, one after another."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from coalmine.demo.ladder import APPROVER, LadderResult, RolloutResult, run_ladder
from coalmine.demo.scenarios import RELEASE, SCENARIOS

pytestmark = pytest.mark.slow

WITHIN = 600.0
"""The whole run's deadline: three rollouts of seconds each, on a loaded machine."""
APPROVED_BY = f"admin-api ({APPROVER})"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _ending(rollout: RolloutResult) -> dict[str, Any]:
    return next(d for d in rollout.decisions if d["decision"] in ("rollback", "approve"))


def test_three_candidates_up_the_ladder(tmp_path: Path) -> None:
    result = run_ladder(SCENARIOS["ladder"], timeout=WITHIN, workdir=tmp_path)
    summary = json.dumps(result.summary(), indent=1)
    assert len(result.pids) == 6  # emulator, three agents, coalmine run, evaluator
    assert all(_gone(pid) for pid in result.pids)
    try:
        _check(result)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- summary ---\n{summary}") from error
    print("ladder:", json.dumps({"seconds": result.seconds, "requests": result.requests}))


def _check(result: LadderResult) -> None:
    assert len(result.rollouts) == 3
    bad, subtle, good = result.rollouts
    assert [(r.rollout, r.version) for r in result.rollouts] == [(1, 2), (2, 3), (3, 4)]
    assert [(r.outcome.value, r.rung) for r in result.rollouts] == [
        ("rolled_back", "dataset"),
        ("rolled_back", "shadow"),
        ("promoted", "approval"),
    ]
    assert result.ok

    # the decision log: each rollback names its rung; the good one passed both rungs
    assert _ending(bad)["rung"] == "dataset"
    assert _ending(subtle)["rung"] == "shadow"
    assert [d["decision"] for d in bad.decisions] == ["start", "rollback"]
    assert [d["decision"] for d in subtle.decisions] == ["start", "pass_rung", "rollback"]
    assert [(d["decision"], d["rung"]) for d in good.decisions if d["rung"]] == [
        ("pass_rung", "dataset"),
        ("pass_rung", "shadow"),
    ]
    assert [d["decision"] for d in good.decisions][-2:] == ["await_approval", "approve"]
    assert {d["actor"] for d in bad.decisions + subtle.decisions} == {"controller"}

    # no user ever reached the two bad candidates; the good one served users
    assert bad.canary_requests == 0
    assert subtle.canary_requests == 0
    assert good.canary_requests is not None and good.canary_requests > 0

    # the approval, in the decision log and the label history
    assert good.approved_by == APPROVED_BY
    assert _ending(good)["actor"] == APPROVED_BY
    moves = [
        (m["rollout"], m["label"], m["fromVersion"], m["toVersion"], m["actor"])
        for m in result.label_moves
    ]
    assert moves == [
        (1, "canary", 2, 1, "controller"),
        (2, "canary", 3, 1, "controller"),
        (3, "production", 1, 4, APPROVED_BY),
    ]
    assert result.labels == {"production": 4, "canary": 4}

    # each dataset run: two experiments of the dataset, one per arm, named apart
    names: list[str] = []
    for rollout in result.rollouts:
        assert len(rollout.experiments) == 2, rollout.experiments
        assert {e["itemCount"] for e in rollout.experiments} == {60}
        assert len({e["datasetId"] for e in rollout.experiments}) == 1
        names.extend(e["name"] for e in rollout.experiments)
        assert [e["name"] for e in rollout.experiments] == [
            f"coalmine {RELEASE} rollout {rollout.rollout} attempt 1 {arm}"
            for arm in ("baseline", "candidate")
        ]
    assert len(set(names)) == 6
    assert result.requests["sent"] > 0
