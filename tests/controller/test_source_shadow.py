"""The Langfuse source reads what a shadow rung pairs: the copies' traces (arm shadow)
with the primary each mirrors (``shadow_of``, from the spans' metadata), and the scores
of the rung's metric for copies and primaries alike, with every score read or sampled
reads by trace id."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from coalmine.shared.conventions import SAMPLED_TAG
from controller.samples import Poll, TraceSample
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource, SourceSettings, _metadata_shadow_of
from policies.domain import Arm
from policies.model import Policy
from tests.controller.source_support import (
    T0,
    FakeClock,
    app_span,
    policy,
    post_score,
    root,
    send_roots,
    send_spans,
    tags_of,
    trace_id,
)
from tests.emulator.emulator_support import LiveEmulator

GATE_SCORE = "faithfulness"  # read by the shadow rung only, by no analysis metric
TIMEOUT = 300.0


def gated(name: str, **analysis: Any) -> Policy:
    """A policy whose shadow is a rung comparing ``GATE_SCORE``."""
    base = policy(name, scores=["helpfulness"]).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    base["analysis"].update(analysis)
    base["shadow"] = {
        "upstream": "http://127.0.0.1:9002",
        "percent": 50,
        "gate": {"metric": {"score": GATE_SCORE}},
    }
    return Policy.model_validate(base)


class Recorder(httpx.BaseTransport):
    """Passes requests on and notes their URLs."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.urls: list[httpx.URL] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def queries(self, endpoint: str) -> list[dict[str, list[str]]]:
        return [parse_qs(urlsplit(str(url)).query) for url in self.urls if endpoint in url.path]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make(emulator: LiveEmulator, recorder: Recorder, *, sampled: bool = False) -> LangfuseSource:
    return LangfuseSource(
        emulator.base_url,
        emulator.settings.public_key,
        emulator.settings.secret_key,
        budget=RequestBudget(BudgetSettings(per_minute=1000), clock=FakeClock()),
        settings=SourceSettings(sampled=sampled),
        transport=recorder,
        rng=random.Random(7),
    )


@pytest.fixture
def source(emulator: LiveEmulator, recorder: Recorder) -> Iterator[LangfuseSource]:
    with make(emulator, recorder) as made:
        yield made


def with_metadata(span: Span, key: str, value: str) -> Span:
    span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    return span


def send_pair(
    http: httpx.Client,
    primary: int,
    copy: int,
    start: float,
    *,
    release: str = "alpha",
    sampled: bool = False,
) -> None:
    """A mirrored request as the proxy and the app helper export it: each side's root
    (the copy's names its primary) and an app span, the copy's propagating
    ``coalmine_shadow_of`` as trace metadata."""
    extra = [SAMPLED_TAG] if sampled else []
    primary_root = replace(root(release, Arm.BASELINE, primary, start), sampled=sampled)
    copy_root = replace(
        root(release, Arm.SHADOW, copy, start + 0.01),
        sampled=sampled,
        shadow_of=trace_id(primary),
    )
    send_roots(http, [primary_root, copy_root])
    copy_span = app_span(copy, copy * 100, start + 0.05, 0.1, tags_of(release, "shadow") + extra)
    send_spans(
        http,
        [
            app_span(
                primary, primary * 100, start + 0.05, 0.1, tags_of(release, "baseline") + extra
            ),
            with_metadata(
                copy_span, "langfuse.trace.metadata.coalmine_shadow_of", trace_id(primary)
            ),
        ],
    )


def by_trace(poll: Poll) -> dict[str, TraceSample]:
    return {trace.trace_id: trace for trace in poll.traces}


def score_keys(poll: Poll) -> set[tuple[str, str]]:
    return {(score.trace_id, score.name) for score in poll.scores}


def test_a_copy_is_read_with_its_primary_and_both_scores(
    http: httpx.Client, source: LangfuseSource, recorder: Recorder
) -> None:
    send_pair(http, 1, 2, T0 + 10)
    for trace in (1, 2):
        post_score(http, GATE_SCORE, 0.5 + 0.1 * trace, at=T0 + 40, trace=trace)
    post_score(http, "helpfulness", 0.9, at=T0 + 40, trace=1)

    poll = source.poll({"alpha": gated("alpha")}, None, T0 + 100)

    assert poll.ok
    traces = by_trace(poll)
    primary, copy = traces[trace_id(1)], traces[trace_id(2)]
    assert (primary.arm, primary.shadow_of) == (Arm.BASELINE, None)
    assert (copy.arm, copy.shadow_of, copy.ts) == (Arm.SHADOW, trace_id(1), T0 + 10.01)
    assert score_keys(poll) == {
        (trace_id(1), GATE_SCORE),
        (trace_id(2), GATE_SCORE),
        (trace_id(1), "helpfulness"),
    }
    [observed] = recorder.queries("/v2/observations")
    assert observed["fields"] == ["core,basic,usage,trace_context,prompt,metadata"]
    [scored] = recorder.queries("/v3/scores")
    assert scored["name"] == [f"{GATE_SCORE},helpfulness"]


