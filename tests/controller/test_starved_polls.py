"""Polls the request budget keeps cutting short: the controller keeps what each read
completely, every running release gets its share of what is read, and reading goes on
past the window where polls are cut instead of reading its newest rows again forever.

Langfuse is a mock answering from a fixed stream: per release, one root observation and
one score every ``EVERY`` seconds, newest first, as Langfuse pages them. One poll reads
every running release at once, so a cut poll holds the newest rows of all of them."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from controller.release_store import ControllerState
from controller.source.health import ReadVerdict
from controller.source.langfuse import SourceSettings
from policies.domain import Phase
from tests.controller.source_support import (
    T0,
    FakeClock,
    controller_on_mock,
    held,
    root_row,
    tags_of,
    trace_score_row,
)

RELEASES = ("alpha", "beta", "gamma")
EVERY = 2
PAGE = 100
TICKS = 30


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def _rows(request: httpx.Request) -> list[dict[str, object]]:
    query = {key: values[0] for key, values in parse_qs(urlsplit(str(request.url)).query).items()}
    observations = request.url.path.endswith("/observations")
    since = _seconds(query["fromStartTime" if observations else "fromTimestamp"])
    until = _seconds(query["toStartTime" if observations else "toTimestamp"])
    first = math.ceil(since / EVERY) * EVERY
    times = sorted(range(first, math.ceil(until), EVERY), reverse=True)
    if observations:
        return [
            root_row(
                f"{name}-{at}",
                f"trace-{name}-{at}",
                _iso(at),
                _iso(at + 0.5),
                tags_of(name, "canary" if at % 4 else "baseline"),
            )
            for at in times
            for name in RELEASES
        ]
    return [
        trace_score_row(f"{name}-{at}", f"trace-{name}-{at}", _iso(at))
        for at in times
        for name in RELEASES
    ]


def langfuse(request: httpx.Request) -> httpx.Response:
    rows = _rows(request)
    offset = int(parse_qs(urlsplit(str(request.url)).query).get("cursor", ["0"])[0])
    more = offset + PAGE < len(rows)
    meta = {"cursor": str(offset + PAGE)} if more else {}
    return httpx.Response(200, json={"data": rows[offset : offset + PAGE], "meta": meta})


def newest_read(state: ControllerState, name: str) -> float:
    return max((trace.ts for trace in state.traces(name, 0.0)), default=-math.inf)


@pytest.mark.parametrize("per_minute", [4, 6])
def test_every_release_reads_on_while_polls_are_cut(tmp_path: Path, per_minute: int) -> None:
    # A poll a minute reads 3 pages of observations and 2 of scores to keep up (5 a
    # minute): a budget of 4 cuts every poll after the observations of about 1.5
    # releases' worth of rows; 6 lets every poll complete.
    clock = FakeClock(T0)
    policies = {name: held(name) for name in RELEASES}
    settings = SourceSettings(page_limit=PAGE, lookback=120.0)
    newest: list[dict[str, float]] = []
    read_to: list[float] = []
    cut = 0
    with controller_on_mock(
        tmp_path / "state.db",
        clock,
        langfuse,
        per_minute=per_minute,
        settings=settings,
        policies=policies,
    ) as (controller, state, source):
        for _ in range(TICKS):
            report = controller.tick(clock.now)
            cut += report.poll_error is not None
            newest.append({name: newest_read(state, name) for name in RELEASES})
            cursors = state.cursors("langfuse")
            read_to.append(-math.inf if cursors is None else cursors.observations_from)
            clock.advance(60.0)
        reads = source.health(clock.now).reads
        phases = {name: getattr(state.release(name), "phase", None) for name in RELEASES}
        assert phases == dict.fromkeys(RELEASES, Phase.CANARY)
    if per_minute == 4:
        assert cut >= TICKS // 3
        # what every running release's status, admin JSON and metric say
        assert reads.verdict is ReadVerdict.STARVED, reads.message
    else:
        assert cut == 0
        assert reads.verdict is ReadVerdict.OK, reads.message
        assert read_to[-1] == clock.now - 60.0
    # reading moves on within every six ticks, even while polls are cut
    for earlier, later in zip(read_to[2:], read_to[8:], strict=False):
        assert later > earlier, (earlier - T0, later - T0)
    # every release is read as far as the others: one poll reads them all
    for seen in newest[1:]:
        assert len(set(seen.values())) == 1
        assert seen["alpha"] > T0
    assert newest[-1]["alpha"] > newest[TICKS // 2]["alpha"]
