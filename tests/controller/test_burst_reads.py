"""A burst of traces larger than the request budget can read in one poll.

Langfuse pages rows newest first, so a poll the budget cuts holds the newest rows of its
window and the cursor cannot move past the oldest unread one. When even the shortest
window (its lookback plus ten seconds) holds more pages than one poll may read, every
poll used to start that window again from its newest page and be cut at the same place:
reading stopped for good. A cut read now goes on from its next page at the next poll,
until the window is read and the cursor moves past it.

Langfuse is a mock answering from a fixed stream: one root observation and one score
every two seconds, and one every 50 ms for two minutes (2,400 traces, 24 pages of each
endpoint), newest first, paged by a keyset cursor as Langfuse pages them."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from controller.source.langfuse import SourceSettings
from tests.controller.source_support import (
    T0,
    FakeClock,
    controller_on_mock,
    held,
    root_row,
    tags_of,
    trace_score_row,
)

NAME = "alpha"
PAGE = 100
BURST_FROM_MS = 300_000  # after T0
BURST_UNTIL_MS = 420_000
TICKS = 45


def _ms(text: str) -> int:
    return round((datetime.fromisoformat(text).timestamp() - T0) * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(T0 + ms / 1000, UTC).isoformat(timespec="milliseconds")


def _times(since: int, until: int) -> list[int]:
    """Milliseconds after T0 of the traces started in [since, until), newest first."""
    steady = set(range(math.ceil(since / 2000) * 2000, until, 2000))
    burst_from, burst_until = max(since, BURST_FROM_MS), min(until, BURST_UNTIL_MS)
    burst = set(range(math.ceil(burst_from / 50) * 50, burst_until, 50))
    return sorted(steady | burst, reverse=True)


def _row(at: int, observations: bool) -> dict[str, object]:
    arm = "canary" if at % 4000 else "baseline"
    if observations:
        return root_row(str(at), f"trace-{at}", _iso(at), _iso(at + 500), tags_of(NAME, arm))
    return trace_score_row(str(at), f"trace-{at}", _iso(at))


def langfuse(request: httpx.Request) -> httpx.Response:
    query = {key: values[0] for key, values in parse_qs(urlsplit(str(request.url)).query).items()}
    observations = request.url.path.endswith("/observations")
    since = _ms(query["fromStartTime" if observations else "fromTimestamp"])
    until = _ms(query["toStartTime" if observations else "toTimestamp"])
    if "cursor" in query:  # the keyset: rows older than the last one of the page before
        until = min(until, int(base64.urlsafe_b64decode(query["cursor"]).decode()))
    times = _times(since, until)
    page = times[:PAGE]
    more = len(times) > PAGE
    meta = {"cursor": base64.urlsafe_b64encode(str(page[-1]).encode()).decode()} if more else {}
    return httpx.Response(200, json={"data": [_row(at, observations) for at in page], "meta": meta})


def test_a_burst_larger_than_one_poll_can_read_is_read_over_several_polls(
    tmp_path: Path,
) -> None:
    # Steady traffic needs 2 pages a minute (one of each endpoint); a window holding the
    # burst needs 24 of each. A budget of 6 a minute reads it in about 8 polls.
    clock = FakeClock(T0)
    settings = SourceSettings(page_limit=PAGE, lookback=120.0, settle=0.0)
    cut = 0
    stored = 0
    read_to: list[float] = []
    with controller_on_mock(
        tmp_path / "state.db",
        clock,
        langfuse,
        per_minute=6,
        settings=settings,
        policies={NAME: held(NAME)},
    ) as (controller, state, _):
        for _ in range(TICKS):
            report = controller.tick(clock.now)
            cut += report.poll_error is not None
            stored += report.new_traces
            cursors = state.cursors("langfuse")
            read_to.append(-math.inf if cursors is None else cursors.observations_from - T0)
            clock.advance(60.0)
    assert cut >= 3, "the burst should have cut polls short"
    # the cursor went past the burst and its lookback, and caught up with now
    assert read_to[-1] >= (clock.now - T0) - 180.0, read_to
    # every trace up to the end of the burst was read, none twice
    assert (
        len(_times(0, BURST_UNTIL_MS))
        <= stored
        <= len(_times(-120_000, round((clock.now - T0) * 1000)))
    )
