"""Fixtures: upstreams on real loopback ports, and a list that stops every proxy started."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.proxy.proxy_support import RunningProxy, Upstream, UpstreamServed, serving


def _upstream(name: str) -> Iterator[UpstreamServed]:
    upstream = Upstream(name)
    with serving(upstream) as served:
        yield upstream, served
        upstream.unblock.set()


@pytest.fixture
def stable() -> Iterator[UpstreamServed]:
    yield from _upstream("stable")


@pytest.fixture
def canary() -> Iterator[UpstreamServed]:
    yield from _upstream("canary")


@pytest.fixture
def staging() -> Iterator[UpstreamServed]:
    yield from _upstream("staging")


@pytest.fixture
def running() -> Iterator[list[RunningProxy]]:
    started: list[RunningProxy] = []
    yield started
    for proxy in started:
        proxy.served.stop()
