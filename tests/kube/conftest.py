"""Fixtures: a fake Kubernetes API server on a real loopback port, and the official
client's API objects pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.fakes.kube_api import FakeKubeServer

TOKEN = "fake-token"


@pytest.fixture
def make_kube() -> Iterator[Callable[..., FakeKubeServer]]:
    """Start a server with options of the test's choosing; stopped after the test."""
    started: list[FakeKubeServer] = []

    def make(**options: Any) -> FakeKubeServer:
        options.setdefault("token", TOKEN)
        server = FakeKubeServer(**options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def kube(make_kube: Callable[..., FakeKubeServer]) -> FakeKubeServer:
    return make_kube()


@pytest.fixture
def api(kube: FakeKubeServer) -> Iterator[client.ApiClient]:
    api_client = kube.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def leases(api: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api)


@pytest.fixture
def events_v1(api: client.ApiClient) -> client.EventsV1Api:
    return client.EventsV1Api(api)
