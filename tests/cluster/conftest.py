"""Fixtures of the cluster-mode tests: a fake Kubernetes API server on loopback, driven
by the official client, and a clock that moves only when told."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.cluster_support import Clock
from tests.fakes.kube_api import FakeKubeServer


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer(token="coalmine-test-token") as server:
        yield server


@pytest.fixture
def api(kube: FakeKubeServer) -> Iterator[Any]:
    client = kube.api_client()
    yield client
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()
