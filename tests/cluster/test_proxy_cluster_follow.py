"""A proxy in cluster mode that starts routing a release while it runs also watches
that release's routing ConfigMap: the controller's table reaches it as it does for the
releases it started with."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from coalmine.shared.routing_tables.configmap import ConfigMapRoutingStore
from coalmine.shared.routing_tables.table import initial_table
from policies import Policy
from proxy.routes import PolicyFeed
from proxy.server import build_app
from proxy.settings import ProxySettings
from tests.cluster.cluster_support import NAMESPACE, wait_until, write_kubeconfig
from tests.proxy.proxy_support import RunningProxy, Upstream, make_policy, serving, start_server

pytestmark = pytest.mark.slow

PREFIX = "shop-app"


@pytest.fixture
def upstreams() -> Iterator[tuple[str, str]]:
    with serving(Upstream("stable")) as stable, serving(Upstream("canary")) as canary:
        yield stable.base_url, canary.base_url


def test_a_release_added_while_running_follows_its_routing_configmap(
    kube: Any, api: Any, tmp_path: Path, upstreams: tuple[str, str]
) -> None:
    stable, canary = upstreams
    support = make_policy(stable=stable, canary=canary)
    billing = make_policy(
        stable=stable, canary=canary, name="billing", routing="  pathPrefix: /billing"
    )
    current: list[Mapping[str, Policy]] = [{"support": support}]
    settings = ProxySettings(
        spans=False,
        metrics_listen=None,
        cluster=True,
        kubeconfig=write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.token, NAMESPACE),
        namespace=NAMESPACE,
        configmap_prefix=PREFIX,
        policy_reload_interval=0.05,
    )
    app = build_app(settings, [support], policy_feed=PolicyFeed(lambda: current[0]))
    proxy = RunningProxy(app, start_server(app, lifespan="on"))
    try:
        current[0] = {"support": support, "billing": billing}
        wait_until(lambda: "billing" in app.releases.by_name, what="billing to be routed")
        writer = ConfigMapRoutingStore(api, NAMESPACE, PREFIX, ["billing"])
        writer.write(initial_table(billing, 100.0), None)
        wait_until(
            lambda: proxy.metric("coalmine_proxy_canary_weight_ratio", release="billing") == 1.0,
            what="the added release's table to be applied",
        )
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            assert client.post("/billing/x", json={}).json()["upstream"] == "canary"
            assert client.post("/other", json={}).json()["upstream"] == "stable"
    finally:
        proxy.served.stop()
