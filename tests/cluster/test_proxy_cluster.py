"""Proxies in cluster mode, built as ``coalmine proxy`` builds them from its settings:
several "pods" each watch the routing ConfigMap the controller writes, and each moves
its users to the canary when the weight changes, with no request lost meanwhile."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coalmine.shared.routing_tables.configmap import ConfigMapRoutingStore
from coalmine.shared.routing_tables.table import initial_table
from policies import Policy
from tests.cluster.cluster_support import NAMESPACE, wait_until, write_kubeconfig
from tests.proxy.proxy_support import RunningProxy, Upstream, make_policy, serving, start_proxy

PREFIX = "shop-app"


@pytest.fixture
def running() -> Iterator[list[RunningProxy]]:
    proxies: list[RunningProxy] = []
    yield proxies
    for proxy in proxies:
        proxy.served.stop()


@pytest.fixture
def policy() -> Iterator[Policy]:
    """A release whose stable and canary upstreams answer with their own names."""
    with serving(Upstream("stable")) as stable, serving(Upstream("canary")) as canary:
        yield make_policy(stable=stable.base_url, canary=canary.base_url)


@pytest.fixture
def start_pod(
    kube: Any, tmp_path: Path, running: list[RunningProxy]
) -> Callable[[Policy], RunningProxy]:
    """A proxy as ``coalmine proxy`` builds it in a pod: cluster mode, a kubeconfig."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.token, NAMESPACE)

    def start(policy: Policy) -> RunningProxy:
        return start_proxy(
            [policy],
            running,
            cluster=True,
            kubeconfig=kubeconfig,
            namespace=NAMESPACE,
            configmap_prefix=PREFIX,
        )

    return start


def metric(pod: RunningProxy, name: str) -> float:
    return pod.metric(name, release="support")


def arms(proxy: RunningProxy, users: range) -> dict[str, int]:
    counts: dict[str, int] = {}
    with httpx.Client(base_url=proxy.url, timeout=10) as http:
        for user in users:
            answer = http.post("/v1/chat", headers={"x-user-id": f"user-{user}"}, json={})
            assert answer.status_code == 200, answer.text
            upstream = answer.json()["upstream"]
            counts[upstream] = counts.get(upstream, 0) + 1
    return counts


def test_every_proxy_follows_the_routing_configmap(
    api: Any, policy: Policy, start_pod: Callable[[Policy], RunningProxy]
) -> None:
    pods = [start_pod(policy) for _ in range(3)]
    for pod in pods:
        assert arms(pod, range(40)) == {"stable": 40}, "no table yet: weight 0"

    writer = ConfigMapRoutingStore(api, NAMESPACE, PREFIX, ["support"])
    first = writer.write(initial_table(policy, 100.0), None)
    for pod in pods:
        wait_until(
            lambda pod=pod: metric(pod, "coalmine_proxy_canary_weight_ratio") == 1.0,
            what="the proxy to apply weight 100",
        )
        assert arms(pod, range(40)) == {"canary": 40}

    writer.write(first.model_copy(update={"canary_weight": 0.0}), first.version)
    for pod in pods:
        wait_until(
            lambda pod=pod: metric(pod, "coalmine_proxy_routing_table_version") == 2.0,
            what="the proxy to apply version 2",
        )
        assert arms(pod, range(40)) == {"stable": 40}


def test_a_routing_configmap_naming_another_upstream_is_refused(
    api: Any, policy: Policy, start_pod: Callable[[Policy], RunningProxy]
) -> None:
    pod = start_pod(policy)
    hijacked = initial_table(policy, 100.0)
    hijacked = hijacked.model_copy(
        update={"canary": hijacked.canary.model_copy(update={"upstream": "http://evil"})}
    )
    ConfigMapRoutingStore(api, NAMESPACE, PREFIX, ["support"]).write(hijacked, None)
    wait_until(
        lambda: metric(pod, "coalmine_proxy_routing_table_errors_total") >= 1,
        what="the refusal to be counted",
    )
    assert arms(pod, range(20)) == {"stable": 20}


def test_a_proxy_started_after_the_table_was_written_reports_what_it_applies(
    api: Any, policy: Policy, start_pod: Callable[[Policy], RunningProxy]
) -> None:
    ConfigMapRoutingStore(api, NAMESPACE, PREFIX, ["support"]).write(
        initial_table(policy, 100.0), None
    )
    pod = start_pod(policy)
    assert arms(pod, range(20)) == {"canary": 20}
    wait_until(
        lambda: metric(pod, "coalmine_proxy_canary_weight_ratio") == 1.0,
        what="the weight metric of the table applied at start",
    )
    assert metric(pod, "coalmine_proxy_routing_table_version") == 1.0