def test_without_a_shadow_rung_no_metadata_is_asked_for(
    http: httpx.Client, source: LangfuseSource, recorder: Recorder
) -> None:
    send_pair(http, 1, 2, T0 + 10)
    poll = source.poll({"alpha": policy("alpha", scores=["helpfulness"])}, None, T0 + 100)
    assert by_trace(poll)[trace_id(2)].arm is Arm.SHADOW
    assert by_trace(poll)[trace_id(2)].shadow_of is None
    [observed] = recorder.queries("/v2/observations")
    assert observed["fields"] == ["core,basic,usage,trace_context,prompt"]
    [scored] = recorder.queries("/v3/scores")
    assert scored["name"] == ["helpfulness"]


def test_the_roots_metadata_comes_first(http: httpx.Client, source: LangfuseSource) -> None:
    tags = tags_of("alpha", "shadow")
    copy_root = app_span(5, 5, T0 + 10, 0.3, tags, is_root=True, generation=False)
    with_metadata(copy_root, "langfuse.observation.metadata.coalmine_shadow_of", trace_id(1))
    child = app_span(5, 501, T0 + 10.1, 0.1, tags)
    with_metadata(child, "langfuse.trace.metadata.coalmine_shadow_of", trace_id(9))
    alone = app_span(6, 6, T0 + 20, 0.3, tags, is_root=True, generation=False)
    with_metadata(alone, "langfuse.trace.metadata.coalmine_shadow_of", trace_id(3))
    send_spans(http, [copy_root, child, alone])

    traces = by_trace(source.poll({"alpha": gated("alpha")}, None, T0 + 100))

    assert traces[trace_id(5)].shadow_of == trace_id(1)
    assert traces[trace_id(6)].shadow_of == trace_id(3)


def test_sampled_reads_read_the_copies_scores_like_the_primaries(
    http: httpx.Client, emulator: LiveEmulator
) -> None:
    recorder = Recorder()
    releases = {"alpha": gated("alpha", scoreTimeout=f"{TIMEOUT:g}s")}
    send_pair(http, 1, 2, T0 + 10, sampled=True)
    send_pair(http, 3, 4, T0 + 20, sampled=False)  # outside the score sample
    for trace in (1, 2, 3, 4):
        post_score(http, GATE_SCORE, 0.7, at=T0 + 30, trace=trace)
    with make(emulator, recorder, sampled=True) as sampled:
        first = sampled.poll(releases, None, T0 + 40)
        assert {t.trace_id: t.shadow_of for t in first.traces} == {
            trace_id(1): None,
            trace_id(2): trace_id(1),
        }
        assert first.scores == ()  # the first read is due at a minute
        second = sampled.poll(releases, first.cursors, T0 + 80)
    assert score_keys(second) == {(trace_id(1), GATE_SCORE), (trace_id(2), GATE_SCORE)}
    [read] = recorder.queries("/v3/scores")
    assert sorted(read["traceId"][0].split(",")) == [trace_id(1), trace_id(2)]
    assert read["name"] == [f"{GATE_SCORE},helpfulness"]


METADATA: list[tuple[object, str | None]] = [
    ({"coalmine_shadow_of": "ab" * 16}, "ab" * 16),
    ({"coalmine_shadow_of": '"' + "ab" * 16 + '"'}, "ab" * 16),  # JSON-encoded by the SDK
    ({"coalmine.shadow_of": "cd" * 16}, "cd" * 16),
    ({"coalmine_shadow_of": "ab" * 16, "coalmine.shadow_of": "cd" * 16}, "ab" * 16),
    ({"coalmine_shadow_of": ""}, None),
    ({"coalmine_shadow_of": "x" * 65}, None),
    ({"coalmine_shadow_of": 12}, None),
    ({"coalmine_shadow_of": '"unterminated'}, None),
    ({"other": "ab" * 16}, None),
    ("coalmine_shadow_of", None),
    (None, None),
]


@pytest.mark.parametrize(("metadata", "expected"), METADATA)
def test_the_primary_is_read_from_metadata(metadata: object, expected: str | None) -> None:
    assert _metadata_shadow_of(metadata) == expected
