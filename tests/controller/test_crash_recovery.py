"""A controller killed with SIGKILL at each point of each action, then started again:
the state, the labels in Langfuse (the emulator) and the routing table agree, and the
decision log has no lost or doubled entry."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coalmine.emulator.settings import EmulatorSettings
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.release_store import ActionStatus, ControllerState
from policies.domain import Phase
from tests.emulator.emulator_support import LiveEmulator, emulator_with_prompt

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
CHILD = "tests.controller.crash_child"

ROLLBACK_POINTS = [
    "decide:after:0",
    "routing.write:before:1",
    "routing.write:after:1",
    "finish_action:after:1",
    "observe_action:after:1",
    "labels.move:before:1",
    "labels.move:after:1",
    "finish_action:before:2",
]
PROMOTION_POINTS = [
    "decide:after:0",
    "observe_action:after:1",
    "labels.move:before:1",
    "labels.move:after:1",
    "finish_action:before:1",
    "finish_action:after:1",
    "routing.write:before:1",
    "routing.write:after:1",
]


@pytest.fixture
def emulator() -> Iterator[tuple[LiveEmulator, EmulatorSettings]]:
    labels = {3: ["production"], 4: ["canary"]}
    with emulator_with_prompt("support-agent", labels, versions=4) as running:
        yield running


def _child(state: Path, live: LiveEmulator, settings: EmulatorSettings, *args: str) -> int:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            CHILD,
            str(state),
            live.base_url,
            settings.public_key,
            settings.secret_key,
            *args,
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
    return done.returncode


def _labels(live: LiveEmulator) -> dict[str, int]:
    with live.client() as http:
        return {
            label: http.get("/api/public/v2/prompts/support-agent", params={"label": label}).json()[
                "version"
            ]
            for label in ("production", "canary")
        }


def _check(
    state_path: Path,
    live: LiveEmulator,
    *,
    phase: Phase,
    decisions: list[str],
    moves: list[tuple[str, int | None, int]],
    labels: dict[str, int],
) -> None:
    state = ControllerState(state_path)
    try:
        release = state.release("support")
        assert release is not None and release.phase is phase
        assert [record.decision for record in state.decisions("support")] == decisions
        assert [
            (move.label, move.from_version, move.to_version)
            for move in state.label_moves("support")
        ] == moves
        assert all(action.status is ActionStatus.DONE for action in state.actions("support"))
        table = SqliteRoutingStore(state_path).read("support")
        assert table is not None and table.canary_weight == release.canary_weight == 0.0
    finally:
        state.close()
    assert _labels(live) == labels


@pytest.mark.parametrize("point", ROLLBACK_POINTS)
def test_killed_during_a_rollback(
    tmp_path: Path, emulator: tuple[LiveEmulator, EmulatorSettings], point: str
) -> None:
    live, settings = emulator
    state = tmp_path / "state.db"
    assert _child(state, live, settings, "bad", point) == -signal.SIGKILL
    assert _child(state, live, settings, "bad") == 0
    _check(
        state,
        live,
        phase=Phase.ROLLED_BACK,
        decisions=["start", "rollback"],
        moves=[("canary", 4, 3)],
        labels={"production": 3, "canary": 3},
    )


@pytest.mark.parametrize("point", PROMOTION_POINTS)
def test_killed_during_a_promotion(
    tmp_path: Path, emulator: tuple[LiveEmulator, EmulatorSettings], point: str
) -> None:
    live, settings = emulator
    state = tmp_path / "state.db"
    assert _child(state, live, settings, "good", point) == -signal.SIGKILL
    assert _child(state, live, settings, "good") == 0
    _check(
        state,
        live,
        phase=Phase.PROMOTED,
        decisions=["start", "advance", "advance", "promote"],
        moves=[("production", 3, 4)],
        labels={"production": 4, "canary": 4},
    )
