"""The app-side helper and the score sample: a request the proxy marks sampled gets the
sample's tag on every observation the app records, beside the release and arm tags."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langfuse import Langfuse
from opentelemetry.sdk.trace import TracerProvider

from coalmine.app import context_from_headers
from coalmine.shared.conventions import SAMPLED_HEADER, SAMPLED_TAG, trace_tags
from policies.domain import Arm
from tests.app.test_app_helper import TRACE, Outbox, call, observations, proxied, sample_app
from tests.emulator.emulator_support import LiveEmulator, langfuse_client


@pytest.mark.parametrize(
    ("value", "sampled"),
    [("1", True), ("true", True), ("0", False), ("", False), ("sampled", False), (None, False)],
)
def test_the_sampled_header_adds_the_samples_tag(value: str | None, sampled: bool) -> None:
    headers = proxied() if value is None else proxied(**{SAMPLED_HEADER: value})
    ctx = context_from_headers(headers)
    assert ctx.sampled is sampled
    assert ctx.tags == trace_tags("support-agent", Arm.CANARY, sampled=sampled)
    assert (SAMPLED_TAG in ctx.tags) is sampled


def test_a_sampled_header_alone_tags_nothing() -> None:
    assert context_from_headers({SAMPLED_HEADER: "1"}).tags == []


@pytest.fixture
def langfuse(emulator: LiveEmulator) -> Iterator[Langfuse]:
    with langfuse_client(emulator, tracer_provider=TracerProvider()) as client:
        yield client


def test_every_observation_of_a_sampled_request_carries_the_tag(
    langfuse: Langfuse, emulator: LiveEmulator
) -> None:
    app = sample_app(langfuse, Outbox(), public_key=emulator.settings.public_key, name="handle")
    response = call(app, "/chat", proxied(**{SAMPLED_HEADER: "1"}))
    tags = ["coalmine:release:support-agent", "coalmine:arm:canary", SAMPLED_TAG]
    assert response.json()["tags"] == tags
    rows = {row.name: row for row in observations(langfuse, trace_id=TRACE)}
    assert set(rows) == {"handle", "send_email", "llm"}
    for row in rows.values():
        assert row.tags == tags
