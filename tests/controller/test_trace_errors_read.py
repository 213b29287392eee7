"""A trace's error is any ERROR observation in it, in full and in sampled reads alike:
``trace_error_rate`` reads it from the sampled traces when the proxies carry the traffic."""

from __future__ import annotations

import random

import httpx
import pytest

from coalmine.shared.conventions import SAMPLED_TAG
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource, SourceSettings
from tests.controller.source_support import (
    T0,
    FakeClock,
    app_span,
    policy,
    send_spans,
    tags_of,
    trace_id,
)
from tests.emulator.emulator_support import LiveEmulator

RELEASES = {"alpha": policy("alpha")}

# trace number -> (level of the app's span, level of the root); every trace is sampled
TRACES: dict[int, tuple[str | None, str | None]] = {
    1: ("ERROR", None),  # the app's span failed, the request still answered
    2: ("WARNING", None),
    3: (None, None),
    4: ("DEFAULT", "ERROR"),  # the root itself
}
ERRORED = {trace_id(1): True, trace_id(2): False, trace_id(3): False, trace_id(4): True}


@pytest.mark.parametrize("sampled", [False, True], ids=["full", "sampled"])
def test_a_trace_errs_when_any_observation_is_at_level_error(
    sampled: bool, emulator: LiveEmulator, http: httpx.Client, clock: FakeClock
) -> None:
    tags = [*tags_of("alpha", "canary"), SAMPLED_TAG]
    for number, (child, root) in TRACES.items():
        start = T0 + 10 * number
        send_spans(
            http,
            [
                app_span(
                    number, number, start, 0.5, tags, is_root=True, generation=False, level=root
                ),
                app_span(number, 1000 + number, start + 0.1, 0.2, tags, level=child),
            ],
        )
    with LangfuseSource(
        emulator.base_url,
        emulator.settings.public_key,
        emulator.settings.secret_key,
        budget=RequestBudget(BudgetSettings(per_minute=1000), clock=clock),
        settings=SourceSettings(sampled=sampled),
        transport=httpx.HTTPTransport(),
        rng=random.Random(7),
    ) as source:
        poll = source.poll(RELEASES, None, T0 + 120)
    assert poll.ok, poll.error
    assert {trace.trace_id: trace.error for trace in poll.traces} == ERRORED
